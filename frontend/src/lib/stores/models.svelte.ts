import { fetchModels, type FetchLike } from '../api/modelsApi';
import type { ModelInfo } from '../types/protocol';

export interface ModelFamily {
  name: string;
  models: ModelInfo[];
}

/** The model registry from `GET /api/v1/models`. */
export class ModelsStore {
  models = $state<ModelInfo[]>([]);
  defaultKey = $state('');
  status = $state<'loading' | 'ready' | 'error'>('loading');
  error = $state('');

  readonly families: ModelFamily[] = $derived.by(() => {
    const byName = new Map<string, ModelInfo[]>();
    for (const model of this.models) {
      const list = byName.get(model.family) ?? [];
      list.push(model);
      byName.set(model.family, list);
    }
    return [...byName].map(([name, models]) => ({ name, models }));
  });

  readonly #fetch: FetchLike;

  constructor(fetchFn: FetchLike) {
    this.#fetch = fetchFn;
  }

  /** A model by key or alias. */
  get(key: string): ModelInfo | undefined {
    return this.models.find((m) => m.key === key) ?? this.models.find((m) => m.aliases.includes(key));
  }

  async load(): Promise<void> {
    this.status = 'loading';
    this.error = '';
    try {
      const response = await fetchModels(this.#fetch);
      this.models = response.models;
      this.defaultKey = response.default;
      this.status = 'ready';
    } catch (error) {
      this.status = 'error';
      this.error = error instanceof Error ? error.message : String(error);
    }
  }
}
