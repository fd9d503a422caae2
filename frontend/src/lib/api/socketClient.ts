/**
 * The chat page's streaming client for the WebSocket API (`/api/v2/generate`).
 *
 * One inference session is kept open across turns. The client remembers the text already in the
 * session (everything sent plus everything generated) and sends only the new suffix of the
 * rendered prompt. When the prompt no longer extends that text (an edited or regenerated
 * message, another model) or the socket is gone, it opens a new session and sends everything.
 *
 * With `resumable`, sessions outlive their socket on the server for a while: when the socket drops
 * mid-answer, the client reconnects (with backoff) and reattaches with the session's resume token;
 * the server replays the answer so far and goes on. The resume point is also given to the caller
 * (a `resumable` event), so that a reloaded page can reattach (`TurnRequest.resume`).
 *
 * Plain TypeScript: no Svelte, no DOM globals (the socket factory is injected).
 */
import type { RouteHop, SamplingParams } from '../types/protocol';
import { ChatError, serverError } from './errors';
import { FrameChannel, type SocketFactory } from './frameChannel';
import { StopSequenceFilter } from './stopSequences';

export const INITIAL_MAX_LENGTH = 512;
export const GROWTH_FACTOR = 4;
/** Silent retries when the connection fails within one turn (sessions that are not resumable). */
const MAX_CONNECTION_RETRIES = 1;
/** Reattaches within one turn before the client gives up on the server's session and resends. */
const MAX_REATTACHES = 5;
/** Waits between reconnection attempts of a reattach (ms): about 90 s in all, within the server's window. */
export const RECONNECT_DELAYS = [500, 1000, 2000, 4000, 8000, 15000, 15000, 15000, 15000, 15000];

export type ConnectionStatus = 'idle' | 'connecting' | 'reconnecting' | 'generating';

/** Where a running answer can be taken up again after its socket (or the page) went away. */
export interface ResumePoint {
  /** The session's resume token. */
  token: string;
  /** Characters of the answer shown before the request that the server runs. */
  base: number;
  /** Tokens of the answer counted before that request. */
  baseTokens: number;
  /** That request's number in its session (1 for the first `generate`). */
  generation: number;
}

export interface TurnRequest {
  /** Model key (or alias) for `open_inference_session`. */
  model: string;
  /** Upper bound for session growth (the model's `max_session_length`). */
  maxSessionLength: number;
  /** The whole rendered prompt, ending where the assistant's answer starts. */
  prompt: string;
  stopSequence: string;
  extraStopSequences: string[];
  params: SamplingParams;
  /** Stop the answer after this many new tokens (closes the session); unset: no limit. */
  maxNewTokens?: number;
  /**
   * Go on with an answer already begun (Continue, or a reloaded page): its text and token count
   * so far; with `point`, first try to reattach to the server's session that generates it.
   */
  resume?: { text: string; tokenCount: number; point?: ResumePoint };
  signal?: AbortSignal;
}

export type DoneReason = 'stop' | 'aborted' | 'length';

export type StreamEvent =
  | { type: 'delta'; text: string; tokenCount: number }
  /** The answer's whole text is `text` (a reattach found it different from what was shown). */
  | { type: 'reset'; text: string; tokenCount: number }
  /** The answer can be reattached from `point` (keep it with the answer until it is done). */
  | { type: 'resumable'; point: ResumePoint }
  /** `route` and `contextTokens`: the server's facts about a finished answer (its last frame), when sent. */
  | { type: 'done'; reason: DoneReason; text: string; tokenCount: number; route?: RouteHop[]; contextTokens?: number };

export interface SocketClientOptions {
  url: string;
  createSocket: SocketFactory;
  initialMaxLength?: number;
  /** Open sessions that survive a dropped socket (the server's `resumable` extension). */
  resumable?: boolean;
  /** Ask the server for a request's place in line while it waits for capacity (`queue_updates`). */
  queueUpdates?: boolean;
  /** The place in line (1: next) of the request that waits for capacity; null once it no longer waits. */
  onQueued?: (position: number | null) => void;
  /** Waits between reconnection attempts (ms); default RECONNECT_DELAYS. */
  reconnectDelays?: number[];
  onStatus?: (status: ConnectionStatus) => void;
}

interface Session {
  channel: FrameChannel;
  model: string;
  maxLength: number;
  /** The text the session holds: all inputs and outputs so far. */
  sent: string;
  /** Resumable sessions: the token for `reattach`. */
  resumeToken: string | null;
  /** `generate` requests sent in this session. */
  generations: number;
}

class ConnectionLost extends Error {
  override name = 'ConnectionLost';
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener('abort', done, { once: true });
  });
}

/** The server's facts about the answer (first and last frames): its route, and the session's size at a token count. */
class AnswerFacts {
  #route: RouteHop[] | undefined;
  #context: { tokens: number; at: number } | undefined;

  take(event: { route?: RouteHop[]; contextTokens?: number }, tokenCount: number): void {
    if (event.route) this.#route = event.route;
    if (event.contextTokens !== undefined) this.#context = { tokens: event.contextTokens, at: tokenCount };
  }

  /** For the `done` event: the route, and the session's tokens with the answer's `tokenCount` tokens. */
  done(tokenCount: number): { route?: RouteHop[]; contextTokens?: number } {
    return {
      ...(this.#route ? { route: this.#route } : {}),
      ...(this.#context ? { contextTokens: this.#context.tokens + tokenCount - this.#context.at } : {}),
    };
  }
}

export class ChatSocketClient {
  readonly #options: SocketClientOptions;
  #session: Session | null = null;
  #budget: number;
  #budgetModel = '';
  #queuedAt: number | null = null;

  constructor(options: SocketClientOptions) {
    this.#options = options;
    this.#budget = options.initialMaxLength ?? INITIAL_MAX_LENGTH;
  }

  /** Session budget the next `open_inference_session` will ask for (for tests and display). */
  get budget(): number {
    return this.#budget;
  }

  get hasSession(): boolean {
    return this.#session?.channel.isOpen ?? false;
  }

  /** Closes the socket (the server frees the session); the next turn reopens and resends. */
  close(): void {
    this.#drop();
  }

  /** Streams one answer. Throws ChatError for failures the user must see. */
  async *streamTurn(turn: TurnRequest): AsyncGenerator<StreamEvent, void, void> {
    const filter = new StopSequenceFilter([turn.stopSequence, ...turn.extraStopSequences]);
    let shown = turn.resume?.text ?? '';
    let tokens = turn.resume?.tokenCount ?? 0;
    const startTokens = tokens;
    let point: ResumePoint | null = turn.resume?.point ?? null;
    let reattach = point !== null;
    let reattaches = 0;
    let connectionRetries = 0;
    let finished = false;
    const facts = new AnswerFacts();
    const onAbort = () => this.#drop();
    turn.signal?.addEventListener('abort', onAbort);
    const aborted = (): StreamEvent => {
      finished = true;
      return { type: 'done', reason: 'aborted', text: shown, tokenCount: tokens };
    };

    try {
      for (;;) {
        if (turn.signal?.aborted) return yield aborted();
        let session: Session | null = null;
        if (reattach && point && reattaches++ < MAX_REATTACHES) {
          session = await this.#reattach(turn, point);
          if (turn.signal?.aborted) return yield aborted();
          // The request the server runs began where the answer was `point.base` characters long.
          if (session) session.sent = turn.prompt + shown.slice(0, point.base);
        }
        reattach = false;
        if (!session) {
          const target = turn.prompt + shown;
          let inputs: string;
          try {
            ({ session, inputs } = await this.#prepare(turn, target, connectionRetries > 0 || reattaches > 0));
            session.channel.send({
              type: 'generate',
              ...(inputs ? { inputs } : {}),
              max_new_tokens: 1,
              stop_sequence: turn.stopSequence,
              extra_stop_sequences: turn.extraStopSequences,
              ...turn.params,
            });
          } catch (error) {
            this.#drop();
            if (turn.signal?.aborted) return yield aborted();
            if (error instanceof ChatError) throw error;
            if (connectionRetries++ < MAX_CONNECTION_RETRIES) continue;
            throw new ChatError('connection', 'Could not connect to the server', String(error));
          }
          session.sent = target;
          session.generations++;
          point = session.resumeToken
            ? { token: session.resumeToken, base: shown.length, baseTokens: tokens, generation: session.generations }
            : null;
          if (point) yield { type: 'resumable', point };
        }
        filter.reset();
        const requestStart = session.sent;
        // While the server replays a request after a reattach: its visible text so far (from where the
        // request began); it only shows once it goes beyond what is shown already.
        let replay: string | null = null;
        const take = (text: string): StreamEvent[] => {
          if (replay === null) {
            shown += text;
            return text ? [{ type: 'delta', text, tokenCount: tokens }] : [];
          }
          replay += text;
          if (shown.startsWith(replay)) return [];
          const extra = replay.startsWith(shown) ? replay.slice(shown.length) : null;
          shown = replay;
          replay = null;
          return [extra === null ? { type: 'reset', text: shown, tokenCount: tokens } : { type: 'delta', text: extra, tokenCount: tokens }];
        };
        /** At the end: what was replayed is the answer, also when it is shorter than what was shown. */
        const settle = (): StreamEvent[] => {
          if (replay === null || replay === shown) return [];
          shown = replay;
          replay = null;
          return [{ type: 'reset', text: shown, tokenCount: tokens }];
        };
        this.#status('generating');

        for (;;) {
          const next = await session.channel.next();
          if (next.kind === 'closed') {
            this.#forget(session);
            if (turn.signal?.aborted) return yield aborted();
            if (point && reattaches < MAX_REATTACHES) {
              reattach = true;
              break;
            }
            if (connectionRetries++ < MAX_CONNECTION_RETRIES) break;
            throw new ChatError('connection', 'The connection to the server was lost', next.reason);
          }
          const event = next.event;
          if (event.kind === 'queued') {
            this.#queued(event.position);
            continue;
          }
          this.#queued(null);
          if (event.kind === 'ack') continue;
          if (event.kind === 'error') {
            this.#drop();
            if (event.code !== 'max_length_exceeded') throw serverError(event);
            if (session.maxLength >= turn.maxSessionLength) {
              throw new ChatError(
                'context_too_long',
                'The dialogue is too long for this model.',
                event.traceback,
              );
            }
            this.#budget = Math.min(session.maxLength * GROWTH_FACTOR, turn.maxSessionLength);
            break;
          }

          if (event.replay && point) {
            // After a reattach: the request the server runs comes again from its start.
            filter.reset();
            tokens = point.baseTokens;
            session.sent = requestStart;
            replay = shown.slice(0, point.base);
          }
          tokens += event.tokenCount;
          facts.take(event, tokens);
          session.sent += event.text;
          const visible = filter.push(event.text);
          if (event.stop) {
            yield* take(visible + filter.finish());
            yield* settle();
            // The server leaves the session ending with the regular stop sequence, also when an
            // extra stop sequence ended the text.
            session.sent = turn.prompt + shown + turn.stopSequence;
            finished = true;
            yield { type: 'done', reason: 'stop', text: shown, tokenCount: tokens, ...facts.done(tokens) };
            return;
          }
          yield* take(visible);
          if (turn.maxNewTokens !== undefined && tokens - startTokens >= turn.maxNewTokens) {
            this.#drop();
            yield* settle();
            finished = true;
            yield { type: 'done', reason: 'length', text: shown, tokenCount: tokens, ...facts.done(tokens) };
            return;
          }
        }
        this.#status('reconnecting');
      }
    } finally {
      turn.signal?.removeEventListener('abort', onAbort);
      this.#queued(null);
      // Left mid-answer (consumer stopped iterating, or an error): the session is unusable.
      if (!finished) this.#drop();
      this.#status('idle');
    }
  }

  /**
   * Reconnects (with backoff) and takes the session of `point` over. Null when that is not possible
   * (the session expired, the request never reached it, the server stayed unreachable, or abort).
   */
  async #reattach(turn: TurnRequest, point: ResumePoint): Promise<Session | null> {
    this.#drop();
    const delays = this.#options.reconnectDelays ?? RECONNECT_DELAYS;
    for (let attempt = 0; attempt <= delays.length; attempt++) {
      this.#status('reconnecting');
      if (attempt > 0) await sleep(delays[attempt - 1] ?? 0, turn.signal);
      if (turn.signal?.aborted) return null;
      let channel: FrameChannel;
      try {
        channel = await FrameChannel.connect(this.#options.createSocket, this.#options.url, turn.signal);
      } catch {
        continue;
      }
      channel.send({ type: 'reattach', resume_token: point.token });
      const next = await channel.next();
      if (next.kind === 'closed') continue;
      const session: Session = {
        channel,
        model: turn.model,
        maxLength: this.#budget,
        sent: '',
        resumeToken: point.token,
        generations: point.generation,
      };
      this.#session = session;
      const ack = next.event;
      if (ack.kind === 'ack' && (ack.generations ?? 0) >= point.generation) return session;
      this.#drop(); // expired, or our request never arrived: a fresh session is simpler
      return null;
    }
    return null;
  }

  async #prepare(
    turn: TurnRequest,
    target: string,
    retrying: boolean,
  ): Promise<{ session: Session; inputs: string }> {
    const current = this.#session;
    if (
      current &&
      current.channel.isOpen &&
      current.model === turn.model &&
      target.startsWith(current.sent)
    ) {
      return { session: current, inputs: target.slice(current.sent.length) };
    }
    this.#drop();
    if (this.#budgetModel !== turn.model) {
      this.#budgetModel = turn.model;
      this.#budget = this.#options.initialMaxLength ?? INITIAL_MAX_LENGTH;
    }
    const maxLength = Math.min(this.#budget, turn.maxSessionLength);
    this.#status(retrying ? 'reconnecting' : 'connecting');

    const channel = await FrameChannel.connect(this.#options.createSocket, this.#options.url, turn.signal);
    const session: Session = { channel, model: turn.model, maxLength, sent: '', resumeToken: null, generations: 0 };
    this.#session = session;
    channel.send({
      type: 'open_inference_session',
      model: turn.model,
      max_length: maxLength,
      ...(this.#options.resumable ? { resumable: true } : {}),
      ...(this.#options.queueUpdates ? { queue_updates: true } : {}),
    });
    for (;;) {
      const next = await channel.next();
      if (next.kind === 'closed') throw new ConnectionLost(next.reason);
      this.#queued(next.event.kind === 'queued' ? next.event.position : null);
      if (next.event.kind === 'ack') {
        session.resumeToken = next.event.resumeToken ?? null;
        break;
      }
      if (next.event.kind === 'error') throw serverError(next.event);
    }
    return { session, inputs: target };
  }

  #forget(session: Session): void {
    if (this.#session === session) this.#session = null;
  }

  /** Closes the session; a resumable one is told to stop first (else the server would keep it). */
  #drop(): void {
    const session = this.#session;
    this.#session = null;
    if (session?.resumeToken && session.channel.isOpen) {
      try {
        session.channel.send({ type: 'cancel' });
      } catch {
        // closing anyway
      }
    }
    session?.channel.close();
  }

  #queued(position: number | null): void {
    if (position === this.#queuedAt) return;
    this.#queuedAt = position;
    this.#options.onQueued?.(position);
  }

  #status(status: ConnectionStatus): void {
    this.#options.onStatus?.(status);
  }
}
