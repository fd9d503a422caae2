/**
 * Prompt rendering: the whole dialogue as the text the model continues.
 *
 * Either the model's chat template (Jinja, rendered with `add_generation_prompt`) or the
 * original chat page's legacy format: a system line, then `Human: ...` / `Assistant: ...` turns
 * joined with `sep_token`, each finished answer followed by `stop_token` (which is what the
 * session holds after the server stopped on it).
 */
import { Template } from '@huggingface/jinja';
import type { ChatSettings } from '../types/protocol';

export type Role = 'user' | 'assistant';

export interface PromptMessage {
  role: Role;
  content: string;
}

export interface RenderedPrompt {
  /** The text up to where the assistant's next answer starts. */
  text: string;
  stopSequence: string;
  extraStopSequences: string[];
}

export type PromptRenderer = (systemPrompt: string, messages: PromptMessage[]) => RenderedPrompt;

/** Legacy format, as the original page built it. */
export function renderLegacyPrompt(
  chat: Pick<ChatSettings, 'sep_token' | 'stop_token'>,
  systemPrompt: string,
  messages: PromptMessage[],
): string {
  let text = systemPrompt;
  let afterAnswer = false;
  for (const message of messages) {
    if (message.role === 'user') {
      // After an answer the session already ends with the stop token, which separates turns.
      text += `${afterAnswer ? '' : chat.sep_token}Human: ${message.content}`;
      afterAnswer = false;
    } else {
      // The model writes its own leading space after "Assistant:"; keep the answer verbatim.
      text += `${chat.sep_token}Assistant:${message.content}${chat.stop_token}`;
      afterAnswer = true;
    }
  }
  // Separator before the generation prompt, unless the last answer's stop token is there already.
  return `${text}${afterAnswer ? '' : chat.sep_token}Assistant:`;
}

/** Compiles a chat template once; the returned function renders the dialogue with it. */
export function compileChatTemplate(
  template: string,
  chat: Pick<ChatSettings, 'stop_token'>,
): (systemPrompt: string, messages: PromptMessage[]) => string {
  const compiled = new Template(template);
  return (systemPrompt, messages) => {
    const all = systemPrompt.trim()
      ? [{ role: 'system', content: systemPrompt }, ...messages]
      : [...messages];
    return compiled.render({
      messages: all,
      add_generation_prompt: true,
      // The server tokenizes inputs without a BOS token and owns the session's start.
      bos_token: '',
      eos_token: chat.stop_token,
    });
  };
}

/** The renderer for a model's chat settings. */
export function createPromptRenderer(chat: ChatSettings): PromptRenderer {
  const stops = { stopSequence: chat.stop_token, extraStopSequences: [...chat.extra_stop_sequences] };
  if (chat.use_chat_template && chat.chat_template) {
    const render = compileChatTemplate(chat.chat_template, chat);
    return (systemPrompt, messages) => ({ text: render(systemPrompt, messages), ...stops });
  }
  return (systemPrompt, messages) => ({
    text: renderLegacyPrompt(chat, systemPrompt, messages),
    ...stops,
  });
}
