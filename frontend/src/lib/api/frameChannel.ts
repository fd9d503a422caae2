import type { ClientRequest, ServerEvent } from '../types/protocol';
import { parseServerFrame, ProtocolError } from '../types/protocol';

/** The subset of the browser's WebSocket that the client uses (so tests can fake it). */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: Event) => void) | null;
  onmessage: ((event: MessageEvent) => void) | null;
  onerror: ((event: Event) => void) | null;
  onclose: ((event: CloseEvent) => void) | null;
}

export type SocketFactory = (url: string) => WebSocketLike;

export const WS_OPEN = 1;

export type ChannelEvent =
  | { kind: 'frame'; event: ServerEvent }
  | { kind: 'closed'; reason: string };

/**
 * One WebSocket connection as an async queue of parsed frames.
 * `next()` resolves with the next frame or with `closed` once the socket is gone.
 */
export class FrameChannel {
  #socket: WebSocketLike;
  #queue: ChannelEvent[] = [];
  #waiters: ((event: ChannelEvent) => void)[] = [];
  #closed = false;

  private constructor(socket: WebSocketLike) {
    this.#socket = socket;
    socket.onmessage = (message) => {
      let event: ServerEvent;
      try {
        event = parseServerFrame(message.data);
      } catch (error) {
        const text = error instanceof ProtocolError ? error.message : 'Malformed frame';
        event = { kind: 'error', code: 'protocol_error', traceback: `Protocol error: ${text}` };
      }
      this.#push({ kind: 'frame', event });
    };
    socket.onclose = (event) => this.#finish(event.reason || `Connection closed (${event.code ?? 'unknown'})`);
    socket.onerror = () => this.#finish('Connection error');
  }

  /** Opens a connection; rejects when it cannot be established or `signal` aborts first. */
  static connect(factory: SocketFactory, url: string, signal?: AbortSignal): Promise<FrameChannel> {
    return new Promise((resolve, reject) => {
      if (signal?.aborted) return reject(new DOMException('Aborted', 'AbortError'));
      let socket: WebSocketLike;
      try {
        socket = factory(url);
      } catch (error) {
        return reject(error instanceof Error ? error : new Error(String(error)));
      }
      const onAbort = () => {
        cleanup();
        socket.close();
        reject(new DOMException('Aborted', 'AbortError'));
      };
      const cleanup = () => signal?.removeEventListener('abort', onAbort);
      signal?.addEventListener('abort', onAbort, { once: true });
      socket.onopen = () => {
        cleanup();
        resolve(new FrameChannel(socket));
      };
      socket.onerror = () => {
        cleanup();
        reject(new Error('Could not connect to the server'));
      };
      socket.onclose = () => {
        cleanup();
        reject(new Error('Could not connect to the server'));
      };
    });
  }

  get isOpen(): boolean {
    return !this.#closed && this.#socket.readyState === WS_OPEN;
  }

  send(request: ClientRequest): void {
    if (!this.isOpen) throw new Error('The connection is closed');
    this.#socket.send(JSON.stringify(request));
  }

  next(): Promise<ChannelEvent> {
    const queued = this.#queue.shift();
    if (queued) return Promise.resolve(queued);
    if (this.#closed) return Promise.resolve({ kind: 'closed', reason: 'Connection closed' });
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  /** Closes the socket; the server then frees the session. Pending `next()` calls resolve. */
  close(reason = 'Closed by the client'): void {
    if (this.#closed) return;
    try {
      this.#socket.close(1000, 'client closed');
    } catch {
      // already closing
    }
    this.#finish(reason);
  }

  #push(event: ChannelEvent): void {
    const waiter = this.#waiters.shift();
    if (waiter) waiter(event);
    else this.#queue.push(event);
  }

  #finish(reason: string): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#socket.onmessage = null;
    this.#socket.onclose = null;
    this.#socket.onerror = null;
    this.#push({ kind: 'closed', reason });
    for (const waiter of this.#waiters.splice(0)) waiter({ kind: 'closed', reason });
  }
}
