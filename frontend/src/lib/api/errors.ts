import type { ErrorCode } from '../types/protocol';

/** What went wrong with a turn, in terms the UI can act on. */
export type ChatErrorKind =
  | 'capacity' // the swarm is out of capacity (code `cache_full`)
  | 'context_too_long' // the dialogue no longer fits the model's max_session_length
  | 'connection' // the connection failed twice in a row
  | 'server'; // any other error from the server

export class ChatError extends Error {
  override name = 'ChatError';
  readonly kind: ChatErrorKind;
  readonly detail: string;

  constructor(kind: ChatErrorKind, message: string, detail = '') {
    super(message);
    this.kind = kind;
    this.detail = detail;
  }
}

/** The error the user sees for a server's error reply (its `code` decides, never its text). */
export function serverError(reply: { code: ErrorCode; traceback: string }): ChatError {
  if (reply.code === 'cache_full') {
    return new ChatError(
      'capacity',
      'The swarm is out of capacity right now. Try again in a minute or pick another model.',
      reply.traceback,
    );
  }
  return new ChatError('server', summarizeTraceback(reply.traceback), reply.traceback);
}

/** The last meaningful line of a server traceback, for display. */
export function summarizeTraceback(traceback: string): string {
  const lines = traceback
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean);
  const last = lines[lines.length - 1] ?? 'Unknown error';
  return last.length > 300 ? `${last.slice(0, 297)}...` : last;
}
