/** `GET /api/v1/swarm?model=KEY`: the servers of a model's swarm, validated. */
import type { FetchLike } from '../api/modelsApi';
import type { ServerState, SwarmResponse, SwarmServer } from '../types/protocol';

export const SWARM_PATH = '/api/v1/swarm';
const STATES: readonly ServerState[] = ['online', 'joining', 'offline'];

function num(value: unknown): number | null {
  return typeof value === 'number' && Number.isFinite(value) ? value : null;
}

function parseServer(raw: unknown): SwarmServer | null {
  if (typeof raw !== 'object' || raw === null) return null;
  const s = raw as Record<string, unknown>;
  const start = num(s.start);
  const end = num(s.end);
  if (typeof s.peer_id !== 'string' || start === null || end === null || end <= start) return null;
  const spans = Array.isArray(s.spans)
    ? s.spans.filter(
        (r): r is [number, number] => Array.isArray(r) && r.length === 2 && typeof r[0] === 'number' && typeof r[1] === 'number',
      )
    : [];
  return {
    peer_id: s.peer_id,
    short_id: typeof s.short_id === 'string' ? s.short_id : shortPeerId(s.peer_id),
    start,
    end,
    spans: spans.length > 0 ? spans : [[start, end]],
    state: STATES.includes(s.state as ServerState) ? (s.state as ServerState) : 'offline',
    throughput: num(s.throughput),
    cache_tokens_left: num(s.cache_tokens_left),
    version: typeof s.version === 'string' ? s.version : null,
    public_name: typeof s.public_name === 'string' ? s.public_name : null,
  };
}

/** The last six characters of a peer id, as Petals' health monitor shows them. */
export function shortPeerId(peerId: string): string {
  return peerId.length > 8 ? `...${peerId.slice(-6)}` : peerId;
}

export function parseSwarmResponse(raw: unknown): SwarmResponse {
  if (typeof raw !== 'object' || raw === null) throw new Error('The swarm answer has an unexpected shape');
  const body = raw as Record<string, unknown>;
  if (body.ok !== true || !Array.isArray(body.servers) || typeof body.blocks_total !== 'number') {
    const reason = typeof body.traceback === 'string' ? body.traceback : 'The swarm answer has an unexpected shape';
    throw new Error(reason);
  }
  const servers = body.servers.map(parseServer).filter((s): s is SwarmServer => s !== null);
  return {
    ok: true,
    model: typeof body.model === 'string' ? body.model : '',
    blocks_total: body.blocks_total,
    blocks_served: num(body.blocks_served) ?? 0,
    swarm_ok: body.swarm_ok === true,
    servers,
    ...(typeof body.age_s === 'number' ? { age_s: body.age_s } : {}),
  };
}

export async function fetchSwarm(fetchFn: FetchLike, model: string, signal?: AbortSignal): Promise<SwarmResponse> {
  const url = `${SWARM_PATH}?model=${encodeURIComponent(model)}`;
  const response = await fetchFn(url, { headers: { Accept: 'application/json' }, signal });
  let body: unknown = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: the status says enough
  }
  if (!response.ok) {
    const reason = typeof body === 'object' && body !== null ? (body as { traceback?: unknown }).traceback : null;
    throw new Error(typeof reason === 'string' ? reason : `Could not load the swarm (HTTP ${response.status})`);
  }
  return parseSwarmResponse(body);
}
