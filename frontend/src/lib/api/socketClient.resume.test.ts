import { describe, expect, it } from 'vitest';
import { FakeServer, tokens, type Reply } from './fakeSocket.testutil';
import { ChatSocketClient, type StreamEvent, type TurnRequest } from './socketClient';

const TOKEN = 'tok-123';
/** After a reattach: the latest generation follows again from its start. */
const REPLAY: Reply = { ok: true, outputs: '', stop: false, token_count: 0, replay: true };

function turn(prompt: string, extra: Partial<TurnRequest> = {}): TurnRequest {
  return {
    model: 'm',
    maxSessionLength: 8192,
    prompt,
    stopSequence: '###',
    extraStopSequences: [],
    params: { do_sample: 0 },
    ...extra,
  };
}

async function collect(gen: AsyncGenerator<StreamEvent>): Promise<StreamEvent[]> {
  const events: StreamEvent[] = [];
  for await (const event of gen) events.push(event);
  return events;
}

/** What the page shows: deltas appended, resets replacing. */
function shown(events: StreamEvent[], start = ''): string {
  let text = start;
  for (const e of events) {
    if (e.type === 'delta') text += e.text;
    if (e.type === 'reset') text = e.text;
  }
  return text;
}

function out(outputs: string): Reply {
  return { ok: true, outputs, stop: false, token_count: 1 };
}

function client(server: FakeServer) {
  return new ChatSocketClient({
    url: 'ws://test',
    createSocket: server.factory,
    resumable: true,
    reconnectDelays: [0, 0, 0],
  });
}

describe('ChatSocketClient with resumable sessions', () => {
  it('reattaches after a drop mid-answer, replays what it missed and goes on', async () => {
    const server = new FakeServer((request) => {
      if (request.type === 'open_inference_session') return [{ ok: true, resume_token: TOKEN }];
      if (request.type === 'generate') return [out(' Hel'), 'close'];
      if (request.type === 'reattach') {
        // the server generated 'lo' and ' wor' meanwhile
        return [
          { ok: true, resume_token: TOKEN, generating: true, generations: 1 },
          REPLAY,
          out(' Hel'),
          out('lo'),
          out(' wor'),
          out('ld'),
          { ok: true, outputs: '###', stop: true, token_count: 1 },
        ];
      }
      return [];
    });
    const events = await collect(client(server).streamTurn(turn('P:')));

    expect(server.opens()).toEqual([{ type: 'open_inference_session', model: 'm', max_length: 512, resumable: true }]);
    expect(server.generates()).toHaveLength(1);
    expect(server.requests.filter((r) => r.type === 'reattach')).toEqual([{ type: 'reattach', resume_token: TOKEN }]);
    expect(events[0]).toEqual({ type: 'resumable', point: { token: TOKEN, base: 0, baseTokens: 0, generation: 1 } });
    expect(shown(events)).toBe(' Hello world');
    expect(events.some((e) => e.type === 'reset')).toBe(false);
    expect(events.at(-1)).toEqual({ type: 'done', reason: 'stop', text: ' Hello world', tokenCount: 5 });
  });

  it('keeps reconnecting while the server is unreachable', async () => {
    const server = new FakeServer((request) => {
      if (request.type === 'open_inference_session') return [{ ok: true, resume_token: TOKEN }];
      if (request.type === 'generate') return [out('a'), 'close'];
      return [{ ok: true, generating: false, generations: 1 }, REPLAY, out('a'), out('b'), { ok: true, outputs: '###', stop: true, token_count: 1 }];
    });
    const c = client(server);
    const gen = c.streamTurn(turn('P:'));
    const events: StreamEvent[] = [];
    for await (const event of gen) {
      events.push(event);
      if (event.type === 'delta') server.refuseNext = 2; // offline for two attempts
    }
    expect(server.sockets).toHaveLength(4);
    expect(events.at(-1)).toMatchObject({ type: 'done', reason: 'stop', text: 'ab' });
  });

  it('falls back to a new session and resends the text so far when the session expired', async () => {
    const server: FakeServer = new FakeServer((request): Reply[] => {
      if (request.type === 'open_inference_session') return [{ ok: true, resume_token: TOKEN }];
      if (request.type === 'reattach') return [{ ok: false, code: 'session_expired', traceback: 'Session expired' }];
      return server.generates().length === 1 ? [out(' x'), 'close'] : tokens('y', '###');
    });
    const events = await collect(client(server).streamTurn(turn('P:')));
    expect(shown(events)).toBe(' xy');
    expect(server.generates().map((g) => g.inputs)).toEqual(['P:', 'P: x']);
    expect(events.filter((e) => e.type === 'resumable').map((e) => e.type === 'resumable' && e.point.base)).toEqual([0, 2]);
  });

  it('does not reattach to a session that never got the request', async () => {
    const server: FakeServer = new FakeServer((request): Reply[] => {
      if (request.type === 'open_inference_session') return [{ ok: true, resume_token: TOKEN }];
      if (request.type === 'reattach') return [{ ok: true, generating: false, generations: 0 }];
      return server.generates().length === 1 ? ['close'] : tokens('ok', '###');
    });
    const events = await collect(client(server).streamTurn(turn('P:')));
    expect(shown(events)).toBe('ok');
    expect(server.sockets[1]!.sent.map((r) => r.type)).toEqual(['reattach', 'cancel']);
  });

  it('takes up an answer after a reload: the replay replaces the saved text', async () => {
    const server = new FakeServer((request) =>
      request.type === 'reattach'
        ? [
            { ok: true, generating: true, generations: 2 },
            REPLAY,
            out('Hel'),
            out('lo'),
            { ok: true, outputs: '!###', stop: true, token_count: 2 },
          ]
        : [],
    );
    const point = { token: TOKEN, base: 6, baseTokens: 3, generation: 2 };
    const events = await collect(
      client(server).streamTurn(turn('P:', { resume: { text: 'Begin Hel', tokenCount: 4, point } })),
    );
    expect(server.opens()).toHaveLength(0);
    expect(shown(events, 'Begin Hel')).toBe('Begin Hello!');
    expect(events.at(-1)).toEqual({ type: 'done', reason: 'stop', text: 'Begin Hello!', tokenCount: 7 });
  });

  it('says so with a reset when the replay does not extend the saved text', async () => {
    const server = new FakeServer((request) =>
      request.type === 'reattach'
        ? [{ ok: true, generations: 1 }, REPLAY, out('Other'), { ok: true, outputs: '###', stop: true, token_count: 1 }]
        : [],
    );
    const point = { token: TOKEN, base: 0, baseTokens: 0, generation: 1 };
    const events = await collect(client(server).streamTurn(turn('P:', { resume: { text: 'Old', tokenCount: 1, point } })));
    expect(events[0]).toEqual({ type: 'reset', text: 'Other', tokenCount: 1 });
    expect(shown(events, 'Old')).toBe('Other');
  });

  it('after a reattach the token limit cuts where it would have without one', async () => {
    const server = new FakeServer((request) => {
      if (request.type === 'open_inference_session') return [{ ok: true, resume_token: TOKEN }];
      if (request.type === 'generate') return [out('a'), out('b'), 'close'];
      // meanwhile the server went on past the page's limit
      return [{ ok: true, generations: 1 }, REPLAY, ...['a', 'b', 'c', 'd', 'e', 'f'].map(out)];
    });
    const events = await collect(client(server).streamTurn(turn('P:', { maxNewTokens: 4 })));
    expect(events.at(-1)).toEqual({ type: 'done', reason: 'length', text: 'abcd', tokenCount: 4 });
    expect(shown(events)).toBe('abcd');
  });

  it('Continue: generates from the prompt plus the answer so far, counting only new tokens', async () => {
    const server = new FakeServer((request) =>
      request.type === 'open_inference_session'
        ? [{ ok: true }]
        : Array.from({ length: 5 }, () => out('t')),
    );
    const events = await collect(
      client(server).streamTurn(turn('P:', { resume: { text: 'abc', tokenCount: 3 }, maxNewTokens: 2 })),
    );
    expect(server.generates()[0]!.inputs).toBe('P:abc');
    expect(events.at(-1)).toEqual({ type: 'done', reason: 'length', text: 'abctt', tokenCount: 5 });
  });

  it('stop tells the server to cancel before closing', async () => {
    const server = new FakeServer((request) =>
      request.type === 'open_inference_session'
        ? [{ ok: true, resume_token: TOKEN }]
        : Array.from({ length: 20 }, () => out('z')),
    );
    const controller = new AbortController();
    const events: StreamEvent[] = [];
    for await (const event of client(server).streamTurn(turn('P:', { signal: controller.signal }))) {
      events.push(event);
      if (events.length === 3) controller.abort();
    }
    expect(events.at(-1)).toMatchObject({ type: 'done', reason: 'aborted' });
    expect(server.sockets[0]!.sent.map((r) => r.type)).toEqual(['open_inference_session', 'generate', 'cancel']);
    expect(server.sockets).toHaveLength(1);
  });
});
