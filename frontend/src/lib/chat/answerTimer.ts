/** Facts about one answer, measured in the page: time to first token and tokens per second. */
import type { AnswerStats } from '../types/chat';

export class AnswerTimer {
  readonly #now: () => number;
  readonly #started: number;
  #first: { at: number; tokens: number } | null = null;
  #last: { at: number; tokens: number } | null = null;

  constructor(now: () => number = () => performance.now()) {
    this.#now = now;
    this.#started = now();
  }

  /** The answer's cumulative token count after a delta. */
  tokens(count: number): void {
    const at = this.#now();
    if (this.#first === null) this.#first = { at, tokens: count };
    this.#last = { at, tokens: count };
  }

  /** What was measured; `resumed`: the first token came before this run (no time to first token). */
  stats(resumed: boolean): AnswerStats {
    const stats: AnswerStats = {};
    if (this.#first && !resumed) stats.ttftMs = Math.round(this.#first.at - this.#started);
    if (this.#first && this.#last && this.#last.at > this.#first.at && this.#last.tokens > this.#first.tokens) {
      const rate = ((this.#last.tokens - this.#first.tokens) * 1000) / (this.#last.at - this.#first.at);
      stats.tokensPerSecond = Math.round(rate * 10) / 10;
    }
    return stats;
  }
}

/** "42 tokens · 0.8 s to first token · 12.3 tokens/s" (the parts that are known). */
export function describeStats(tokenCount: number | undefined, stats: AnswerStats | undefined): string {
  const parts: string[] = [];
  if (tokenCount) parts.push(`${tokenCount} token${tokenCount === 1 ? '' : 's'}`);
  if (stats?.ttftMs !== undefined) parts.push(`${(stats.ttftMs / 1000).toFixed(1)} s to first token`);
  if (stats?.tokensPerSecond !== undefined) parts.push(`${stats.tokensPerSecond} tokens/s`);
  return parts.join(' · ');
}
