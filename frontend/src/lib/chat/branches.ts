/**
 * Versions of a dialogue ("branches"): editing a message or regenerating an answer keeps what
 * was there before as another version of the dialogue from that message on.
 *
 * The live path is the conversation's `messages`. The message at position i may carry a
 * `Branch`: all the versions of the dialogue's tail from i on, `index` being the one shown. The
 * shown version's slot holds an empty placeholder (its messages are the live ones); the others
 * keep their messages, with their own nested branches inside. Pure functions on arrays.
 */
import type { Branch, ChatMessage } from '../types/chat';

/** Versions at this message: [shown (1-based), total]; null when there is only one. */
export function versionsAt(message: ChatMessage): [number, number] | null {
  const branch = message.branch;
  return branch && branch.tails.length > 1 ? [branch.index + 1, branch.tails.length] : null;
}

/**
 * Removes the tail from `index` on, keeping it as a version; returns the branch that the new
 * message at `index` must carry (it becomes the last version).
 */
export function forkAt(messages: ChatMessage[], index: number): Branch {
  const tail = messages.splice(index);
  const head = tail[0];
  if (!head) return { tails: [[]], index: 0 };
  const branch = head.branch ?? { tails: [[]], index: 0 };
  delete head.branch;
  const tails = [...branch.tails];
  tails[branch.index] = tail;
  tails.push([]);
  return { tails, index: tails.length - 1 };
}

/** Shows version `to` (0-based) of the tail from `index` on. */
export function switchVersion(messages: ChatMessage[], index: number, to: number): void {
  const head = messages[index];
  const branch = head?.branch;
  if (!head || !branch || to === branch.index || to < 0 || to >= branch.tails.length) return;
  const next = branch.tails[to];
  if (!next || next.length === 0) return;
  const tails = [...branch.tails];
  const tail = messages.splice(index);
  delete tail[0]!.branch;
  tails[branch.index] = tail;
  tails[to] = [];
  next[0]!.branch = { tails, index: to };
  messages.push(...next);
}

/**
 * Deletes the message at `index` and the ones after it (its replies). When that tail has other
 * versions, the previous one (or the next) is shown instead.
 */
export function deleteFrom(messages: ChatMessage[], index: number): void {
  const branch = messages[index]?.branch;
  messages.splice(index);
  if (!branch || branch.tails.length <= 1) return;
  const tails = branch.tails.filter((_, i) => i !== branch.index);
  const shown = Math.max(0, branch.index - 1);
  const next = tails[shown]!;
  tails[shown] = [];
  if (tails.length > 1) next[0]!.branch = { tails, index: shown };
  messages.push(...next);
}
