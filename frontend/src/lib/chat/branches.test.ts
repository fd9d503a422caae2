import { describe, expect, it } from 'vitest';
import type { ChatMessage } from '../types/chat';
import { deleteFrom, forkAt, switchVersion, versionsAt } from './branches';

function msg(id: string, role: 'user' | 'assistant' = 'user'): ChatMessage {
  return { id, role, content: id, state: 'done' };
}

const ids = (messages: ChatMessage[]) => messages.map((m) => m.id);

describe('branches', () => {
  it('keeps the old tail as a version and navigates between versions', () => {
    const messages = [msg('u1'), msg('a1', 'assistant'), msg('u2'), msg('a2', 'assistant')];
    const branch = forkAt(messages, 1); // regenerate a1
    expect(ids(messages)).toEqual(['u1']);
    messages.push({ ...msg('a1b', 'assistant'), branch });
    expect(versionsAt(messages[1]!)).toEqual([2, 2]);

    switchVersion(messages, 1, 0);
    expect(ids(messages)).toEqual(['u1', 'a1', 'u2', 'a2']);
    expect(versionsAt(messages[1]!)).toEqual([1, 2]);
    switchVersion(messages, 1, 1);
    expect(ids(messages)).toEqual(['u1', 'a1b']);

    // a third version
    const third = forkAt(messages, 1);
    messages.push({ ...msg('a1c', 'assistant'), branch: third });
    expect(versionsAt(messages[1]!)).toEqual([3, 3]);
    switchVersion(messages, 1, 1);
    expect(ids(messages)).toEqual(['u1', 'a1b']);
    switchVersion(messages, 1, 0);
    expect(ids(messages)).toEqual(['u1', 'a1', 'u2', 'a2']);
  });

  it('nests: a version keeps its own versions further down', () => {
    const messages = [msg('u1'), msg('a1', 'assistant'), msg('u2'), msg('a2', 'assistant')];
    const inner = forkAt(messages, 3);
    messages.push({ ...msg('a2b', 'assistant'), branch: inner });
    const outer = forkAt(messages, 0); // edit u1
    messages.push({ ...msg('u1b'), branch: outer });
    expect(ids(messages)).toEqual(['u1b']);

    switchVersion(messages, 0, 0);
    expect(ids(messages)).toEqual(['u1', 'a1', 'u2', 'a2b']);
    expect(versionsAt(messages[3]!)).toEqual([2, 2]);
    switchVersion(messages, 3, 0);
    expect(ids(messages)).toEqual(['u1', 'a1', 'u2', 'a2']);
    expect(versionsAt(messages[0]!)).toEqual([1, 2]);
  });

  it('delete drops a message and its replies, showing another version if there is one', () => {
    const messages = [msg('u1'), msg('a1', 'assistant')];
    const branch = forkAt(messages, 1);
    messages.push({ ...msg('a1b', 'assistant'), branch });
    deleteFrom(messages, 1);
    expect(ids(messages)).toEqual(['u1', 'a1']);
    expect(versionsAt(messages[1]!)).toBeNull();
    deleteFrom(messages, 0);
    expect(messages).toEqual([]);
  });

  it('ignores versions that do not exist', () => {
    const messages = [msg('u1')];
    switchVersion(messages, 0, 3);
    switchVersion(messages, 5, 0);
    expect(ids(messages)).toEqual(['u1']);
  });
});
