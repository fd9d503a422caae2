import { describe, expect, test } from 'vitest';
import { parseRoute, parseServerFrame } from '../types/protocol';
import { fetchSwarm, parseSwarmResponse, shortPeerId } from './swarmApi';
import { blockRange, describeRoute, missingBlocks, outOfCapacity, serverRows } from './swarmLayout';

const server = (peer: string, start: number, end: number, extra: Record<string, unknown> = {}) => ({
  peer_id: peer,
  short_id: shortPeerId(peer),
  start,
  end,
  spans: [[start, end]],
  state: 'online',
  throughput: 100,
  cache_tokens_left: 4096,
  version: '2.2.0',
  ...extra,
});

const body = (servers: unknown[], blocks = 30) => ({ ok: true, model: 'm', blocks_total: blocks, blocks_served: blocks, swarm_ok: true, servers });

describe('the swarm answer', () => {
  test('is validated: malformed servers are left out, missing fields filled in', () => {
    const parsed = parseSwarmResponse(body([server('12D3KooWaaaaaaAAAAAA', 0, 16), { peer_id: 5 }, { peer_id: 'x', start: 3, end: 3 }, { peer_id: '12D3KooWbbbbbbBBBBBB', start: 16, end: 30, state: 'weird' }]));
    expect(parsed.servers.map((s) => [s.short_id, s.start, s.end, s.state])).toEqual([
      ['...AAAAAA', 0, 16, 'online'],
      ['...BBBBBB', 16, 30, 'offline'],
    ]);
    expect(parsed.servers[1]?.spans).toEqual([[16, 30]]);
    expect(() => parseSwarmResponse({ ok: false, traceback: 'Unknown model' })).toThrow('Unknown model');
  });

  test('fetchSwarm asks for the model and reports the server error line', async () => {
    const urls: string[] = [];
    const ok = async (url: string) => {
      urls.push(url);
      return new Response(JSON.stringify(body([server('12D3KooWaaaaaaAAAAAA', 0, 30)])));
    };
    expect((await fetchSwarm(ok, 'a b')).servers).toHaveLength(1);
    expect(urls).toEqual(['/api/v1/swarm?model=a%20b']);
    const failing = async () => new Response(JSON.stringify({ ok: false, traceback: 'Model m is still loading' }), { status: 503 });
    await expect(fetchSwarm(failing, 'm')).rejects.toThrow('Model m is still loading');
  });
});

describe('the last frame of an answer', () => {
  test('carries the route and the context size; malformed routes are ignored', () => {
    const frame = JSON.stringify({ ok: true, outputs: 'x', stop: true, token_count: 1, route: [{ peer_id: 'p', start: 0, end: 30 }], context_tokens: 42 });
    expect(parseServerFrame(frame)).toEqual({ kind: 'output', text: 'x', stop: true, tokenCount: 1, route: [{ peer_id: 'p', start: 0, end: 30 }], contextTokens: 42 });
    expect(parseRoute([{ peer_id: 'p', start: 0 }])).toBeUndefined();
    expect(parseRoute('nope')).toBeUndefined();
  });
});

describe('the panel picture', () => {
  const swarm = parseSwarmResponse(body([server('12D3KooWaaaaaaAAAAAA', 0, 15), server('12D3KooWbbbbbbBBBBBB', 15, 30), server('12D3KooWccccccCCCCCC', 15, 30)]));

  test('segments in percent of the blocks, the route marked', () => {
    const rows = serverRows(swarm, [{ peer_id: '12D3KooWaaaaaaAAAAAA', start: 0, end: 15 }, { peer_id: '12D3KooWccccccCCCCCC', start: 15, end: 30 }]);
    expect(rows.map((r) => [r.onRoute, r.segments[0]?.left, r.segments[0]?.width])).toEqual([
      [true, 0, 50],
      [false, 50, 50],
      [true, 50, 50],
    ]);
    expect(serverRows(swarm, undefined).every((r) => !r.onRoute)).toBe(true);
  });

  test('capacity: a missing block, or every holder of a block out of cache', () => {
    expect(outOfCapacity(swarm)).toBe(false);
    const gap = parseSwarmResponse(body([server('12D3KooWaaaaaaAAAAAA', 0, 15), server('12D3KooWbbbbbbBBBBBB', 16, 30, { state: 'online' })]));
    expect(missingBlocks(gap)).toEqual([15]);
    expect(outOfCapacity(gap)).toBe(true);
    const full = parseSwarmResponse(body([server('12D3KooWaaaaaaAAAAAA', 0, 30, { cache_tokens_left: 0 })]));
    expect(outOfCapacity(full)).toBe(true);
  });

  test('texts', () => {
    expect(blockRange(0, 30)).toBe('blocks 0–29');
    expect(blockRange(3, 4)).toBe('block 3');
    expect(describeRoute([{ peer_id: '12D3KooWaaaaaaAAAAAA', start: 0, end: 2 }, { peer_id: '12D3KooWbbbbbbBBBBBB', start: 2, end: 4 }], shortPeerId)).toBe(
      '...AAAAAA blocks 0–1 → ...BBBBBB blocks 2–3',
    );
  });
});

describe('the README section shown in the panel', () => {
  test('is cut at the next section, without pictures', async () => {
    const { markdownSection } = await import('./swarmLayout');
    const doc = '# T\n\n## Join the swarm\n\nRun it.\n![x](y.png)\n\n```bash\n## not a heading\n```\n\n## APIs\n\nno';
    expect(markdownSection(doc, 'Join the swarm')).toBe('Run it.\n\n```bash\n## not a heading\n```');
    expect(markdownSection(doc, 'Nope')).toBe('');
    const wrapped = '## J\n\nOne line\nand its rest.\n- item\n  more\n\n```\nkeep\nlines\n```\nAfter.';
    expect(markdownSection(wrapped, 'J')).toBe('One line and its rest.\n- item more\n\n```\nkeep\nlines\n```\nAfter.');
  });
});
