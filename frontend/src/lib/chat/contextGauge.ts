/**
 * The context gauge: how much of the model's context this chat uses, and which of its oldest turns to
 * drop when it is full.
 *
 * The server counts exactly: an answer's last frame carries `context_tokens`, the tokens its session
 * holds (system prompt, every turn and the answer, with the template's markup), kept on the answer.
 * Messages written after the last counted answer are estimated at the same tokens per character.
 */
import type { ChatMessage } from '../types/chat';

/** Tokens per character when nothing was counted yet (English text with a BPE tokenizer). */
export const DEFAULT_TOKENS_PER_CHAR = 0.3;
/** Template markup per message (role tags and separators), for estimates. */
const MARKUP_TOKENS = 6;
/** Dropping turns stops once the rest is estimated below this share of the context. */
export const TRIM_TARGET = 0.5;
/** The gauge offers to drop turns from this share of the context on. */
export const NEARLY_FULL = 0.9;

export interface ContextUsage {
  used: number;
  max: number;
  /** 0..1 (more when over). */
  fraction: number;
  /** The count is the server's (no message after the last counted answer). */
  exact: boolean;
  tokensPerChar: number;
}

type Counted = Pick<ChatMessage, 'role' | 'content' | 'contextTokens'>;

function chars(messages: readonly Counted[]): number {
  return messages.reduce((sum, m) => sum + m.content.length, 0);
}

/** The chat's use of the context; null when nothing was counted and there is nothing to estimate. */
export function contextUsage(messages: readonly Counted[], max: number): ContextUsage | null {
  let counted = -1;
  for (let i = messages.length - 1; i >= 0; i--) {
    if (messages[i]?.contextTokens !== undefined) {
      counted = i;
      break;
    }
  }
  if (counted < 0 && messages.length === 0) return null;
  let used: number;
  let tokensPerChar = DEFAULT_TOKENS_PER_CHAR;
  if (counted >= 0) {
    const tokens = messages[counted]?.contextTokens ?? 0;
    const before = chars(messages.slice(0, counted + 1));
    if (before > 0) tokensPerChar = tokens / before;
    const after = messages.slice(counted + 1);
    used = tokens + Math.round(chars(after) * tokensPerChar) + after.length * MARKUP_TOKENS;
  } else {
    used = Math.round(chars(messages) * tokensPerChar) + messages.length * MARKUP_TOKENS;
  }
  const exact = counted === messages.length - 1;
  return { used, max, fraction: max > 0 ? used / max : 1, exact, tokensPerChar };
}

/** Where each turn begins: the index of every user message (a turn is it and the answers after it). */
function turnStarts(messages: readonly Counted[]): number[] {
  return messages.flatMap((m, i) => (m.role === 'user' ? [i] : []));
}

/**
 * How many leading messages to drop (whole turns, the oldest first) so that the rest is estimated at
 * most `target` of the context; at least one turn, never the last one. 0 when there is one turn only.
 */
export function messagesToDrop(messages: readonly Counted[], max: number, target = TRIM_TARGET): number {
  const starts = turnStarts(messages);
  if (starts.length < 2) return 0;
  const usage = contextUsage(messages, max);
  const perChar = usage?.tokensPerChar ?? DEFAULT_TOKENS_PER_CHAR;
  let rest = usage?.used ?? 0;
  let drop = 0;
  for (let t = 1; t < starts.length; t++) {
    const end = starts[t] ?? messages.length;
    const turn = messages.slice(drop, end);
    rest -= Math.round(chars(turn) * perChar) + turn.length * MARKUP_TOKENS;
    drop = end;
    if (rest <= target * max) break;
  }
  return drop;
}

/** "1,234 / 2,048 tokens (60%)". */
export function describeUsage(usage: ContextUsage): string {
  const pct = Math.min(999, Math.round(usage.fraction * 100));
  const used = `${usage.exact ? '' : '≈'}${usage.used.toLocaleString('en-US')}`;
  return `${used} / ${usage.max.toLocaleString('en-US')} tokens (${pct}%)`;
}
