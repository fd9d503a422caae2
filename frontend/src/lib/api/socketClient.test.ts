import { describe, expect, it } from 'vitest';
import { ChatError } from './errors';
import { FakeServer, tokens, type Handler } from './fakeSocket.testutil';
import { ChatSocketClient, type ConnectionStatus, type StreamEvent, type TurnRequest } from './socketClient';

const ACK = { ok: true };

function turn(prompt: string, extra: Partial<TurnRequest> = {}): TurnRequest {
  return {
    model: 'm',
    maxSessionLength: 8192,
    prompt,
    stopSequence: '###',
    extraStopSequences: ['</s>'],
    params: { do_sample: 1, temperature: 0.6, top_p: 0.9 },
    ...extra,
  };
}

async function collect(gen: AsyncGenerator<StreamEvent>): Promise<StreamEvent[]> {
  const events: StreamEvent[] = [];
  for await (const event of gen) events.push(event);
  return events;
}

function text(events: StreamEvent[]): string {
  return events.flatMap((e) => (e.type === 'delta' ? [e.text] : [])).join('');
}

/** A server that acks opens and answers each generate with the next canned answer. */
function scripted(...answers: (string[] | Record<string, unknown>[])[]): FakeServer {
  let i = 0;
  const handler: Handler = (request) => {
    if (request.type === 'open_inference_session') return [ACK];
    const answer = answers[i++] ?? [];
    return answer.length && typeof answer[0] === 'string' ? tokens(...(answer as string[])) : (answer as never);
  };
  return new FakeServer(handler);
}

function client(server: FakeServer, statuses: ConnectionStatus[] = []) {
  return new ChatSocketClient({
    url: 'ws://test/api/v2/generate',
    createSocket: server.factory,
    onStatus: (s) => statuses.push(s),
  });
}

describe('ChatSocketClient', () => {
  it('opens at 512 tokens and streams deltas until stop', async () => {
    const server = scripted([' Hel', 'lo', '!', '###']);
    const statuses: ConnectionStatus[] = [];
    const events = await collect(client(server, statuses).streamTurn(turn('sys###Human: hi###Assistant:')));

    expect(server.opens()).toEqual([{ type: 'open_inference_session', model: 'm', max_length: 512 }]);
    expect(server.generates()).toEqual([
      {
        type: 'generate',
        inputs: 'sys###Human: hi###Assistant:',
        max_new_tokens: 1,
        stop_sequence: '###',
        extra_stop_sequences: ['</s>'],
        do_sample: 1,
        temperature: 0.6,
        top_p: 0.9,
      },
    ]);
    expect(events.filter((e) => e.type === 'delta').map((e) => e.text)).toEqual([' Hel', 'lo', '!']);
    expect(events.at(-1)).toEqual({ type: 'done', reason: 'stop', text: ' Hello!', tokenCount: 4 });
    expect(statuses).toEqual(['connecting', 'generating', 'idle']);
  });

  it('holds back a stop sequence split across frames', async () => {
    const server = scripted(['A #', '#', '#']);
    const events = await collect(client(server).streamTurn(turn('p')));
    expect(text(events)).toBe('A ');
    expect(events.some((e) => e.type === 'delta' && e.text.includes('#'))).toBe(false);
  });

  it('releases held text that turns out not to be a stop sequence', async () => {
    const server = scripted(['C#', ' is', '###']);
    const events = await collect(client(server).streamTurn(turn('p')));
    expect(text(events)).toBe('C# is');
  });

  it('strips an extra stop sequence', async () => {
    const server = scripted(['Hi', '</', 's>']);
    const events = await collect(client(server).streamTurn(turn('p')));
    expect(text(events)).toBe('Hi');
  });

  it('reuses the session and sends only the new suffix of the prompt', async () => {
    const server = scripted([' A', '###'], [' B', '###']);
    const c = client(server);
    const first = 'sys###Human: one###Assistant:';
    await collect(c.streamTurn(turn(first)));
    const second = `${first} A###Human: two###Assistant:`;
    const events = await collect(c.streamTurn(turn(second)));

    expect(text(events)).toBe(' B');
    expect(server.sockets).toHaveLength(1);
    expect(server.opens()).toHaveLength(1);
    expect(server.generates().map((g) => g.inputs)).toEqual([first, 'Human: two###Assistant:']);
  });

  it('after an extra stop sequence the session is taken to end with the regular stop sequence', async () => {
    const server = scripted([' A', '</s>'], [' B', '###']);
    const c = client(server);
    await collect(c.streamTurn(turn('P:')));
    await collect(c.streamTurn(turn('P: A###Q:')));
    expect(server.generates().map((g) => g.inputs)).toEqual(['P:', 'Q:']);
    expect(server.sockets).toHaveLength(1);
  });

  it('reopens and resends everything when the prompt diverges (edit / regenerate)', async () => {
    const server = scripted([' A', '###'], [' B', '###']);
    const c = client(server);
    await collect(c.streamTurn(turn('P1:')));
    await collect(c.streamTurn(turn('P2:')));
    expect(server.sockets).toHaveLength(2);
    expect(server.sockets[0]!.closedByClient).toBe(true);
    expect(server.generates().map((g) => g.inputs)).toEqual(['P1:', 'P2:']);
  });

  it('grows the session 4x on max_length_exceeded and resends the full prompt', async () => {
    let generates = 0;
    const server = new FakeServer((request) => {
      if (request.type === 'open_inference_session') return [ACK];
      generates++;
      if (generates === 1) return [...tokens(' a', 'b').slice(0, 1), { ok: false, code: 'max_length_exceeded', traceback: 'Maximum length exceeded: the session is full' }];
      return tokens('c', '###');
    });
    const c = client(server);
    const events = await collect(c.streamTurn(turn('P:')));
    expect(server.opens().map((o) => o.max_length)).toEqual([512, 2048]);
    // The partial answer is part of the resent context, so the answer continues seamlessly.
    expect(server.generates().map((g) => g.inputs)).toEqual(['P:', 'P: a']);
    expect(text(events)).toBe(' ac');
    expect(c.budget).toBe(2048);
  });

  it('grows up to max_session_length and then reports the dialogue as too long', async () => {
    const server = new FakeServer((request) =>
      request.type === 'open_inference_session' ? [ACK] : [{ ok: false, code: 'max_length_exceeded', traceback: 'Maximum length exceeded' }],
    );
    const c = client(server);
    const error = await collect(c.streamTurn(turn('P:', { maxSessionLength: 3000 }))).catch((e) => e);
    expect(error).toBeInstanceOf(ChatError);
    expect((error as ChatError).kind).toBe('context_too_long');
    expect(server.opens().map((o) => o.max_length)).toEqual([512, 2048, 3000]);
  });

  it('matches codes, not texts: a phrase without its code is just an error', async () => {
    const server = new FakeServer((request) =>
      request.type === 'open_inference_session'
        ? [ACK]
        : [{ ok: false, code: 'bad_request', traceback: 'Maximum length exceeded in a parameter' }],
    );
    const error = (await collect(client(server).streamTurn(turn('P:'))).catch((e) => e)) as ChatError;
    expect(error.kind).toBe('server');
    expect(server.opens()).toHaveLength(1);
  });

  it('reports cache_full as out of capacity, whatever the text', async () => {
    const server = new FakeServer((request) =>
      request.type === 'open_inference_session'
        ? [ACK]
        : [{ ok: false, code: 'cache_full', traceback: 'The swarm is out of capacity' }],
    );
    const error = await collect(client(server).streamTurn(turn('P:'))).catch((e) => e);
    expect((error as ChatError).kind).toBe('capacity');
  });

  it('reports other server errors with the last traceback line', async () => {
    const server = new FakeServer((request) =>
      request.type === 'open_inference_session'
        ? [{ ok: false, code: 'unknown_model', traceback: 'Unknown model: \'x\'\nTraceback (most recent call last):\n  File "x"\nKeyError: unknown model' }]
        : [],
    );
    const error = (await collect(client(server).streamTurn(turn('P:'))).catch((e) => e)) as ChatError;
    expect(error.kind).toBe('server');
    expect(error.message).toBe('KeyError: unknown model');
  });

  it('retries once, silently, when the connection drops mid-answer', async () => {
    let generates = 0;
    const server = new FakeServer((request) => {
      if (request.type === 'open_inference_session') return [ACK];
      generates++;
      return generates === 1 ? [{ ok: true, outputs: ' x', stop: false, token_count: 1 }, 'close'] : tokens('y', '###');
    });
    const events = await collect(client(server).streamTurn(turn('P:')));
    expect(text(events)).toBe(' xy');
    expect(server.generates().map((g) => g.inputs)).toEqual(['P:', 'P: x']);
  });

  it('retries once when the connection cannot be established', async () => {
    const server = scripted(['ok', '###']);
    server.refuseNext = 1;
    const events = await collect(client(server).streamTurn(turn('P:')));
    expect(text(events)).toBe('ok');
    expect(server.sockets).toHaveLength(2);
  });

  it('gives up after the second connection failure', async () => {
    const server = scripted(['ok', '###']);
    server.refuseNext = 2;
    const error = (await collect(client(server).streamTurn(turn('P:'))).catch((e) => e)) as ChatError;
    expect(error.kind).toBe('connection');
    expect(server.sockets).toHaveLength(2);
  });

  it('abort closes the socket and the next turn reopens and resends the whole context', async () => {
    const server = new FakeServer((request) => {
      if (request.type === 'open_inference_session') return [ACK];
      // An endless answer: many tokens, no stop.
      return Array.from({ length: 50 }, () => ({ ok: true, outputs: 'z', stop: false, token_count: 1 }));
    });
    const c = client(server);
    const controller = new AbortController();
    const events: StreamEvent[] = [];
    for await (const event of c.streamTurn(turn('P:', { signal: controller.signal }))) {
      events.push(event);
      if (events.length === 3) controller.abort();
    }
    expect(events.at(-1)).toMatchObject({ type: 'done', reason: 'aborted', text: 'zzz' });
    expect(server.sockets[0]!.closedByClient).toBe(true);
    expect(c.hasSession).toBe(false);

    server.handler = (request) => (request.type === 'open_inference_session' ? [ACK] : tokens('w', '###'));
    await collect(c.streamTurn(turn('P:zzz###Q:')));
    expect(server.sockets).toHaveLength(2);
    expect(server.generates().at(-1)!.inputs).toBe('P:zzz###Q:');
  });

  it('stops at maxNewTokens by closing the session', async () => {
    const server = new FakeServer((request) =>
      request.type === 'open_inference_session'
        ? [ACK]
        : Array.from({ length: 10 }, () => ({ ok: true, outputs: 't', stop: false, token_count: 1 })),
    );
    const c = client(server);
    const events = await collect(c.streamTurn(turn('P:', { maxNewTokens: 4 })));
    expect(events.at(-1)).toMatchObject({ type: 'done', reason: 'length', text: 'tttt', tokenCount: 4 });
    expect(server.sockets[0]!.closedByClient).toBe(true);
  });

  it('opens a new session with the initial budget for another model', async () => {
    const server = scripted(['a', '###'], ['b', '###']);
    const c = client(server);
    await collect(c.streamTurn(turn('P:')));
    await collect(c.streamTurn(turn('P:a###Q:', { model: 'other' })));
    expect(server.opens().map((o) => o.model)).toEqual(['m', 'other']);
  });
});
