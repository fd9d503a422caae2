import type { ChatSettings, ModelInfo, ModelsResponse } from '../types/protocol';

export const MODELS_PATH = '/api/v1/models';

/** The original chat page's defaults, used where the registry leaves a field out. */
export const DEFAULT_CHAT: ChatSettings = {
  max_session_length: 8192,
  sep_token: '###',
  stop_token: '###',
  extra_stop_sequences: ['</s>'],
  generation_params: { do_sample: 1, temperature: 0.6, top_p: 0.9 },
  use_chat_template: false,
  chat_template: null,
  system_prompt:
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions.",
};

function str(value: unknown, fallback: string): string {
  return typeof value === 'string' ? value : fallback;
}

function normalizeChat(raw: unknown): ChatSettings {
  const c = (typeof raw === 'object' && raw !== null ? raw : {}) as Partial<ChatSettings>;
  return {
    max_session_length:
      typeof c.max_session_length === 'number' && c.max_session_length > 0
        ? c.max_session_length
        : DEFAULT_CHAT.max_session_length,
    sep_token: str(c.sep_token, DEFAULT_CHAT.sep_token),
    stop_token: str(c.stop_token, DEFAULT_CHAT.stop_token),
    extra_stop_sequences: Array.isArray(c.extra_stop_sequences)
      ? c.extra_stop_sequences.filter((s): s is string => typeof s === 'string' && s !== '')
      : [...DEFAULT_CHAT.extra_stop_sequences],
    generation_params:
      typeof c.generation_params === 'object' && c.generation_params !== null
        ? { ...c.generation_params }
        : { ...DEFAULT_CHAT.generation_params },
    use_chat_template: c.use_chat_template === true && typeof c.chat_template === 'string',
    chat_template: typeof c.chat_template === 'string' ? c.chat_template : null,
    system_prompt: str(c.system_prompt, DEFAULT_CHAT.system_prompt),
  };
}

function normalizeModel(raw: unknown): ModelInfo | null {
  if (typeof raw !== 'object' || raw === null) return null;
  const m = raw as Partial<ModelInfo>;
  if (typeof m.key !== 'string' || m.key === '') return null;
  return {
    key: m.key,
    aliases: Array.isArray(m.aliases) ? m.aliases.filter((a) => typeof a === 'string') : [],
    family: str(m.family, 'Other'),
    name: str(m.name, m.key),
    model_card: str(m.model_card, ''),
    license: str(m.license, ''),
    public_api: m.public_api !== false,
    ready: m.ready !== false,
    chat: normalizeChat(m.chat),
  };
}

/** Validates the registry answer, filling in the original's defaults for missing chat fields. */
export function parseModelsResponse(raw: unknown): ModelsResponse {
  if (typeof raw !== 'object' || raw === null || !Array.isArray((raw as ModelsResponse).models)) {
    throw new Error('The model list has an unexpected shape');
  }
  const body = raw as { default?: unknown; models: unknown[] };
  const models = body.models.map(normalizeModel).filter((m): m is ModelInfo => m !== null);
  const first = models[0];
  const fallback = first ? first.key : '';
  const def = typeof body.default === 'string' && models.some((m) => m.key === body.default);
  return { default: def ? (body.default as string) : fallback, models };
}

export type FetchLike = (input: string, init?: RequestInit) => Promise<Response>;

export async function fetchModels(fetchFn: FetchLike, signal?: AbortSignal): Promise<ModelsResponse> {
  const response = await fetchFn(MODELS_PATH, { headers: { Accept: 'application/json' }, signal });
  if (!response.ok) throw new Error(`Could not load the model list (HTTP ${response.status})`);
  return parseModelsResponse(await response.json());
}
