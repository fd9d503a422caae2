import { describe, expect, it } from 'vitest';
import { parseServerFrame } from '../types/protocol';
import { FakeServer, tokens, type Handler } from './fakeSocket.testutil';
import { ChatSocketClient, type StreamEvent } from './socketClient';

const TURN = {
  model: 'm',
  maxSessionLength: 8192,
  prompt: 'p',
  stopSequence: '###',
  extraStopSequences: [],
  params: {},
};
const queued = (position: number) => ({ ok: true, queued: true, position });

async function run(handler: Handler, queueUpdates: boolean) {
  const server = new FakeServer(handler);
  const positions: (number | null)[] = [];
  const client = new ChatSocketClient({
    url: 'ws://test/api/v2/generate',
    createSocket: server.factory,
    queueUpdates,
    onQueued: (position) => positions.push(position),
  });
  const events: StreamEvent[] = [];
  for await (const event of client.streamTurn(TURN)) events.push(event);
  return { server, positions, events };
}

describe('waiting in line for capacity', () => {
  it('parses a queued frame apart from an ack', () => {
    expect(parseServerFrame(JSON.stringify(queued(3)))).toEqual({ kind: 'queued', position: 3 });
    expect(parseServerFrame('{"ok": true}')).toEqual({ kind: 'ack' });
  });

  it('asks for queue updates and reports the place until the session opens and the answer starts', async () => {
    const { server, positions, events } = await run((request) => {
      if (request.type === 'open_inference_session') return [queued(2), queued(1), { ok: true }];
      return [queued(1), ...tokens('Hi', '###')];
    }, true);
    expect(server.opens()[0]).toMatchObject({ queue_updates: true });
    expect(positions).toEqual([2, 1, null, 1, null]);
    expect(events.at(-1)).toMatchObject({ type: 'done', reason: 'stop', text: 'Hi' });
  });

  it('does not ask without the option', async () => {
    const { server, positions } = await run(
      (request) => (request.type === 'open_inference_session' ? [{ ok: true }] : tokens('Hi', '###')),
      false,
    );
    expect(server.opens()[0]).not.toHaveProperty('queue_updates');
    expect(positions).toEqual([]);
  });
});
