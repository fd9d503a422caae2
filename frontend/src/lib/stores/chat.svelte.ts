/**
 * The chat controller: turns user actions (send, stop, regenerate, edit, retry, switch model)
 * into socket turns, streaming the answer into the active conversation.
 */
import { ChatError } from '../api/errors';
import type { ChatSocketClient, ResumePoint } from '../api/socketClient';
import { AnswerTimer } from '../chat/answerTimer';
import { messagesToDrop } from '../chat/contextGauge';
import { createPromptRenderer, type PromptRenderer } from '../chat/prompt';
import type { Branch, ChatMessage, Conversation } from '../types/chat';
import type { ModelInfo } from '../types/protocol';
import type { ConnectionStore } from './connection.svelte';
import type { ConversationsStore } from './conversations.svelte';
import type { ModelsStore } from './models.svelte';
import type { SettingsStore } from './settings.svelte';

/** An answer to go on with: Continue, or one taken up after a reload (`point`). */
interface ExistingAnswer {
  message: ChatMessage;
  point?: ResumePoint;
}

export interface ChatDeps {
  client: ChatSocketClient;
  conversations: ConversationsStore;
  settings: SettingsStore;
  models: ModelsStore;
  connection: ConnectionStore;
}

export class ChatController {
  /** The model picked for new dialogues (and shown in the picker). */
  selectedModel = $state('');
  running = $state(false);

  readonly #deps: ChatDeps;
  readonly #renderers = new Map<string, { template: string | null; render: PromptRenderer }>();
  #abort: AbortController | null = null;
  #run: Promise<void> | null = null;

  constructor(deps: ChatDeps) {
    this.#deps = deps;
  }

  /** The model of the active dialogue, or the selected one. */
  get modelKey(): string {
    return this.#deps.conversations.active?.model ?? this.selectedModel;
  }

  get model(): ModelInfo | undefined {
    return this.#deps.models.get(this.modelKey);
  }

  /** Once models are known: pick the default model unless one is chosen already. */
  initModel(): void {
    const { models, conversations } = this.#deps;
    const activeModel = conversations.active?.model;
    if (activeModel && models.get(activeModel)) this.selectedModel = activeModel;
    else if (!this.selectedModel || !models.get(this.selectedModel)) this.selectedModel = models.defaultKey;
  }

  get canSend(): boolean {
    return !this.running && this.model !== undefined;
  }

  async send(text: string): Promise<void> {
    const content = text.trim();
    if (!content || this.running) return;
    const { conversations } = this.#deps;
    const conversation = conversations.active ?? conversations.create(this.selectedModel);
    conversations.addMessage(conversation.id, { role: 'user', content, state: 'done' });
    await this.#answer(conversation);
  }

  /** Stop button: closes the socket; the partial answer stays and the dialogue goes on. */
  stop(): void {
    this.#abort?.abort();
  }

  /** Answers again in place of an answer (default: the last one); the old answer stays as a version. */
  async regenerate(messageId?: string): Promise<void> {
    const conversation = this.#deps.conversations.active;
    if (!conversation || this.running) return;
    const { messages } = conversation;
    const index = messageId === undefined ? messages.length - 1 : messages.findIndex((m) => m.id === messageId);
    const branch =
      messages[index]?.role === 'assistant' ? this.#deps.conversations.fork(conversation.id, index) : undefined;
    if (conversation.messages.at(-1)?.role !== 'user') return;
    await this.#answer(conversation, undefined, branch);
  }

  /** Continue an answer that stopped at its token limit (or was stopped): generate more of it. */
  async continueAnswer(): Promise<void> {
    const conversation = this.#deps.conversations.active;
    const last = conversation?.messages.at(-1);
    if (!conversation || this.running || last?.role !== 'assistant') return;
    await this.#answer(conversation, { message: last });
  }

  /**
   * After a reload: an answer of the active dialogue that was streaming when the page went away
   * is taken up again (the server kept generating it for its reattach window).
   */
  async resumeInterrupted(): Promise<void> {
    const conversation = this.#deps.conversations.active;
    const last = conversation?.messages.at(-1);
    if (!conversation || this.running || last?.role !== 'assistant' || !last.resume) return;
    await this.#answer(conversation, { message: last, point: last.resume });
  }

  /** Deletes a message and its replies (stopping the answer first if it is among them). */
  async deleteMessage(messageId: string): Promise<void> {
    const conversation = this.#deps.conversations.active;
    if (!conversation) return;
    if (this.running) await this.#stopAndWait();
    const index = conversation.messages.findIndex((m) => m.id === messageId);
    if (index >= 0) this.#deps.conversations.deleteFrom(conversation.id, index);
  }

  /** Shows another version (0-based) of the dialogue from a message on. */
  showVersion(messageId: string, to: number): void {
    const conversation = this.#deps.conversations.active;
    if (!conversation || this.running) return;
    const index = conversation.messages.findIndex((m) => m.id === messageId);
    if (index >= 0) this.#deps.conversations.switchVersion(conversation.id, index, to);
  }

  /**
   * The chat is full: drop its oldest turns (enough for the rest to fill about half of the model's
   * context, see chat/contextGauge.ts) and go on: answer the last message if it has no answer yet.
   */
  async dropOldestTurns(): Promise<void> {
    const conversation = this.#deps.conversations.active;
    const model = this.model;
    if (!conversation || !model) return;
    await this.#stopAndWait();
    const count = messagesToDrop(conversation.messages, model.chat.max_session_length);
    if (count === 0) return;
    this.#deps.conversations.dropFirst(conversation.id, count);
    this.#deps.connection.clearError();
    if (conversation.messages.at(-1)?.role === 'user') await this.#answer(conversation);
  }

  /** Retry link of the error box. */
  async retry(): Promise<void> {
    this.#deps.connection.clearError();
    await this.regenerate();
  }

  /** Edits a previous user message and answers again from there. */
  async editAndResend(messageId: string, text: string): Promise<void> {
    const content = text.trim();
    const conversation = this.#deps.conversations.active;
    if (!content || !conversation) return;
    await this.#stopAndWait();
    const index = conversation.messages.findIndex((m) => m.id === messageId);
    if (index < 0 || conversation.messages[index]?.role !== 'user') return;
    // The message and what followed it stay as the previous version.
    const branch = this.#deps.conversations.fork(conversation.id, index);
    this.#deps.conversations.addMessage(conversation.id, { role: 'user', content, state: 'done', branch });
    await this.#answer(conversation);
  }

  /** Switching model starts a new dialogue (or reuses the active one while it is empty). */
  async selectModel(key: string): Promise<void> {
    if (!this.#deps.models.get(key)) return;
    await this.#stopAndWait();
    this.selectedModel = key;
    this.#deps.connection.clearError();
    const { conversations } = this.#deps;
    const active = conversations.active;
    if (active && active.messages.length === 0) conversations.setModel(active.id, key);
    else if (active) conversations.create(key);
  }

  async newConversation(): Promise<void> {
    await this.#stopAndWait();
    this.#deps.connection.clearError();
    const active = this.#deps.conversations.active;
    if (active && active.messages.length === 0) return;
    this.#deps.conversations.create(this.selectedModel || this.#deps.models.defaultKey);
  }

  async selectConversation(id: string): Promise<void> {
    await this.#stopAndWait();
    this.#deps.connection.clearError();
    this.#deps.conversations.select(id);
    const model = this.#deps.conversations.active?.model;
    if (model && this.#deps.models.get(model)) this.selectedModel = model;
  }

  async deleteConversation(id: string): Promise<void> {
    if (this.#deps.conversations.activeId === id) await this.#stopAndWait();
    this.#deps.conversations.remove(id);
  }

  async #stopAndWait(): Promise<void> {
    this.stop();
    await this.#run;
  }

  #renderer(model: ModelInfo): PromptRenderer {
    const cached = this.#renderers.get(model.key);
    if (cached && cached.template === model.chat.chat_template) return cached.render;
    const render = createPromptRenderer(model.chat);
    this.#renderers.set(model.key, { template: model.chat.chat_template, render });
    return render;
  }

  async #answer(conversation: Conversation, existing?: ExistingAnswer, branch?: Branch): Promise<void> {
    if (this.running) return;
    const run = this.#stream(conversation, existing, branch);
    this.#run = run;
    await run;
  }

  /** Streams a new answer, or more of `existing` (the last message). */
  async #stream(conversation: Conversation, existing?: ExistingAnswer, branch?: Branch): Promise<void> {
    const { client, conversations, connection, settings, models } = this.#deps;
    const model = models.get(conversation.model);
    connection.beginAnswer();
    if (!model) {
      connection.fail({
        kind: 'model',
        message: `The model ${conversation.model} is not available. Start a new dialogue with another model.`,
        detail: '',
      });
      return;
    }
    let rendered;
    try {
      rendered = this.#renderer(model)(
        conversation.systemPrompt ?? settings.effectiveSystemPrompt(model),
        conversation.messages
          .filter((m) => m !== existing?.message)
          .map((m) => ({ role: m.role, content: m.content })),
      );
    } catch (error) {
      connection.fail({ kind: 'model', message: 'Could not render the chat template', detail: String(error) });
      return;
    }
    const params = settings.effectiveParams(model);
    const answer: ChatMessage =
      existing?.message ??
      conversations.addMessage(conversation.id, {
        role: 'assistant',
        content: '',
        state: 'streaming',
        tokenCount: 0,
        ...(branch ? { branch } : {}),
      });
    answer.state = 'streaming';
    answer.limited = undefined;
    const abort = new AbortController();
    this.#abort = abort;
    const timer = new AnswerTimer();
    this.running = true;
    try {
      const stream = client.streamTurn({
        model: model.key,
        maxSessionLength: model.chat.max_session_length,
        prompt: rendered.text,
        stopSequence: rendered.stopSequence,
        extraStopSequences: rendered.extraStopSequences,
        params: params.sampling,
        maxNewTokens: params.maxNewTokens,
        signal: abort.signal,
        ...(existing
          ? { resume: { text: answer.content, tokenCount: answer.tokenCount ?? 0, point: existing.point } }
          : {}),
      });
      for await (const event of stream) {
        if (event.type === 'resumable') {
          answer.resume = event.point;
          conversations.save(); // a reload can take the answer up from here
          continue;
        }
        answer.tokenCount = event.tokenCount;
        if (event.type === 'delta') {
          answer.content += event.text;
          connection.recordTokens(event.tokenCount);
          timer.tokens(event.tokenCount);
        } else if (event.type === 'reset') {
          answer.content = event.text;
        } else {
          answer.state = event.reason === 'aborted' ? 'stopped' : 'done';
          if (event.reason === 'length') answer.limited = true;
          if (event.route) answer.route = event.route;
          if (event.contextTokens !== undefined) answer.contextTokens = event.contextTokens;
        }
      }
    } catch (error) {
      const chatError =
        error instanceof ChatError ? error : new ChatError('server', 'Something went wrong', String(error));
      if (answer.content === '') {
        // Nothing came: drop the answer (an earlier version of it, if any, is shown again).
        const index = conversation.messages.findIndex((m) => m.id === answer.id);
        if (index >= 0) conversations.deleteFrom(conversation.id, index);
      } else {
        answer.state = 'error';
      }
      connection.fail({ kind: chatError.kind, message: chatError.message, detail: chatError.detail });
    } finally {
      if (answer.state === 'streaming') answer.state = 'stopped';
      answer.resume = undefined;
      const stats = timer.stats(existing !== undefined);
      if (stats.ttftMs === undefined && answer.stats?.ttftMs !== undefined) stats.ttftMs = answer.stats.ttftMs;
      answer.stats = stats;
      this.running = false;
      this.#abort = null;
      conversations.touch(conversation.id);
      conversations.save();
    }
  }
}
