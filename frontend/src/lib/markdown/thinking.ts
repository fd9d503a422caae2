/** A reasoning model's `<think>...</think>` at the start of its answer, apart from the answer. */
export interface ThinkingSplit {
  /** The reasoning (null: none). */
  thinking: string | null;
  /** The model is still thinking (no `</think>` yet). */
  open: boolean;
  answer: string;
}

const OPEN = '<think>';
const CLOSE = '</think>';

export function splitThinking(text: string): ThinkingSplit {
  const start = text.search(/\S/);
  if (start < 0 || !text.startsWith(OPEN, start)) return { thinking: null, open: false, answer: text };
  const body = start + OPEN.length;
  const end = text.indexOf(CLOSE, body);
  if (end < 0) return { thinking: text.slice(body).trim(), open: true, answer: '' };
  return { thinking: text.slice(body, end).trim(), open: false, answer: text.slice(end + CLOSE.length) };
}
