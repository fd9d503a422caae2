/** Wires the stores together; the app creates one and shares it through Svelte's context. */
import { getContext, setContext } from 'svelte';
import type { SocketFactory } from '../api/frameChannel';
import type { FetchLike } from '../api/modelsApi';
import { ChatSocketClient } from '../api/socketClient';
import { MarkdownRenderer } from '../markdown/renderer';
import type { ChatDb } from '../util/chatDb';
import type { KeyValueStorage } from '../util/storage';
import { ChatController } from './chat.svelte';
import { ConnectionStore } from './connection.svelte';
import { ConversationsStore } from './conversations.svelte';
import { ModelsStore } from './models.svelte';
import { SettingsStore } from './settings.svelte';

export interface AppState {
  models: ModelsStore;
  settings: SettingsStore;
  conversations: ConversationsStore;
  connection: ConnectionStore;
  chat: ChatController;
  markdown: MarkdownRenderer;
}

export interface AppDeps {
  /** Settings (and, before IndexedDB, the chats: migrated from here). */
  storage: KeyValueStorage;
  /** Where the chats are kept. */
  db: ChatDb;
  fetch: FetchLike;
  socketUrl: string;
  createSocket: SocketFactory;
}

export function createAppState(deps: AppDeps): AppState {
  const models = new ModelsStore(deps.fetch);
  const settings = new SettingsStore(deps.storage);
  const conversations = new ConversationsStore(deps.db, deps.storage);
  const connection = new ConnectionStore();
  const client = new ChatSocketClient({
    url: deps.socketUrl,
    createSocket: deps.createSocket,
    resumable: true,
    queueUpdates: true,
    onStatus: (status) => connection.setStatus(status),
    onQueued: (position) => (connection.queuePosition = position),
  });
  const chat = new ChatController({ client, conversations, settings, models, connection });
  return { models, settings, conversations, connection, chat, markdown: new MarkdownRenderer() };
}

/** The socket URL of this page's own backend. */
export function defaultSocketUrl(location: Location): string {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.host}/api/v2/generate`;
}

const KEY = Symbol('petals-chat-app');

export function provideAppState(state: AppState): void {
  setContext(KEY, state);
}

export function useAppState(): AppState {
  const state = getContext<AppState | undefined>(KEY);
  if (!state) throw new Error('useAppState() outside of the app');
  return state;
}
