import { deleteFrom, forkAt, switchVersion } from '../chat/branches';
import type { Branch, ChatMessage, Conversation } from '../types/chat';
import { newId } from '../util/ids';
import type { ChatDb, StoredChats } from '../util/chatDb';
import { readJson, type KeyValueStorage } from '../util/storage';

/** Where dialogues were kept before IndexedDB (migrated once, then removed). */
export const LEGACY_STORAGE_KEY = 'petals-chat:conversations:v1';
const TITLE_LENGTH = 48;
export const UNTITLED = 'New chat';

function titleFrom(text: string): string {
  const line = text.replace(/\s+/g, ' ').trim();
  if (!line) return UNTITLED;
  return line.length > TITLE_LENGTH ? `${line.slice(0, TITLE_LENGTH - 1)}…` : line;
}

function isConversation(value: unknown): value is Conversation {
  const c = value as Conversation;
  return (
    typeof c === 'object' &&
    c !== null &&
    typeof c.id === 'string' &&
    typeof c.model === 'string' &&
    Array.isArray(c.messages)
  );
}

/** A stored conversation as the store uses it (defaults filled in; an answer cut by a reload is over). */
export function normalizeConversation(c: Conversation): Conversation {
  return {
    ...c,
    title: typeof c.title === 'string' ? c.title : UNTITLED,
    customTitle: c.customTitle === true,
    messages: c.messages.map((m) => (m.state === 'streaming' ? { ...m, state: 'stopped' as const } : m)),
  };
}

export { isConversation };

/** Dialogues kept in the browser (IndexedDB): list, switch, rename, delete, new. */
export class ConversationsStore {
  list = $state<Conversation[]>([]);
  activeId = $state<string | null>(null);

  readonly active: Conversation | null = $derived(this.list.find((c) => c.id === this.activeId) ?? null);
  readonly sorted: Conversation[] = $derived([...this.list].sort((a, b) => b.updatedAt - a.updatedAt));

  readonly #db: ChatDb;
  readonly #legacy: KeyValueStorage | null;
  readonly #now: () => number;
  #pending: StoredChats | null = null;
  #writing: Promise<void> | null = null;

  constructor(db: ChatDb, legacy: KeyValueStorage | null = null, now: () => number = Date.now) {
    this.#db = db;
    this.#legacy = legacy;
    this.#now = now;
  }

  /** Reads the kept dialogues (once, at start); chats kept in localStorage by older versions move over. */
  async load(): Promise<void> {
    let saved: StoredChats | null = null;
    try {
      saved = await this.#db.load();
    } catch {
      saved = null; // unreadable: start empty, the page still works
    }
    const legacy = this.#legacy ? readJson<StoredChats>(this.#legacy, LEGACY_STORAGE_KEY) : null;
    if (!saved && legacy) saved = legacy;
    if (!saved || !Array.isArray(saved.conversations)) return;
    const loaded = saved.conversations.filter(isConversation).map(normalizeConversation);
    const fresh = this.list.filter((c) => !loaded.some((l) => l.id === c.id)); // made while loading
    this.list = [...loaded, ...fresh];
    if (this.activeId === null && this.list.some((c) => c.id === saved.activeId)) this.activeId = saved.activeId;
    if (legacy) {
      this.save();
      await this.flushed();
      this.#legacy?.remove(LEGACY_STORAGE_KEY);
    }
  }

  /** Conversations whose title or text contains every word of `query` (case-insensitive), newest first. */
  search(query: string): Conversation[] {
    const words = query.toLowerCase().split(/\s+/).filter(Boolean);
    if (words.length === 0) return this.sorted;
    return this.sorted.filter((c) => {
      const text = `${c.title}\n${c.messages.map((m) => m.content).join('\n')}`.toLowerCase();
      return words.every((w) => text.includes(w));
    });
  }

  /** Adds imported conversations (a chat already here keeps its place: the import gets a new id). */
  importConversations(imported: Conversation[]): number {
    for (const conversation of imported) {
      const id = this.get(conversation.id) ? newId() : conversation.id;
      this.list.push({ ...normalizeConversation(conversation), id });
    }
    this.save();
    return imported.length;
  }

  /** Resolves when every save so far is written. */
  async flushed(): Promise<void> {
    while (this.#writing) await this.#writing;
  }

  create(model: string): Conversation {
    const now = this.#now();
    this.list.push({
      id: newId(),
      title: UNTITLED,
      customTitle: false,
      model,
      createdAt: now,
      updatedAt: now,
      messages: [],
    });
    const created = this.list[this.list.length - 1] as Conversation; // the reactive proxy
    this.activeId = created.id;
    this.save();
    return created;
  }

  get(id: string): Conversation | undefined {
    return this.list.find((c) => c.id === id);
  }

  select(id: string | null): void {
    if (id === null || this.get(id)) {
      this.activeId = id;
      this.save();
    }
  }

  rename(id: string, title: string): void {
    const conversation = this.get(id);
    if (!conversation) return;
    const clean = title.replace(/\s+/g, ' ').trim();
    conversation.title = clean || titleFrom(conversation.messages[0]?.content ?? '');
    conversation.customTitle = clean !== '';
    this.save();
  }

  remove(id: string): void {
    this.list = this.list.filter((c) => c.id !== id);
    if (this.activeId === id) this.activeId = this.sorted[0]?.id ?? null;
    this.save();
  }

  setModel(id: string, model: string): void {
    const conversation = this.get(id);
    if (conversation) {
      conversation.model = model;
      this.save();
    }
  }

  /** Sets this chat's own system prompt (null or empty: the default one). */
  setSystemPrompt(id: string, prompt: string | null): void {
    const conversation = this.get(id);
    if (!conversation) return;
    if (prompt === null || prompt.trim() === '') delete conversation.systemPrompt;
    else conversation.systemPrompt = prompt;
    this.save();
  }

  /** Appends a message and returns its reactive proxy (mutate it to stream text in). */
  addMessage(id: string, message: Omit<ChatMessage, 'id'>): ChatMessage {
    const conversation = this.get(id);
    if (!conversation) throw new Error(`No conversation ${id}`);
    conversation.messages.push({ id: newId(), ...message });
    conversation.updatedAt = this.#now();
    if (!conversation.customTitle && message.role === 'user' && conversation.messages.length === 1) {
      conversation.title = titleFrom(message.content);
    }
    this.save();
    return conversation.messages[conversation.messages.length - 1] as ChatMessage;
  }

  /** Replaces a message's text (an edited user message). */
  editMessage(id: string, index: number, content: string): void {
    const conversation = this.get(id);
    const message = conversation?.messages[index];
    if (!conversation || !message) return;
    message.content = content;
    if (index === 0 && !conversation.customTitle) conversation.title = titleFrom(content);
    conversation.updatedAt = this.#now();
    this.save();
  }

  /** Drops the messages from index `from` on (edit / regenerate). */
  truncate(id: string, from: number): void {
    const conversation = this.get(id);
    if (!conversation) return;
    conversation.messages.splice(from);
    conversation.updatedAt = this.#now();
    this.save();
  }

  /** Keeps the tail from `index` on as a version and removes it; the next message there carries the result. */
  fork(id: string, index: number): Branch | undefined {
    const conversation = this.get(id);
    if (!conversation || index < 0 || index >= conversation.messages.length) return undefined;
    const branch = forkAt(conversation.messages, index);
    this.save();
    return branch;
  }

  /** Shows another version (0-based `to`) of the dialogue from message `index` on. */
  switchVersion(id: string, index: number, to: number): void {
    const conversation = this.get(id);
    if (!conversation) return;
    switchVersion(conversation.messages, index, to);
    this.save();
  }

  /** Deletes a message and its replies (another version of them, if any, is shown instead). */
  deleteFrom(id: string, index: number): void {
    const conversation = this.get(id);
    if (!conversation || index < 0) return;
    deleteFrom(conversation.messages, index);
    conversation.updatedAt = this.#now();
    this.save();
  }

  /** Drops the first `count` messages (the oldest turns of a chat that is full). */
  dropFirst(id: string, count: number): void {
    const conversation = this.get(id);
    if (!conversation || count <= 0) return;
    conversation.messages.splice(0, count);
    conversation.updatedAt = this.#now();
    this.save();
  }

  touch(id: string): void {
    const conversation = this.get(id);
    if (conversation) conversation.updatedAt = this.#now();
  }

  /** Writes in the background; saves that come while one is written are coalesced into the next. */
  save(): void {
    this.#pending = { activeId: this.activeId, conversations: $state.snapshot(this.list) };
    this.#writing ??= this.#write();
  }

  async #write(): Promise<void> {
    try {
      while (this.#pending) {
        const data = this.#pending;
        this.#pending = null;
        try {
          await this.#db.save(data);
        } catch {
          // Quota exceeded or storage disabled: the app keeps working without persistence.
        }
      }
    } finally {
      this.#writing = null;
    }
  }
}
