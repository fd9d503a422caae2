/** A scripted in-memory WebSocket server for unit tests of the socket client. */
import type { ClientRequest } from '../types/protocol';
import type { SocketFactory, WebSocketLike } from './frameChannel';

export type Reply = Record<string, unknown> | 'close';
export type Handler = (request: ClientRequest, socket: FakeSocket, server: FakeServer) => Reply[];

export class FakeSocket implements WebSocketLike {
  readyState = 0;
  sent: ClientRequest[] = [];
  onopen: ((event: Event) => void) | null = null;
  onmessage: ((event: MessageEvent) => void) | null = null;
  onerror: ((event: Event) => void) | null = null;
  onclose: ((event: CloseEvent) => void) | null = null;
  closedByClient = false;
  readonly #server: FakeServer;

  constructor(server: FakeServer, refuse: boolean) {
    this.#server = server;
    setTimeout(() => {
      if (refuse) {
        this.readyState = 3;
        this.onerror?.({} as Event);
        this.onclose?.({ code: 1006, reason: '' } as CloseEvent);
      } else {
        this.readyState = 1;
        this.onopen?.({} as Event);
      }
    }, 0);
  }

  send(data: string): void {
    if (this.readyState !== 1) throw new Error('not open');
    const request = JSON.parse(data) as ClientRequest;
    this.sent.push(request);
    this.#server.requests.push(request);
    const replies = this.#server.handler(request, this, this.#server);
    this.#deliver(replies);
  }

  close(): void {
    if (this.readyState === 3) return;
    this.closedByClient = true;
    this.readyState = 3;
    setTimeout(() => this.onclose?.({ code: 1000, reason: '' } as CloseEvent), 0);
  }

  /** Server side: drop the connection. */
  drop(): void {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.onclose?.({ code: 1006, reason: '' } as CloseEvent);
  }

  #deliver(replies: Reply[]): void {
    let delay = 0;
    for (const reply of replies) {
      delay += 1;
      setTimeout(() => {
        if (this.readyState !== 1) return;
        if (reply === 'close') this.drop();
        else this.onmessage?.({ data: JSON.stringify(reply) } as MessageEvent);
      }, delay);
    }
  }
}

export class FakeServer {
  sockets: FakeSocket[] = [];
  requests: ClientRequest[] = [];
  /** How many of the next connection attempts fail. */
  refuseNext = 0;
  handler: Handler;

  constructor(handler: Handler) {
    this.handler = handler;
  }

  readonly factory: SocketFactory = () => {
    const refuse = this.refuseNext > 0;
    if (refuse) this.refuseNext--;
    const socket = new FakeSocket(this, refuse);
    this.sockets.push(socket);
    return socket;
  };

  opens(): Extract<ClientRequest, { type: 'open_inference_session' }>[] {
    return this.requests.filter((r) => r.type === 'open_inference_session') as never;
  }

  generates(): Extract<ClientRequest, { type: 'generate' }>[] {
    return this.requests.filter((r) => r.type === 'generate') as never;
  }
}

/** Frames for an answer streamed token by token. */
export function tokens(...parts: string[]): Reply[] {
  return parts.map((outputs, i) => ({
    ok: true,
    outputs,
    stop: i === parts.length - 1,
    token_count: 1,
  }));
}
