/**
 * Where the dialogues are kept: IndexedDB in the browser (one record per conversation, so a save
 * writes only the conversations that changed), a Map in tests.
 */
import type { Conversation } from '../types/chat';

export interface StoredChats {
  activeId: string | null;
  conversations: Conversation[];
}

export interface ChatDb {
  /** Everything kept; null when nothing was ever saved. */
  load(): Promise<StoredChats | null>;
  save(data: StoredChats): Promise<void>;
}

/** Remembers what it wrote last, by conversation, to write and delete only the differences. */
class Differ {
  #written = new Map<string, string>();

  changes(data: StoredChats): { put: Conversation[]; remove: string[] } {
    const put: Conversation[] = [];
    const seen = new Set<string>();
    for (const conversation of data.conversations) {
      seen.add(conversation.id);
      const json = JSON.stringify(conversation);
      if (this.#written.get(conversation.id) !== json) {
        put.push(conversation);
        this.#written.set(conversation.id, json);
      }
    }
    const remove = [...this.#written.keys()].filter((id) => !seen.has(id));
    for (const id of remove) this.#written.delete(id);
    return { put, remove };
  }

  remember(conversations: Conversation[]): void {
    for (const c of conversations) this.#written.set(c.id, JSON.stringify(c));
  }
}

export class MemoryChatDb implements ChatDb {
  data: StoredChats | null = null;
  writes = 0;
  readonly #differ = new Differ();

  async load(): Promise<StoredChats | null> {
    return this.data ? structuredClone(this.data) : null;
  }

  save(data: StoredChats): Promise<void> {
    // synchronous on purpose: a test may "reload" right after the save began
    this.writes += this.#differ.changes(data).put.length;
    this.data = structuredClone(data);
    return Promise.resolve();
  }
}

const DB_NAME = 'petals-chat';
const CONVERSATIONS = 'conversations';
const META = 'meta';

function request<T>(req: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error ?? new Error('IndexedDB request failed'));
  });
}

function done(tx: IDBTransaction): Promise<void> {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = tx.onabort = () => reject(tx.error ?? new Error('IndexedDB transaction failed'));
  });
}

export class IndexedChatDb implements ChatDb {
  readonly #factory: IDBFactory;
  #differ = new Differ();
  #db: Promise<IDBDatabase> | null = null;

  constructor(factory: IDBFactory) {
    this.#factory = factory;
  }

  #open(): Promise<IDBDatabase> {
    this.#db ??= new Promise((resolve, reject) => {
      const req = this.#factory.open(DB_NAME, 1);
      req.onupgradeneeded = () => {
        req.result.createObjectStore(CONVERSATIONS, { keyPath: 'id' });
        req.result.createObjectStore(META);
      };
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error ?? new Error('Could not open IndexedDB'));
    });
    return this.#db;
  }

  async load(): Promise<StoredChats | null> {
    const db = await this.#open();
    const tx = db.transaction([CONVERSATIONS, META], 'readonly');
    const [conversations, activeId, saved] = await Promise.all([
      request(tx.objectStore(CONVERSATIONS).getAll() as IDBRequest<Conversation[]>),
      request(tx.objectStore(META).get('activeId') as IDBRequest<string | null | undefined>),
      request(tx.objectStore(META).get('saved') as IDBRequest<boolean | undefined>),
    ]);
    if (!saved && conversations.length === 0) return null;
    this.#differ.remember(conversations);
    return { activeId: activeId ?? null, conversations };
  }

  async save(data: StoredChats): Promise<void> {
    const db = await this.#open();
    const { put, remove } = this.#differ.changes(data);
    const tx = db.transaction([CONVERSATIONS, META], 'readwrite');
    const store = tx.objectStore(CONVERSATIONS);
    for (const conversation of put) store.put(conversation);
    for (const id of remove) store.delete(id);
    tx.objectStore(META).put(data.activeId, 'activeId');
    tx.objectStore(META).put(true, 'saved');
    try {
      await done(tx);
    } catch (error) {
      this.#differ = new Differ(); // the next save writes everything
      throw error;
    }
  }
}

/** IndexedDB when the browser has it (not in some private modes), else memory only. */
export function browserChatDb(): ChatDb {
  try {
    if (globalThis.indexedDB) return new IndexedChatDb(globalThis.indexedDB);
  } catch {
    // IndexedDB disabled
  }
  return new MemoryChatDb();
}
