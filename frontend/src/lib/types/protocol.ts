/**
 * The wire format of the backend, defined once.
 *
 * WebSocket `/api/v2/generate`: JSON text frames, one request or response per frame.
 * HTTP `GET /api/v1/models`: the model registry.
 */

// ---- Requests (client -> server) ----

export interface OpenSessionRequest {
  type: 'open_inference_session';
  /** A model key or one of its aliases. */
  model: string;
  /** The session's total token budget: prefix, inputs and generated tokens together. */
  max_length: number;
  /** The session outlives its socket for the server's reattach window (answered with a `resume_token`). */
  resumable?: boolean;
  /** While a request of the session waits in line for capacity, the server sends its place (`QueuedResponse`). */
  queue_updates?: boolean;
}

/** Takes over a resumable session whose socket went away. */
export interface ReattachRequest {
  type: 'reattach';
  resume_token: string;
}

/** Stops the generation and closes a resumable session now. */
export interface CancelRequest {
  type: 'cancel';
}

/** Sampling parameters accepted by `generate` (and the HTTP API). */
export interface SamplingParams {
  do_sample?: 0 | 1 | boolean;
  temperature?: number;
  top_k?: number;
  top_p?: number;
  repetition_penalty?: number;
}

export interface GenerateRequest extends SamplingParams {
  type: 'generate';
  /** New text appended to the session's context; omitted: continue where the session is. */
  inputs?: string;
  max_new_tokens?: number;
  max_length?: number;
  stop_sequence?: string;
  extra_stop_sequences?: string[];
}

export type ClientRequest = OpenSessionRequest | GenerateRequest | ReattachRequest | CancelRequest;

// ---- Responses (server -> client) ----

/** Answer to `open_inference_session`. */
export interface AckResponse {
  ok: true;
  /** Resumable sessions: the token for `reattach`. */
  resume_token?: string;
  /** Answer to `reattach`: whether the session's generation still runs. */
  generating?: boolean;
  /** Answer to `reattach`: how many `generate` requests the session has received. */
  generations?: number;
}

/** A request's place in line (1: next) while it waits for capacity (sessions opened with `queue_updates`). */
export interface QueuedResponse {
  ok: true;
  queued: true;
  position: number;
}

/** One round of generated text (`stop: false`) or the last one (`stop: true`). */
export interface OutputResponse {
  ok: true;
  outputs: string;
  stop: boolean;
  token_count?: number;
  /** After a reattach: an empty frame saying that the latest generation follows again from its start. */
  replay?: boolean;
  /** The last frame: the servers that held the session's blocks (block ranges, end exclusive). */
  route?: RouteHop[];
  /** The last frame: tokens the session holds after this answer (the server's tokenizer). */
  context_tokens?: number;
}

/** One server on a session's route through the swarm: it held blocks `start` to `end - 1`. */
export interface RouteHop {
  peer_id: string;
  start: number;
  end: number;
}

/**
 * The stable `code` of an error reply (the README's table). The page acts on `max_length_exceeded`
 * (grow the session) and `cache_full` (out of capacity); any other code is shown as it is.
 */
export type ErrorCode =
  | 'bad_request'
  | 'max_length_exceeded'
  | 'too_large'
  | 'unauthorized'
  | 'forbidden'
  | 'unknown_model'
  | 'busy'
  | 'not_ready'
  | 'swarm_error'
  | 'cache_full'
  | 'internal_error'
  | 'idle_timeout'
  | 'time_limit'
  | 'too_many_requests'
  | 'shutting_down'
  | 'session_expired'
  | 'protocol_error' // made by the page itself: a frame it could not parse
  | 'unknown'; // a reply without a code (not from this server)

export interface ErrorResponse {
  ok: false;
  traceback: string;
  code?: ErrorCode;
}

export type ServerResponse = AckResponse | QueuedResponse | OutputResponse | ErrorResponse;

/** The same responses as a tagged union that is convenient to switch over. */
export type ServerEvent =
  | { kind: 'ack'; resumeToken?: string; generations?: number }
  | { kind: 'queued'; position: number }
  | {
      kind: 'output';
      text: string;
      stop: boolean;
      tokenCount: number;
      replay?: boolean;
      route?: RouteHop[];
      contextTokens?: number;
    }
  | { kind: 'error'; code: ErrorCode; traceback: string };

export class ProtocolError extends Error {
  override name = 'ProtocolError';
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Parses and validates one text frame from the server. Throws ProtocolError on garbage. */
export function parseServerFrame(data: unknown): ServerEvent {
  if (typeof data !== 'string') throw new ProtocolError('Expected a text frame');
  let value: unknown;
  try {
    value = JSON.parse(data);
  } catch {
    throw new ProtocolError('A frame is not valid JSON');
  }
  if (!isRecord(value) || typeof value.ok !== 'boolean') {
    throw new ProtocolError('A frame has no "ok" field');
  }
  if (!value.ok) {
    const traceback = typeof value.traceback === 'string' ? value.traceback : 'Unknown error';
    const code = typeof value.code === 'string' ? (value.code as ErrorCode) : 'unknown';
    return { kind: 'error', code, traceback };
  }
  if (value.queued === true && typeof value.position === 'number') return { kind: 'queued', position: value.position };
  if (!('outputs' in value)) {
    const ack: ServerEvent = { kind: 'ack' };
    if (typeof value.resume_token === 'string') ack.resumeToken = value.resume_token;
    if (typeof value.generations === 'number') ack.generations = value.generations;
    return ack;
  }
  if (typeof value.outputs !== 'string') throw new ProtocolError('"outputs" is not a string');
  const tokenCount = typeof value.token_count === 'number' ? value.token_count : 0;
  const output: Extract<ServerEvent, { kind: 'output' }> = { kind: 'output', text: value.outputs, stop: value.stop === true, tokenCount };
  if (value.replay === true) output.replay = true;
  const route = parseRoute(value.route);
  if (route) output.route = route;
  if (typeof value.context_tokens === 'number') output.contextTokens = value.context_tokens;
  return output;
}

/** A route as sent in the last frame, or undefined when absent or malformed (an optional extra). */
export function parseRoute(value: unknown): RouteHop[] | undefined {
  if (!Array.isArray(value)) return undefined;
  const hops: RouteHop[] = [];
  for (const hop of value) {
    if (!isRecord(hop) || typeof hop.peer_id !== 'string' || typeof hop.start !== 'number' || typeof hop.end !== 'number') {
      return undefined;
    }
    hops.push({ peer_id: hop.peer_id, start: hop.start, end: hop.end });
  }
  return hops;
}

// ---- HTTP: GET /api/v1/swarm ----

export type ServerState = 'online' | 'joining' | 'offline';

/** One server of a model's swarm, as its DHT announces it. */
export interface SwarmServer {
  peer_id: string;
  short_id: string;
  /** First block held and the block after the last (`spans`: each contiguous range, normally one). */
  start: number;
  end: number;
  spans: [number, number][];
  state: ServerState;
  /** Announced throughput (tokens/s, Petals' estimate). */
  throughput: number | null;
  cache_tokens_left: number | null;
  version: string | null;
  public_name?: string | null;
}

export interface SwarmResponse {
  ok: true;
  model: string;
  blocks_total: number;
  blocks_served: number;
  swarm_ok: boolean;
  servers: SwarmServer[];
  age_s?: number;
}

// ---- HTTP: GET /api/v1/models ----

export interface GenerationParams extends SamplingParams {
  max_new_tokens?: number;
  [other: string]: unknown;
}

export interface ChatSettings {
  max_session_length: number;
  sep_token: string;
  stop_token: string;
  extra_stop_sequences: string[];
  generation_params: GenerationParams;
  use_chat_template: boolean;
  chat_template: string | null;
  system_prompt: string;
  /** Named presets from the registry: generation parameters and optionally a system prompt. */
  presets?: Record<string, GenerationParams & { system_prompt?: string }>;
}

export interface ModelInfo {
  key: string;
  aliases: string[];
  family: string;
  name: string;
  model_card: string;
  license: string;
  public_api: boolean;
  ready: boolean;
  chat: ChatSettings;
}

export interface ModelsResponse {
  default: string;
  models: ModelInfo[];
}
