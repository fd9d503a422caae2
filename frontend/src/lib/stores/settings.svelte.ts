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

/** A named set of parameter overrides and optionally a system prompt. */
export interface Preset {
  name: string;
  params: Partial<Record<ParamKey, number>>;
  /** Unset: the model's own system prompt. */
  systemPrompt?: string;
  /** Where it comes from: the page ('default'), the model registry, or the user. */
  source: 'default' | 'model' | 'user';
}

interface Persisted {
  overrides?: Partial<Record<ParamKey, number>>;
  systemPrompt?: string | null;
  theme?: ThemePreference;
  presets?: Record<string, Preset[]>;
}

function numbersOnly(params: Record<string, unknown>): Partial<Record<ParamKey, number>> {
  const out: Partial<Record<ParamKey, number>> = {};
  for (const key of PARAM_KEYS) {
    const value = params[key];
    if (typeof value === 'number' && Number.isFinite(value)) out[key] = value;
  }
  return out;
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
  /** The user's own presets, by model key. */
  userPresets = $state<Record<string, Preset[]>>({});

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
      for (const [model, presets] of Object.entries(saved.presets ?? {})) {
        if (!Array.isArray(presets)) continue;
        this.userPresets[model] = presets
          .filter((p) => typeof p?.name === 'string' && typeof p.params === 'object' && p.params !== null)
          .map((p) => ({
            name: p.name,
            params: numbersOnly(p.params),
            ...(typeof p.systemPrompt === 'string' ? { systemPrompt: p.systemPrompt } : {}),
            source: 'user' as const,
          }));
      }
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

  /** The model's defaults, the registry's presets for it, then the user's own. */
  presetsFor(model: ModelInfo | undefined): Preset[] {
    const defaults: Preset = { name: 'Model defaults', params: {}, source: 'default' };
    const fromModel = Object.entries(model?.chat.presets ?? {}).map(([name, p]): Preset => ({
      name,
      params: numbersOnly(p),
      ...(typeof p.system_prompt === 'string' ? { systemPrompt: p.system_prompt } : {}),
      source: 'model',
    }));
    return [defaults, ...fromModel, ...(model ? (this.userPresets[model.key] ?? []) : [])];
  }

  /** Takes a preset's parameters (the others: the model's defaults) and system prompt. */
  applyPreset(preset: Preset): void {
    this.overrides = { ...preset.params };
    this.systemPrompt = preset.systemPrompt ?? null;
    this.#save();
  }

  /** Saves the current parameters and system prompt as a preset of this model (replacing one of that name). */
  savePreset(modelKey: string, name: string): void {
    const clean = name.trim();
    if (!clean) return;
    const preset: Preset = {
      name: clean,
      params: $state.snapshot(this.overrides),
      ...(this.systemPrompt !== null ? { systemPrompt: this.systemPrompt } : {}),
      source: 'user',
    };
    const others = (this.userPresets[modelKey] ?? []).filter((p) => p.name !== clean);
    this.userPresets[modelKey] = [...others, preset];
    this.#save();
  }

  deletePreset(modelKey: string, name: string): void {
    this.userPresets[modelKey] = (this.userPresets[modelKey] ?? []).filter((p) => p.name !== name);
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
      presets: $state.snapshot(this.userPresets),
    };
    this.#storage.set(STORAGE_KEY, JSON.stringify(data));
  }
}
