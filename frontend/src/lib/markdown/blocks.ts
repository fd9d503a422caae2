/**
 * Splits Markdown source into top-level blocks (at blank lines outside code fences), so that
 * finished blocks can be memoized while an answer streams, and repairs the half-typed last block.
 */

const FENCE_OPEN = /^ {0,3}(`{3,}|~{3,})/;

export interface SourceBlock {
  text: string;
  /** The fence that is still open at the end of this block, e.g. "```" (only the last block). */
  openFence: string | null;
}

export function splitBlocks(source: string): SourceBlock[] {
  const lines = source.split('\n');
  const blocks: SourceBlock[] = [];
  let current: string[] = [];
  let fence: string | null = null;

  const flush = () => {
    if (current.some((l) => l.trim() !== '')) blocks.push({ text: current.join('\n'), openFence: null });
    current = [];
  };

  for (let i = 0; i < lines.length; i++) {
    const line = lines[i] ?? '';
    if (fence) {
      current.push(line);
      const closing = line.trim();
      if (closing.startsWith(fence) && closing.replaceAll(fence[0] ?? '`', '') === '') fence = null;
      continue;
    }
    const open = FENCE_OPEN.exec(line);
    if (open) {
      fence = open[1] ?? '```';
      current.push(line);
      continue;
    }
    if (line.trim() === '') {
      // A blank line ends a block unless the next line continues it (indented: list item, code).
      const next = lines[i + 1];
      if (next !== undefined && /^\s+\S/.test(next)) {
        current.push(line);
        continue;
      }
      flush();
      continue;
    }
    current.push(line);
  }
  const last = current.some((l) => l.trim() !== '') ? { text: current.join('\n'), openFence: fence } : null;
  if (last) blocks.push(last);
  return blocks;
}

/** Closes what streaming left open, so the partial block renders as it will when finished. */
export function repairBlock(block: SourceBlock): string {
  if (block.openFence) return `${block.text}\n${block.openFence}`;
  return block.text;
}
