import type { ChatErrorKind } from '../api/errors';
import type { ConnectionStatus } from '../api/socketClient';
import type { ConnectionState } from '../types/chat';

export interface ShownError {
  kind: ChatErrorKind | 'model';
  message: string;
  detail: string;
}

/** Connection state, the last error and the tokens/second figure while generating. */
export class ConnectionStore {
  state = $state<ConnectionState>('idle');
  error = $state<ShownError | null>(null);
  tokensPerSecond = $state<number | null>(null);
  tokenCount = $state(0);
  /** The request's place in line while the server has no capacity for it (1: next); null: not waiting. */
  queuePosition = $state<number | null>(null);

  readonly #now: () => number;
  #firstTokenAt: number | null = null;
  #firstTokenCount = 0;

  constructor(now: () => number = () => performance.now()) {
    this.#now = now;
  }

  get busy(): boolean {
    return this.state === 'connecting' || this.state === 'generating' || this.state === 'reconnecting';
  }

  /** Status reported by the socket client. */
  setStatus(status: ConnectionStatus): void {
    if (status === 'idle' && this.state === 'error') return;
    this.state = status;
  }

  beginAnswer(): void {
    this.error = null;
    this.tokensPerSecond = null;
    this.tokenCount = 0;
    this.#firstTokenAt = null;
  }

  /** Cumulative token count of the answer so far. */
  recordTokens(tokenCount: number): void {
    const now = this.#now();
    if (this.#firstTokenAt === null) {
      this.#firstTokenAt = now;
      this.#firstTokenCount = tokenCount;
    } else {
      const seconds = (now - this.#firstTokenAt) / 1000;
      if (seconds > 0) this.tokensPerSecond = (tokenCount - this.#firstTokenCount) / seconds;
    }
    this.tokenCount = tokenCount;
  }

  fail(error: ShownError): void {
    this.error = error;
    this.state = 'error';
  }

  clearError(): void {
    this.error = null;
    if (this.state === 'error') this.state = 'idle';
  }
}
