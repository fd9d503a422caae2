import { describe, expect, it } from 'vitest';
import { isConversation } from '../stores/conversations.svelte';
import type { Conversation } from '../types/chat';
import { shortcutFor } from '../util/shortcuts';
import { conversationToMarkdown, exportJson, fileName, parseImport } from './exportChats';

const chat: Conversation = {
  id: 'c1',
  title: 'Maths: 2+2?',
  customTitle: false,
  model: 'smol',
  createdAt: 1,
  updatedAt: 2,
  messages: [
    { id: 'm1', role: 'user', content: 'What is 2+2?', state: 'done' },
    { id: 'm2', role: 'assistant', content: ' 4.', state: 'done', tokenCount: 2 },
  ],
};

describe('export and import', () => {
  it('round-trips JSON, one chat or all', () => {
    expect(parseImport(exportJson([chat]), isConversation)).toEqual([chat]);
    expect(parseImport(JSON.stringify(chat), isConversation)).toEqual([chat]);
    expect(parseImport(JSON.stringify([chat, { junk: 1 }]), isConversation)).toEqual([chat]);
  });

  it('says what is wrong with a bad file', () => {
    expect(() => parseImport('not json', isConversation)).toThrow('not JSON');
    expect(() => parseImport('{"conversations": [1]}', isConversation)).toThrow('no chats');
  });

  it('writes one chat as Markdown and names files after it', () => {
    expect(conversationToMarkdown(chat)).toBe(
      '# Maths: 2+2?\n\n_Model: smol_\n\n## You\n\nWhat is 2+2?\n\n## Assistant\n\n4.\n',
    );
    expect(fileName(chat, 'md')).toBe('Maths-2-2.md');
    expect(fileName(null, 'json')).toBe('petals-chats.json');
  });
});

describe('shortcuts', () => {
  const key = (k: string, extra: Partial<KeyboardEvent> = {}) => ({
    key: k,
    ctrlKey: false,
    metaKey: false,
    shiftKey: false,
    altKey: false,
    ...extra,
  });
  it('maps keys to actions', () => {
    expect(shortcutFor(key('k', { ctrlKey: true }), false)).toBe('search');
    expect(shortcutFor(key('K', { metaKey: true }), false)).toBe('search');
    expect(shortcutFor(key('O', { ctrlKey: true, shiftKey: true }), false)).toBe('new-chat');
    expect(shortcutFor(key('Escape'), true)).toBe('stop');
    expect(shortcutFor(key('Escape'), false)).toBeNull();
    expect(shortcutFor(key('k'), false)).toBeNull();
  });
});
