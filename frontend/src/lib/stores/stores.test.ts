import { describe, expect, it, vi } from 'vitest';
import { FakeServer, tokens, type Handler } from '../api/fakeSocket.testutil';
import { DEFAULT_CHAT } from '../api/modelsApi';
import type { ModelsResponse } from '../types/protocol';
import { MemoryChatDb } from '../util/chatDb';
import { MemoryStorage } from '../util/storage';
import { createAppState } from './appState';
import { ConnectionStore } from './connection.svelte';
import { ConversationsStore } from './conversations.svelte';
import { SettingsStore } from './settings.svelte';

const CHATML =
  "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

const REGISTRY: ModelsResponse = {
  default: 'smol',
  models: [
    {
      key: 'smol',
      aliases: ['smol-alias'],
      family: 'SmolLM2',
      name: 'SmolLM2 tiny',
      model_card: 'https://example.org/card',
      license: 'https://example.org/license',
      public_api: true,
      ready: true,
      chat: {
        max_session_length: 2048,
        sep_token: '',
        stop_token: '<|im_end|>',
        extra_stop_sequences: [],
        generation_params: { do_sample: 1, temperature: 0.2, top_p: 0.9, max_new_tokens: 64 },
        use_chat_template: true,
        chat_template: CHATML,
        system_prompt: 'Be nice.',
      },
    },
    {
      key: 'legacy',
      aliases: [],
      family: 'Old',
      name: 'Legacy',
      model_card: '',
      license: '',
      public_api: true,
      ready: true,
      chat: { ...DEFAULT_CHAT, system_prompt: 'A chat.' },
    },
  ],
};

const fakeFetch = async () => new Response(JSON.stringify(REGISTRY), { status: 200 });

/** A server that opens sessions and answers each turn with ``count`` frames of one 'x' token, never stopping. */
function xFrames(count: number): Handler {
  return (request) =>
    request.type === 'open_inference_session'
      ? [{ ok: true }]
      : Array.from({ length: count }, () => ({ ok: true, outputs: 'x', stop: false, token_count: 1 }));
}

function setup(handler: Handler, storage = new MemoryStorage(), db = new MemoryChatDb()) {
  const server = new FakeServer(handler);
  const app = createAppState({ storage, db, fetch: fakeFetch, socketUrl: 'ws://t/api/v2/generate', createSocket: server.factory });
  return { app, server, storage, db };
}

/** The page again on the same browser storage, its chats loaded. */
async function reload(handler: Handler, storage: MemoryStorage, db: MemoryChatDb) {
  const again = setup(handler, storage, db);
  await again.app.conversations.load();
  return again;
}

const echo: Handler = (request) =>
  request.type === 'open_inference_session' ? [{ ok: true }] : tokens('Hi', ' there', '<|im_end|>');

describe('ChatController', () => {
  it('sends a turn rendered with the chat template and streams the answer in', async () => {
    const { app, server } = setup(echo);
    await app.models.load();
    app.chat.initModel();
    expect(app.chat.selectedModel).toBe('smol');

    await app.chat.send('Hello');
    const conversation = app.conversations.active!;
    expect(conversation.title).toBe('Hello');
    expect(conversation.messages.map((m) => [m.role, m.content, m.state])).toEqual([
      ['user', 'Hello', 'done'],
      ['assistant', 'Hi there', 'done'],
    ]);
    expect(conversation.messages[1]!.stats?.ttftMs).toBeGreaterThanOrEqual(0); // measured in the page
    expect(conversation.messages[1]!.tokenCount).toBe(3);
    expect(server.generates()[0]).toMatchObject({
      inputs: '<|im_start|>system\nBe nice.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n',
      stop_sequence: '<|im_end|>',
      temperature: 0.2,
      max_new_tokens: 1,
    });

    await app.chat.send('Again');
    // Only the new suffix goes over the same socket.
    expect(server.sockets).toHaveLength(1);
    expect(server.generates()[1]!.inputs).toBe('\n<|im_start|>user\nAgain<|im_end|>\n<|im_start|>assistant\n');
  });

  it('keeps conversations across a reload', async () => {
    const { app, storage, db } = setup(echo);
    await app.models.load();
    app.chat.initModel();
    await app.chat.send('Remember me');

    const reloaded = (await reload(echo, storage, db)).app;
    expect(reloaded.conversations.list).toHaveLength(1);
    expect(reloaded.conversations.active?.messages.map((m) => m.content)).toEqual(['Remember me', 'Hi there']);
  });

  it('a reload mid-answer reattaches to the server and the answer completes', async () => {
    const handler: Handler = (request) => {
      if (request.type === 'open_inference_session') return [{ ok: true, resume_token: 'T' }];
      if (request.type === 'generate') return tokens('Hi').map((f) => ({ ...(f as object), stop: false })); // then silence
      if (request.type === 'reattach') {
        return [
          { ok: true, resume_token: 'T', generating: true, generations: 1 },
          { ok: true, outputs: '', stop: false, token_count: 0, replay: true },
          { ok: true, outputs: 'Hi', stop: false, token_count: 1 },
          { ok: true, outputs: ' there', stop: false, token_count: 1 },
          { ok: true, outputs: '<|im_end|>', stop: true, token_count: 1 },
        ];
      }
      return [];
    };
    const { app, storage, db } = setup(handler);
    await app.models.load();
    app.chat.initModel();
    void app.chat.send('Hello');
    await vi.waitFor(() => expect(app.conversations.active?.messages[1]?.content).toBe('Hi'));
    expect(app.conversations.active?.messages[1]?.resume).toMatchObject({ token: 'T', base: 0, generation: 1 });

    const { app: reloaded, server } = await reload(handler, storage, db);
    await reloaded.models.load();
    reloaded.chat.initModel();
    await reloaded.chat.resumeInterrupted();
    const answer = reloaded.conversations.active!.messages[1]!;
    expect([answer.content, answer.state, answer.tokenCount, answer.resume]).toEqual(['Hi there', 'done', 3, undefined]);
    expect(server.requests.map((r) => r.type)).toEqual(['reattach']);
    app.chat.stop();
  });

  it('Continue goes on with an answer that reached its token limit', async () => {
    const { app, server } = setup(xFrames(70));
    await app.models.load();
    app.chat.initModel();
    await app.chat.send('Count');
    const answer = app.conversations.active!.messages[1]!;
    expect([answer.content.length, answer.limited]).toEqual([64, true]);

    await app.chat.continueAnswer();
    expect(app.conversations.active!.messages).toHaveLength(2);
    expect([answer.content.length, answer.tokenCount, answer.limited]).toEqual([128, 128, true]);
    expect(server.generates()[1]!.inputs).toMatch(/<\|im_start\|>assistant\nx{64}$/);
  });

  it('switching model starts a new dialogue', async () => {
    const { app, server } = setup(echo);
    await app.models.load();
    app.chat.initModel();
    await app.chat.send('One');
    const first = app.conversations.activeId;
    await app.chat.selectModel('legacy');
    expect(app.conversations.activeId).not.toBe(first);
    expect(app.conversations.active?.model).toBe('legacy');
    expect(app.conversations.active?.messages).toEqual([]);
    server.handler = (r) => (r.type === 'open_inference_session' ? [{ ok: true }] : tokens(' ok', '###'));
    await app.chat.send('Two');
    expect(server.generates().at(-1)!.inputs).toBe('A chat.###Human: Two###Assistant:');
    expect(server.opens().at(-1)!.model).toBe('legacy');
  });

  it('shows out-of-capacity errors and retry answers again', async () => {
    let fail = true;
    const { app } = setup((request) => {
      if (request.type === 'open_inference_session') return [{ ok: true }];
      if (fail) {
        fail = false;
        return [{ ok: false, code: 'cache_full', traceback: 'The swarm is out of capacity: attention cache is full' }];
      }
      return tokens('Fine', '<|im_end|>');
    });
    await app.models.load();
    app.chat.initModel();
    await app.chat.send('Q');
    expect(app.connection.error?.kind).toBe('capacity');
    expect(app.connection.state).toBe('error');
    expect(app.conversations.active?.messages).toHaveLength(1);

    await app.chat.retry();
    expect(app.connection.error).toBeNull();
    expect(app.conversations.active?.messages.at(-1)?.content).toBe('Fine');
  });

  it('stop keeps the partial answer; the next turn resends the whole context', async () => {
    const { app, server } = setup(xFrames(40));
    await app.models.load();
    app.chat.initModel();
    const pending = app.chat.send('Long one');
    await new Promise((r) => setTimeout(r, 15));
    app.chat.stop();
    await pending;
    const answer = app.conversations.active!.messages[1]!;
    expect(answer.state).toBe('stopped');
    expect(answer.content.length).toBeGreaterThan(0);
    expect(app.chat.running).toBe(false);

    server.handler = echo;
    await app.chat.send('Next');
    expect(server.sockets).toHaveLength(2);
    expect(server.generates().at(-1)!.inputs).toContain('<|im_start|>user\nLong one');
    expect(app.conversations.active!.messages.at(-1)!.content).toBe('Hi there');
  });

  it('regenerates the last answer and edits a previous message', async () => {
    let n = 0;
    const { app, server } = setup((request) => {
      if (request.type === 'open_inference_session') return [{ ok: true }];
      n++;
      return tokens(`A${n}`, '<|im_end|>');
    });
    await app.models.load();
    app.chat.initModel();
    await app.chat.send('first');
    await app.chat.send('second');
    await app.chat.regenerate();
    const messages = () => app.conversations.active!.messages.map((m) => m.content);
    expect(messages()).toEqual(['first', 'A1', 'second', 'A3']);

    const firstId = app.conversations.active!.messages[0]!.id;
    await app.chat.editAndResend(firstId, 'edited');
    expect(messages()).toEqual(['edited', 'A4']);
    expect(app.conversations.active!.title).toBe('edited');
    expect(server.generates().at(-1)!.inputs).toContain('<|im_start|>user\nedited<|im_end|>');
  });

  it('keeps every version: regenerate any answer, edit, navigate, delete; a failed answer brings the old one back', async () => {
    let n = 0;
    let fail = false;
    const { app, storage, db } = setup((request) => {
      if (request.type === 'open_inference_session') return [{ ok: true }];
      if (fail) return [{ ok: false, code: 'swarm_error', traceback: 'Swarm error' }];
      n++;
      return tokens(`A${n}`, '<|im_end|>');
    });
    await app.models.load();
    app.chat.initModel();
    await app.chat.send('first');
    await app.chat.send('second');
    const conversation = app.conversations.active!;
    const contents = () => conversation.messages.map((m) => m.content);

    await app.chat.regenerate(conversation.messages[1]!.id); // not the last answer
    expect(contents()).toEqual(['first', 'A3']);
    app.chat.showVersion(conversation.messages[1]!.id, 0);
    expect(contents()).toEqual(['first', 'A1', 'second', 'A2']);

    await app.chat.editAndResend(conversation.messages[2]!.id, 'second, edited');
    expect(contents()).toEqual(['first', 'A1', 'second, edited', 'A4']);
    app.chat.showVersion(conversation.messages[2]!.id, 0);
    expect(contents()).toEqual(['first', 'A1', 'second', 'A2']);

    fail = true;
    await app.chat.regenerate();
    expect(contents()).toEqual(['first', 'A1', 'second', 'A2']);
    app.connection.clearError();

    await app.chat.deleteMessage(conversation.messages[2]!.id); // this version goes, the other one shows
    expect(contents()).toEqual(['first', 'A1', 'second, edited', 'A4']);

    // versions survive a reload
    const reloaded = (await reload(() => [], storage, db)).app;
    expect(reloaded.conversations.active!.messages[1]!.branch?.tails).toHaveLength(2);
  });

  it('uses the settings overrides and the model defaults', async () => {
    const { app, server } = setup(echo);
    await app.models.load();
    app.chat.initModel();
    app.settings.setParam('temperature', 0.9);
    app.settings.setParam('top_k', 40);
    app.settings.setSystemPrompt('Custom');
    await app.chat.send('x');
    expect(server.generates()[0]).toMatchObject({ temperature: 0.9, top_k: 40, top_p: 0.9 });
    expect(server.generates()[0]!.inputs).toContain('system\nCustom');
  });
});

describe('ConversationsStore', () => {
  it('creates, renames, deletes and orders by last activity', () => {
    let t = 0;
    const store = new ConversationsStore(new MemoryChatDb(), null, () => ++t);
    const a = store.create('m');
    const b = store.create('m');
    expect(store.activeId).toBe(b.id);
    store.addMessage(a.id, { role: 'user', content: 'hello   world', state: 'done' });
    expect(store.sorted[0]!.id).toBe(a.id);
    expect(store.get(a.id)!.title).toBe('hello world');
    store.rename(a.id, '  My chat ');
    expect(store.get(a.id)!.title).toBe('My chat');
    store.remove(b.id);
    expect(store.list.map((c) => c.id)).toEqual([a.id]);
    expect(store.activeId).toBe(a.id);
  });

  it('moves chats kept in localStorage to the database; an answer streaming at reload is stopped; garbage is ignored', async () => {
    const storage = new MemoryStorage();
    storage.set(
      'petals-chat:conversations:v1',
      JSON.stringify({
        activeId: 'c1',
        conversations: [
          { id: 'c1', title: 't', model: 'm', createdAt: 1, updatedAt: 1, messages: [{ id: 'x', role: 'assistant', content: 'par', state: 'streaming' }] },
          { nonsense: true },
        ],
      }),
    );
    const db = new MemoryChatDb();
    const store = new ConversationsStore(db, storage);
    await store.load();
    expect(store.list).toHaveLength(1);
    expect(store.active?.messages[0]?.state).toBe('stopped');
    expect(storage.get('petals-chat:conversations:v1')).toBeNull();
    expect(db.data?.conversations.map((c) => c.id)).toEqual(['c1']);

    const again = new ConversationsStore(db, storage);
    await again.load();
    expect(again.list.map((c) => c.id)).toEqual(['c1']);
    const empty = new ConversationsStore(new MemoryChatDb(), new MemoryStorage());
    await empty.load();
    expect(empty.list).toEqual([]);
  });
});

describe('ConversationsStore search and import', () => {
  it('finds chats by title and text; imports chats, renaming ids that are taken', async () => {
    const db = new MemoryChatDb();
    const store = new ConversationsStore(db);
    const a = store.create('m');
    store.addMessage(a.id, { role: 'user', content: 'Lighthouse keepers', state: 'done' });
    store.addMessage(a.id, { role: 'assistant', content: 'They keep the LAMP lit.', state: 'done' });
    const b = store.create('m');
    store.addMessage(b.id, { role: 'user', content: 'Recipes', state: 'done' });
    expect(store.search('lamp').map((c) => c.id)).toEqual([a.id]);
    expect(store.search('lighthouse lit').map((c) => c.id)).toEqual([a.id]);
    expect(store.search('recipes lamp')).toEqual([]);
    expect(store.search('  ')).toHaveLength(2);

    const copy = JSON.parse(JSON.stringify(store.get(a.id)!));
    expect(store.importConversations([copy, { ...copy, id: 'new-one' }])).toBe(2);
    expect(store.list).toHaveLength(4);
    expect(new Set(store.list.map((c) => c.id)).size).toBe(4);
    await store.flushed();
    expect(db.data?.conversations).toHaveLength(4);
  });
});

describe('SettingsStore', () => {
  it('falls back to the model defaults and persists overrides', () => {
    const storage = new MemoryStorage();
    const settings = new SettingsStore(storage);
    const model = REGISTRY.models[0]!;
    expect(settings.effectiveParams(model)).toEqual({
      sampling: { do_sample: 1, temperature: 0.2, top_p: 0.9 },
      maxNewTokens: 64,
    });
    settings.setParam('max_new_tokens', 10);
    settings.setTheme('dark');
    const again = new SettingsStore(storage);
    expect(again.effectiveParams(model).maxNewTokens).toBe(10);
    expect(again.theme).toBe('dark');
    again.resetToDefaults();
    expect(again.effectiveParams(model).maxNewTokens).toBe(64);
    expect(again.effectiveSystemPrompt(model)).toBe('Be nice.');
  });
});

describe('Presets and a system prompt per chat', () => {
  it('offers the defaults, the registry presets and the user own; applies and persists them', async () => {
    const storage = new MemoryStorage();
    const settings = new SettingsStore(storage);
    const model = {
      ...REGISTRY.models[0]!,
      chat: { ...REGISTRY.models[0]!.chat, presets: { Precise: { temperature: 0.1, system_prompt: 'Be brief.' } } },
    };
    expect(settings.presetsFor(model).map((p) => [p.name, p.source])).toEqual([
      ['Model defaults', 'default'],
      ['Precise', 'model'],
    ]);
    settings.applyPreset(settings.presetsFor(model)[1]!);
    expect(settings.effectiveParams(model).sampling.temperature).toBe(0.1);
    expect(settings.effectiveSystemPrompt(model)).toBe('Be brief.');

    settings.setParam('top_k', 5);
    settings.savePreset(model.key, ' Mine ');
    settings.applyPreset(settings.presetsFor(model)[0]!);
    expect(settings.effectiveParams(model).sampling.temperature).toBe(0.2);
    expect(settings.effectiveSystemPrompt(model)).toBe('Be nice.');

    const again = new SettingsStore(storage);
    const mine = again.presetsFor(model).find((p) => p.name === 'Mine')!;
    expect(mine).toEqual({ name: 'Mine', params: { temperature: 0.1, top_k: 5 }, systemPrompt: 'Be brief.', source: 'user' });
    again.deletePreset(model.key, 'Mine');
    expect(again.presetsFor(model)).toHaveLength(2);
  });

  it("sends the chat's own system prompt", async () => {
    const { app, server } = setup(echo);
    await app.models.load();
    app.chat.initModel();
    const conversation = app.conversations.create('smol');
    app.conversations.setSystemPrompt(conversation.id, 'Talk like a pirate.');
    await app.chat.send('Hello');
    expect(server.generates()[0]!.inputs).toContain('<|im_start|>system\nTalk like a pirate.<|im_end|>');
    app.conversations.setSystemPrompt(conversation.id, '  ');
    expect(app.conversations.active!.systemPrompt).toBeUndefined();
  });
});

describe('ConnectionStore', () => {
  it('computes tokens per second from the first token on', () => {
    let now = 0;
    const store = new ConnectionStore(() => now);
    store.beginAnswer();
    store.recordTokens(1);
    now = 1000;
    store.recordTokens(11);
    expect(store.tokensPerSecond).toBe(10);
  });
});

describe('The route and the context gauge', () => {
  const route = [{ peer_id: '12D3KooWaaaaaaAAAAAA', start: 0, end: 30 }];

  it("keeps the last frame's route and context size on the answer", async () => {
    const handler: Handler = (request) =>
      request.type === 'open_inference_session'
        ? [{ ok: true }]
        : [
            { ok: true, outputs: 'Hi', stop: false, token_count: 1 },
            { ok: true, outputs: '<|im_end|>', stop: true, token_count: 1, route, context_tokens: 37 },
          ];
    const { app } = setup(handler);
    await app.models.load();
    app.chat.initModel();
    await app.chat.send('Hello');
    const answer = app.conversations.active!.messages[1]!;
    expect(answer.route).toEqual(route);
    expect(answer.contextTokens).toBe(37);
  });

  it('an answer the page cuts at its token limit counts from the first frame', async () => {
    const handler: Handler = (request) =>
      request.type === 'open_inference_session'
        ? [{ ok: true }]
        : [
            { ok: true, outputs: 'a', stop: false, token_count: 1, route, context_tokens: 10 },
            ...Array.from({ length: 5 }, () => ({ ok: true, outputs: 'b', stop: false, token_count: 1 })),
          ];
    const { app } = setup(handler);
    await app.models.load();
    app.chat.initModel();
    app.settings.setParam('max_new_tokens', 4);
    await app.chat.send('Hello');
    const answer = app.conversations.active!.messages[1]!;
    expect(answer).toMatchObject({ content: 'abbb', limited: true, route, contextTokens: 13 });
  });

  it('a full chat drops its oldest turns and goes on', async () => {
    const handler: Handler = (request, socket) => {
      if (request.type === 'open_inference_session') return [{ ok: true }];
      if (request.type !== 'generate') return [];
      // the session holds the first turn, and the third comes: over any session's max_length
      const holdsFirst = socket.sent.some((r) => r.type === 'generate' && r.inputs?.includes('first'));
      if (holdsFirst && request.inputs?.includes('third')) {
        return [{ ok: false, traceback: 'Maximum length exceeded', code: 'max_length_exceeded' }];
      }
      return [{ ok: true, outputs: 'ok<|im_end|>', stop: true, token_count: 2, context_tokens: 1900 }];
    };
    const { app, server } = setup(handler);
    await app.models.load();
    app.chat.initModel();
    await app.chat.send(`first ${'a'.repeat(100)}`);
    await app.chat.send(`second ${'b'.repeat(100)}`);
    await app.chat.send(`third ${'c'.repeat(100)}`);
    expect(app.connection.error?.kind).toBe('context_too_long');
    const before = server.generates().length;

    await app.chat.dropOldestTurns();
    const messages = app.conversations.active!.messages;
    expect(app.connection.error).toBeNull();
    expect(messages[0]?.content.startsWith('first')).toBe(false);
    expect(messages.at(-2)?.content.startsWith('third')).toBe(true);
    expect(messages.at(-1)).toMatchObject({ role: 'assistant', content: 'ok', state: 'done' });
    expect(server.generates().slice(before).some((g) => g.inputs?.includes('first'))).toBe(false);
  });
});
