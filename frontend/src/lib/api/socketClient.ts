/**
 * The chat page's streaming client for the WebSocket API (`/api/v2/generate`).
 *
 * One inference session is kept open across turns. The client remembers the text already in the
 * session (everything sent plus everything generated) and sends only the new suffix of the
 * rendered prompt. When the prompt no longer extends that text (an edited or regenerated
 * message, another model) or the socket is gone, it opens a new session and sends everything.
 *
 * Plain TypeScript: no Svelte, no DOM globals (the socket factory is injected).
 */
import type { SamplingParams } from '../types/protocol';
import { ChatError, serverError } from './errors';
import { FrameChannel, type SocketFactory } from './frameChannel';
import { StopSequenceFilter } from './stopSequences';

export const INITIAL_MAX_LENGTH = 512;
export const GROWTH_FACTOR = 4;
/** Silent retries when the connection fails within one turn. */
const MAX_CONNECTION_RETRIES = 1;

export type ConnectionStatus = 'idle' | 'connecting' | 'reconnecting' | 'generating';

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
  /** Stop the answer after this many tokens (closes the session); unset: no limit. */
  maxNewTokens?: number;
  signal?: AbortSignal;
}

export type DoneReason = 'stop' | 'aborted' | 'length';

export type StreamEvent =
  | { type: 'delta'; text: string; tokenCount: number }
  | { type: 'done'; reason: DoneReason; text: string; tokenCount: number };

export interface SocketClientOptions {
  url: string;
  createSocket: SocketFactory;
  initialMaxLength?: number;
  onStatus?: (status: ConnectionStatus) => void;
}

interface Session {
  channel: FrameChannel;
  model: string;
  maxLength: number;
  /** The text the session holds: all inputs and outputs so far. */
  sent: string;
}

class ConnectionLost extends Error {
  override name = 'ConnectionLost';
}

export class ChatSocketClient {
  readonly #options: SocketClientOptions;
  #session: Session | null = null;
  #budget: number;
  #budgetModel = '';

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
    let shown = '';
    let tokens = 0;
    let connectionRetries = 0;
    let finished = false;
    const onAbort = () => this.#drop();
    turn.signal?.addEventListener('abort', onAbort);
    const aborted = (): StreamEvent => {
      finished = true;
      return { type: 'done', reason: 'aborted', text: shown, tokenCount: tokens };
    };

    try {
      for (;;) {
        if (turn.signal?.aborted) return yield aborted();
        const target = turn.prompt + shown;
        let session: Session;
        let inputs: string;
        try {
          ({ session, inputs } = await this.#prepare(turn, target, connectionRetries > 0));
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
        filter.reset();
        this.#status('generating');

        for (;;) {
          const next = await session.channel.next();
          if (next.kind === 'closed') {
            this.#forget(session);
            if (turn.signal?.aborted) return yield aborted();
            if (connectionRetries++ < MAX_CONNECTION_RETRIES) break;
            throw new ChatError('connection', 'The connection to the server was lost', next.reason);
          }
          const event = next.event;
          if (event.kind === 'ack') continue;
          if (event.kind === 'error') {
            this.#drop();
            if (event.code !== 'max_length_exceeded') throw serverError(event);
            if (session.maxLength >= turn.maxSessionLength) {
              throw new ChatError(
                'context_too_long',
                'The dialogue is too long for this model. Start a new one.',
                event.traceback,
              );
            }
            this.#budget = Math.min(session.maxLength * GROWTH_FACTOR, turn.maxSessionLength);
            break;
          }

          tokens += event.tokenCount;
          session.sent += event.text;
          const visible = filter.push(event.text);
          if (event.stop) {
            const rest = visible + filter.finish();
            shown += rest;
            // The server leaves the session ending with the regular stop sequence, also when an
            // extra stop sequence ended the text.
            session.sent = turn.prompt + shown + turn.stopSequence;
            if (rest) yield { type: 'delta', text: rest, tokenCount: tokens };
            finished = true;
            yield { type: 'done', reason: 'stop', text: shown, tokenCount: tokens };
            return;
          }
          if (visible) {
            shown += visible;
            yield { type: 'delta', text: visible, tokenCount: tokens };
          }
          if (turn.maxNewTokens !== undefined && tokens >= turn.maxNewTokens) {
            this.#drop();
            finished = true;
            yield { type: 'done', reason: 'length', text: shown, tokenCount: tokens };
            return;
          }
        }
        this.#status('reconnecting');
      }
    } finally {
      turn.signal?.removeEventListener('abort', onAbort);
      // Left mid-answer (consumer stopped iterating, or an error): the session is unusable.
      if (!finished) this.#drop();
      this.#status('idle');
    }
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
    const session: Session = { channel, model: turn.model, maxLength, sent: '' };
    this.#session = session;
    channel.send({ type: 'open_inference_session', model: turn.model, max_length: maxLength });
    for (;;) {
      const next = await channel.next();
      if (next.kind === 'closed') throw new ConnectionLost(next.reason);
      if (next.event.kind === 'ack') break;
      if (next.event.kind === 'error') throw serverError(next.event);
    }
    return { session, inputs: target };
  }

  #forget(session: Session): void {
    if (this.#session === session) this.#session = null;
  }

  #drop(): void {
    const session = this.#session;
    this.#session = null;
    session?.channel.close();
  }

  #status(status: ConnectionStatus): void {
    this.#options.onStatus?.(status);
  }
}
