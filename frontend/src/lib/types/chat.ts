/** The browser-side model of dialogues (what the conversations store keeps). */
import type { ResumePoint } from '../api/socketClient';
import type { RouteHop } from './protocol';

export type MessageState = 'streaming' | 'done' | 'stopped' | 'error';

export interface ChatMessage {
  id: string;
  role: 'user' | 'assistant';
  /** For answers: the text exactly as generated (it is sent back verbatim in later prompts). */
  content: string;
  state: MessageState;
  tokenCount?: number;
  /** The answer ended at its token limit (it can be continued). */
  limited?: boolean;
  /** While streaming: where a reloaded page can reattach to the server's generation. */
  resume?: ResumePoint;
  /** Answers: measured in the page while it streamed. */
  stats?: AnswerStats;
  /** Answers: the servers that held the model's blocks for it (the server's last frame). */
  route?: RouteHop[];
  /** Answers: tokens the session held after it (the server's count: the chat's context use). */
  contextTokens?: number;
  /** The versions of the dialogue from this message on (see chat/branches.ts). */
  branch?: Branch;
}

export interface AnswerStats {
  /** Milliseconds from sending to the first token. */
  ttftMs?: number;
  tokensPerSecond?: number;
}

/** All versions of a dialogue's tail; `tails[index]` (the one shown) is an empty placeholder. */
export interface Branch {
  tails: ChatMessage[][];
  index: number;
}

export interface Conversation {
  id: string;
  title: string;
  /** Whether the user renamed it (otherwise the title follows the first message). */
  customTitle: boolean;
  model: string;
  /** This chat's system prompt (unset: the settings' or the model's). */
  systemPrompt?: string;
  createdAt: number;
  updatedAt: number;
  messages: ChatMessage[];
}

export type ThemePreference = 'system' | 'light' | 'dark';

export type ConnectionState = 'idle' | 'connecting' | 'generating' | 'reconnecting' | 'error';
