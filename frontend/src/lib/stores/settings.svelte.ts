import type { SamplingParams } from '../types/protocol';
import type { ModelInfo } from '../types/protocol';
import type { ThemePreference } from '../types/chat';
import { readJson, type KeyValueStorage } from '../util/storage';

export const PARAM_KEYS = ['temperature', 'top_p', 'top_k', 'repetition_penalty', 'max_new_tokens'] as const;
export type ParamKey = (typeof PARAM_KEYS)[number];

export interface EffectiveParams {
  sampling: SamplingParams;
  maxNewTokens: number;
}

const STORAGE_KEY = 'petals-chat:settings:v1';
export const DEFAULT_MAX_NEW_TOKENS = 512;

interface Persisted {
  overrides?: Partial<Record<ParamKey, number>>;
  systemPrompt?: string | null;
  theme?: ThemePreference;
}

/**
 * User settings: the system prompt and generation parameters as overrides of the selected
 * model's defaults (`chat.generation_params`), and the theme.
 */
export class SettingsStore {
  overrides = $state<Partial<Record<ParamKey, number>>>({});
  /** null: the model's own system prompt. */
  systemPrompt = $state<string | null>(null);
  theme = $state<ThemePreference>('system');

  readonly #storage: KeyValueStorage;

  constructor(storage: KeyValueStorage) {
    this.#storage = storage;
    const saved = readJson<Persisted>(storage, STORAGE_KEY);
    if (saved) {
      for (const key of PARAM_KEYS) {
        const value = saved.overrides?.[key];
        if (typeof value === 'number' && Number.isFinite(value)) this.overrides[key] = value;
      }
      if (typeof saved.systemPrompt === 'string') this.systemPrompt = saved.systemPrompt;
      if (saved.theme === 'light' || saved.theme === 'dark' || saved.theme === 'system') this.theme = saved.theme;
    }
  }

  /** The model's default for a parameter (what the field shows when not overridden). */
  defaultParam(model: ModelInfo | undefined, key: ParamKey): number | undefined {
    const gp = model?.chat.generation_params ?? {};
    const value = gp[key];
    if (typeof value === 'number') return value;
    if (key === 'max_new_tokens') return DEFAULT_MAX_NEW_TOKENS;
    return undefined;
  }

  param(model: ModelInfo | undefined, key: ParamKey): number | undefined {
    return this.overrides[key] ?? this.defaultParam(model, key);
  }

  effectiveParams(model: ModelInfo | undefined): EffectiveParams {
    const gp = model?.chat.generation_params ?? {};
    const sampling: SamplingParams = {};
    const doSample = gp.do_sample ?? 1;
    sampling.do_sample = typeof doSample === 'boolean' ? (doSample ? 1 : 0) : doSample;
    for (const key of ['temperature', 'top_p', 'top_k', 'repetition_penalty'] as const) {
      const value = this.param(model, key);
      if (value !== undefined) sampling[key] = value;
    }
    return { sampling, maxNewTokens: this.param(model, 'max_new_tokens') ?? DEFAULT_MAX_NEW_TOKENS };
  }

  effectiveSystemPrompt(model: ModelInfo | undefined): string {
    return this.systemPrompt ?? model?.chat.system_prompt ?? '';
  }

  setParam(key: ParamKey, value: number | null): void {
    if (value === null || !Number.isFinite(value)) delete this.overrides[key];
    else this.overrides[key] = value;
    this.#save();
  }

  setSystemPrompt(value: string | null): void {
    this.systemPrompt = value;
    this.#save();
  }

  setTheme(theme: ThemePreference): void {
    this.theme = theme;
    this.#save();
  }

  resetToDefaults(): void {
    this.overrides = {};
    this.systemPrompt = null;
    this.#save();
  }

  #save(): void {
    const data: Persisted = {
      overrides: $state.snapshot(this.overrides),
      systemPrompt: this.systemPrompt,
      theme: this.theme,
    };
    this.#storage.set(STORAGE_KEY, JSON.stringify(data));
  }
}
