import { describe, expect, it } from 'vitest';
import { DEFAULT_CHAT } from '../api/modelsApi';
import type { ChatSettings } from '../types/protocol';
import { createPromptRenderer, renderLegacyPrompt, type PromptMessage } from './prompt';

const CHATML =
  "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

function settings(extra: Partial<ChatSettings> = {}): ChatSettings {
  return { ...DEFAULT_CHAT, system_prompt: 'A chat.', ...extra };
}

const dialogue: PromptMessage[] = [
  { role: 'user', content: 'Hi' },
  { role: 'assistant', content: ' Hello!' },
  { role: 'user', content: 'How are you?' },
];

describe('legacy prompt format', () => {
  it('renders the first turn', () => {
    expect(renderLegacyPrompt(settings(), 'A chat.', [{ role: 'user', content: 'Hi' }])).toBe(
      'A chat.###Human: Hi###Assistant:',
    );
  });

  it('renders several turns; each answer is followed by the stop token', () => {
    expect(renderLegacyPrompt(settings(), 'A chat.', dialogue)).toBe(
      'A chat.###Human: Hi###Assistant: Hello!###Human: How are you?###Assistant:',
    );
  });

  it('uses sep_token between turns and stop_token after answers when they differ', () => {
    const chat = settings({ sep_token: '\n', stop_token: '</s>' });
    expect(renderLegacyPrompt(chat, 'S', dialogue)).toBe(
      'S\nHuman: Hi\nAssistant: Hello!</s>Human: How are you?\nAssistant:',
    );
  });

  it('each rendering extends the previous one plus the answer and stop token', () => {
    const chat = settings();
    const first = renderLegacyPrompt(chat, 'S', dialogue.slice(0, 1));
    const second = renderLegacyPrompt(chat, 'S', dialogue);
    expect(second.startsWith(`${first} Hello!${chat.stop_token}`)).toBe(true);
  });

  it('gives the stop sequences of the model', () => {
    const rendered = createPromptRenderer(settings())('S', dialogue);
    expect(rendered.stopSequence).toBe('###');
    expect(rendered.extraStopSequences).toEqual(['</s>']);
  });
});

describe('chat template (ChatML)', () => {
  const chat = settings({
    use_chat_template: true,
    chat_template: CHATML,
    stop_token: '<|im_end|>',
    extra_stop_sequences: [],
  });
  const render = createPromptRenderer(chat);

  it('renders the system message, the turns and the generation prompt', () => {
    expect(render('Be brief.', dialogue).text).toBe(
      '<|im_start|>system\nBe brief.<|im_end|>\n' +
        '<|im_start|>user\nHi<|im_end|>\n' +
        '<|im_start|>assistant\n Hello!<|im_end|>\n' +
        '<|im_start|>user\nHow are you?<|im_end|>\n' +
        '<|im_start|>assistant\n',
    );
  });

  it("falls back to the template's own system message when the system prompt is empty", () => {
    expect(render('', dialogue.slice(0, 1)).text).toContain('named SmolLM');
  });

  it('a later rendering extends the session text (prompt + answer + stop sequence)', () => {
    const first = render('S', dialogue.slice(0, 1)).text;
    const second = render('S', dialogue).text;
    expect(second.startsWith(`${first} Hello!<|im_end|>`)).toBe(true);
    expect(render('S', dialogue).stopSequence).toBe('<|im_end|>');
  });

  it('user text is data, not template code', () => {
    const text = render('S', [{ role: 'user', content: '{{ 7*7 }}{% if true %}x{% endif %}' }]).text;
    expect(text).toContain('{{ 7*7 }}{% if true %}x{% endif %}');
  });

  it('uses the legacy format when use_chat_template is false', () => {
    const legacy = createPromptRenderer({ ...chat, use_chat_template: false, sep_token: '###', stop_token: '###' });
    expect(legacy('S', dialogue.slice(0, 1)).text).toBe('S###Human: Hi###Assistant:');
  });
});
