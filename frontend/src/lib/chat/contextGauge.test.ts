import { describe, expect, test } from 'vitest';
import { contextUsage, describeUsage, messagesToDrop } from './contextGauge';
import type { ChatMessage } from '../types/chat';

type M = Pick<ChatMessage, 'role' | 'content' | 'contextTokens'>;
const user = (content: string): M => ({ role: 'user', content });
const answer = (content: string, contextTokens?: number): M => ({ role: 'assistant', content, contextTokens });

describe('contextUsage', () => {
  test('is exact when the last message is an answer the server counted', () => {
    const usage = contextUsage([user('a'.repeat(100)), answer('b'.repeat(100), 80)], 1000);
    expect(usage).toMatchObject({ used: 80, max: 1000, fraction: 0.08, exact: true });
  });

  test('estimates later messages at the counted tokens per character', () => {
    const usage = contextUsage([user('a'.repeat(100)), answer('b'.repeat(100), 100), user('c'.repeat(200))], 1000);
    expect(usage?.exact).toBe(false);
    expect(usage?.used).toBe(100 + 100 + 6); // 0.5 tokens per character, plus markup
    expect(describeUsage(usage!)).toBe('≈206 / 1,000 tokens (21%)');
  });

  test('without any count: an estimate, none for an empty chat', () => {
    expect(contextUsage([], 100)).toBeNull();
    expect(contextUsage([user('x'.repeat(10))], 100)).toMatchObject({ used: 3 + 6, exact: false });
  });
});

describe('messagesToDrop', () => {
  const turn = (n: number, tokens?: number): M[] => [user('u'.repeat(n)), answer('a'.repeat(n), tokens)];

  test('drops whole turns, oldest first, until the rest is under the target', () => {
    // four turns of 200 characters each, counted at 1 token per character: 800 of 1000
    const messages = [...turn(100), ...turn(100), ...turn(100), ...turn(100, 800)];
    expect(messagesToDrop(messages, 1000)).toBe(4); // 800 -> 588 -> 376 (below 500)
    expect(messagesToDrop(messages, 1000, 0.7)).toBe(2);
  });

  test('at least one turn, never the last one', () => {
    const messages = [...turn(10), ...turn(10, 20)];
    expect(messagesToDrop(messages, 1000)).toBe(2);
    const huge = [...turn(100), ...turn(100), user('x'.repeat(5000))];
    expect(messagesToDrop(huge, 100)).toBe(4);
    expect(messagesToDrop([user('only')], 100)).toBe(0);
  });
});
