/** What went wrong with a turn, in terms the UI can act on. */
export type ChatErrorKind =
  | 'capacity' // the swarm is out of capacity ("attention cache is full")
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

export type ServerErrorClass = 'max_length' | 'expired' | 'capacity' | 'other';

/** Matches the phrases the server keeps in its error texts (see the protocol notes). */
export function classifyServerError(traceback: string): ServerErrorClass {
  if (/Maximum length exceeded/i.test(traceback)) return 'max_length';
  if (/Session\b[\s\S]*?\bexpired/i.test(traceback)) return 'expired';
  if (/attention cache is full/i.test(traceback)) return 'capacity';
  return 'other';
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
