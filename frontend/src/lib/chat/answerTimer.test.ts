import { describe, expect, it } from 'vitest';
import { AnswerTimer, describeStats } from './answerTimer';

describe('AnswerTimer', () => {
  it('measures time to first token and tokens per second from the first token on', () => {
    let t = 1000;
    const timer = new AnswerTimer(() => t);
    t = 1800;
    timer.tokens(1);
    t = 2800;
    timer.tokens(11);
    expect(timer.stats(false)).toEqual({ ttftMs: 800, tokensPerSecond: 10 });
    expect(timer.stats(true)).toEqual({ tokensPerSecond: 10 });
  });

  it('says nothing it did not measure', () => {
    const timer = new AnswerTimer(() => 5);
    expect(timer.stats(false)).toEqual({});
    expect(describeStats(0, {})).toBe('');
  });

  it('describes the facts in one line', () => {
    expect(describeStats(42, { ttftMs: 812, tokensPerSecond: 12.3 })).toBe('42 tokens · 0.8 s to first token · 12.3 tokens/s');
    expect(describeStats(1, undefined)).toBe('1 token');
  });
});
