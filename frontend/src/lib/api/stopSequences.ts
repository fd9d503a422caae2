/**
 * Streaming text that may end with a stop sequence: text that could be the beginning of a stop
 * sequence is held back until it is known not to be one, so "###" never flashes on screen.
 */
export class StopSequenceFilter {
  readonly #stops: string[];
  #pending = '';

  constructor(stopSequences: string[]) {
    this.#stops = stopSequences.filter((s) => s !== '');
  }

  /** Feeds a delta; returns the text that is safe to show now. */
  push(delta: string): string {
    this.#pending += delta;
    const hold = this.#heldLength(this.#pending);
    const ready = this.#pending.slice(0, this.#pending.length - hold);
    this.#pending = this.#pending.slice(ready.length);
    return ready;
  }

  /** The answer is over: drops a trailing stop sequence and returns what remains to show. */
  finish(): string {
    let rest = this.#pending;
    this.#pending = '';
    for (const stop of this.#stops) {
      if (rest.endsWith(stop)) {
        rest = rest.slice(0, rest.length - stop.length);
        break;
      }
    }
    return rest;
  }

  /** Drops held text (the turn is being retried from what was shown). */
  reset(): void {
    this.#pending = '';
  }

  /** Length of the longest suffix of `text` that is a prefix of (or equals) a stop sequence. */
  #heldLength(text: string): number {
    let best = 0;
    for (const stop of this.#stops) {
      const idx = text.indexOf(stop);
      if (idx !== -1) best = Math.max(best, text.length - idx);
      const max = Math.min(stop.length - 1, text.length);
      for (let len = max; len > best; len--) {
        if (stop.startsWith(text.slice(text.length - len))) {
          best = len;
          break;
        }
      }
    }
    return best;
  }
}
