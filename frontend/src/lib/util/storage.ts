/** Key-value persistence behind an interface: localStorage in the browser, a Map in tests. */
export interface KeyValueStorage {
  get(key: string): string | null;
  set(key: string, value: string): void;
  remove(key: string): void;
}

export class MemoryStorage implements KeyValueStorage {
  readonly data = new Map<string, string>();
  get(key: string): string | null {
    return this.data.get(key) ?? null;
  }
  set(key: string, value: string): void {
    this.data.set(key, value);
  }
  remove(key: string): void {
    this.data.delete(key);
  }
}

/** localStorage, tolerating its absence (private modes) and quota errors. */
export function browserStorage(): KeyValueStorage {
  let store: Storage | null = null;
  try {
    store = globalThis.localStorage ?? null;
  } catch {
    store = null;
  }
  if (!store) return new MemoryStorage();
  const ls = store;
  return {
    get: (key) => {
      try {
        return ls.getItem(key);
      } catch {
        return null;
      }
    },
    set: (key, value) => {
      try {
        ls.setItem(key, value);
      } catch {
        // Quota exceeded or storage disabled: the app keeps working without persistence.
      }
    },
    remove: (key) => {
      try {
        ls.removeItem(key);
      } catch {
        // ignore
      }
    },
  };
}

export function readJson<T>(storage: KeyValueStorage, key: string): T | null {
  const raw = storage.get(key);
  if (raw === null) return null;
  try {
    return JSON.parse(raw) as T;
  } catch {
    return null;
  }
}
