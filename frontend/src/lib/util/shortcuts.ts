/** The page's keyboard shortcuts (a pure mapping, so it can be unit tested). */
export type ShortcutAction = 'search' | 'new-chat' | 'stop';

export interface KeyLike {
  key: string;
  ctrlKey: boolean;
  metaKey: boolean;
  shiftKey: boolean;
  altKey: boolean;
}

/** Ctrl/Cmd+K: search; Ctrl/Cmd+Shift+O: new chat; Escape: stop the answer (while one streams). */
export function shortcutFor(event: KeyLike, generating: boolean): ShortcutAction | null {
  const mod = event.ctrlKey || event.metaKey;
  const key = event.key.toLowerCase();
  if (mod && !event.shiftKey && !event.altKey && key === 'k') return 'search';
  if (mod && event.shiftKey && !event.altKey && key === 'o') return 'new-chat';
  if (event.key === 'Escape' && generating) return 'stop';
  return null;
}

export const SHORTCUT_HELP = 'Ctrl+K search · Ctrl+Shift+O new chat · Esc stop';
