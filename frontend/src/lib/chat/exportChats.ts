/** Chats in and out of the page: JSON (all chats or one) and Markdown (one chat). */
import type { Conversation } from '../types/chat';

export const EXPORT_FORMAT = 'petals-chat';

export function exportJson(conversations: Conversation[]): string {
  return JSON.stringify({ format: EXPORT_FORMAT, version: 1, conversations }, null, 2);
}

/** One chat as Markdown: the versions shown now, each message under its author. */
export function conversationToMarkdown(conversation: Conversation): string {
  const lines = [`# ${conversation.title}`, '', `_Model: ${conversation.model}_`, ''];
  for (const message of conversation.messages) {
    lines.push(`## ${message.role === 'user' ? 'You' : 'Assistant'}`, '', message.content.trim(), '');
  }
  return lines.join('\n');
}

/** A file name for a chat: its title, made safe. */
export function fileName(conversation: Conversation | null, extension: string): string {
  const base = conversation ? conversation.title.replace(/[^\p{L}\p{N}]+/gu, '-').replace(/^-+|-+$/g, '') : '';
  return `${(base || 'petals-chats').slice(0, 60)}.${extension}`;
}

/**
 * The conversations in an exported file: `{conversations: [...]}`, a bare array, or one
 * conversation. Throws an Error saying what is wrong when there is none.
 */
export function parseImport(text: string, isConversation: (value: unknown) => value is Conversation): Conversation[] {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new Error('The file is not JSON');
  }
  const record = value as { conversations?: unknown };
  const items: unknown[] = Array.isArray(value)
    ? value
    : Array.isArray(record?.conversations)
      ? record.conversations
      : [value];
  const conversations = items.filter(isConversation);
  if (conversations.length === 0) throw new Error('The file holds no chats');
  return conversations;
}
