/**
 * Markdown to safe HTML segments.
 *
 * Raw HTML in the source is escaped (markdown-it `html: false`), only http/https/mailto links
 * survive, images are not rendered (no remote requests from model output), and code blocks come
 * out as separate segments that a component renders with a copy button.
 */
import MarkdownItFactory, { type MarkdownIt, type Token } from 'markdown-it';
import { repairBlock, splitBlocks } from './blocks';
import { highlightCode } from './highlight';

export type SegmentBody =
  | { kind: 'html'; html: string }
  | { kind: 'code'; lang: string; code: string; highlighted: string | null };

export type Segment = SegmentBody & { key: string };

const SAFE_LINK = /^(https?:|mailto:)/i;

export function isSafeLink(url: string): boolean {
  return SAFE_LINK.test(url.trim());
}

export function createMarkdownIt(): MarkdownIt {
  const md = new MarkdownItFactory({ html: false, linkify: true, typographer: false, breaks: true });
  md.disable(['image']);
  md.validateLink = isSafeLink;
  const defaultLinkOpen =
    md.renderer.rules.link_open ?? ((tokens, idx, options, _env, self) => self.renderToken(tokens, idx, options));
  md.renderer.rules.link_open = (tokens, idx, options, env, self) => {
    const token = tokens[idx];
    if (token) {
      token.attrSet('target', '_blank');
      token.attrSet('rel', 'noopener noreferrer nofollow');
    }
    return defaultLinkOpen(tokens, idx, options, env, self);
  };
  return md;
}

const CACHE_LIMIT = 500;

/** Renders Markdown, memoizing finished blocks so only the streaming block is re-rendered. */
export class MarkdownRenderer {
  readonly #md: MarkdownIt;
  readonly #cache = new Map<string, SegmentBody[]>();

  constructor(md: MarkdownIt = createMarkdownIt()) {
    this.#md = md;
  }

  render(source: string, streaming = false): Segment[] {
    const blocks = splitBlocks(source);
    const segments: Segment[] = [];
    blocks.forEach((block, index) => {
      const isLast = index === blocks.length - 1;
      const text = streaming && isLast ? repairBlock(block) : block.text;
      // The last block of a streaming answer is still changing: do not cache it.
      const parts = streaming && isLast ? this.#renderBlock(text) : this.#cached(text);
      parts.forEach((part, j) => segments.push({ ...part, key: `${index}:${j}` }));
    });
    return segments;
  }

  get cacheSize(): number {
    return this.#cache.size;
  }

  #cached(text: string): SegmentBody[] {
    const hit = this.#cache.get(text);
    if (hit) {
      this.#cache.delete(text);
      this.#cache.set(text, hit);
      return hit;
    }
    const parts = this.#renderBlock(text);
    this.#cache.set(text, parts);
    if (this.#cache.size > CACHE_LIMIT) {
      const oldest = this.#cache.keys().next().value;
      if (oldest !== undefined) this.#cache.delete(oldest);
    }
    return parts;
  }

  #renderBlock(text: string): SegmentBody[] {
    const env = {};
    const tokens = this.#md.parse(text, env);
    const parts: SegmentBody[] = [];
    let group: Token[] = [];
    const flush = () => {
      if (group.length) parts.push({ kind: 'html', html: this.#md.renderer.render(group, this.#md.options, env) });
      group = [];
    };
    for (const token of tokens) {
      if (token.level === 0 && (token.type === 'fence' || token.type === 'code_block')) {
        flush();
        const lang = token.info.trim().split(/\s+/)[0] ?? '';
        const code = token.content.replace(/\n$/, '');
        parts.push({ kind: 'code', lang, code, highlighted: highlightCode(code, lang) });
      } else {
        group.push(token);
      }
    }
    flush();
    return parts;
  }
}
