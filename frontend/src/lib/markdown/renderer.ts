/**
 * Markdown to safe HTML segments.
 *
 * Raw HTML in the source is escaped (markdown-it `html: false`), only http/https/mailto links
 * survive, images are not rendered (no remote requests from model output), and code blocks come
 * out as separate segments that a component renders with a copy button. Maths (`$...$`,
 * `$$...$$`) shows as source until KaTeX is loaded (`loadMath()`, on demand), and code as plain
 * text until highlight.js is (`loadHighlighter()`).
 */
import MarkdownItFactory, { type MarkdownIt, type Token } from 'markdown-it';
import { repairBlock, splitBlocks } from './blocks';
import { loadKatex } from './katexLoader';
import { mathPlugin, pendingMath, type MathRender } from './math';

export type SegmentBody =
  | { kind: 'html'; html: string }
  | { kind: 'code'; lang: string; code: string; highlighted: string | null };

export type Segment = SegmentBody & { key: string };

/** Highlighted HTML for code in a language, or null (plain text). */
export type Highlighter = (code: string, lang: string) => string | null;

/** highlight.js and its languages: a chunk of their own, loaded when the first code block shows. */
export async function loadHighlightJs(): Promise<Highlighter> {
  return (await import('./highlight')).highlightCode;
}

const SAFE_LINK = /^(https?:|mailto:)/i;

export function isSafeLink(url: string): boolean {
  return SAFE_LINK.test(url.trim());
}

export function createMarkdownIt(math: () => MathRender = () => pendingMath): MarkdownIt {
  const md = new MarkdownItFactory({ html: false, linkify: true, typographer: false, breaks: true });
  md.disable(['image']);
  mathPlugin(md, math);
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
  #math: MathRender | null = null;
  #mathLoading: Promise<void> | null = null;
  #highlight: Highlighter | null = null;
  #highlightLoading: Promise<void> | null = null;

  constructor(md?: MarkdownIt) {
    this.#md = md ?? createMarkdownIt(() => this.#math ?? pendingMath);
  }

  get highlighterReady(): boolean {
    return this.#highlight !== null;
  }

  /** Loads highlight.js once; blocks rendered before are rendered again. */
  loadHighlighter(load: () => Promise<Highlighter> = loadHighlightJs): Promise<void> {
    this.#highlightLoading ??= load().then((highlight) => {
      this.#highlight = highlight;
      this.#cache.clear();
    });
    return this.#highlightLoading;
  }

  get mathReady(): boolean {
    return this.#math !== null;
  }

  /** Loads the maths renderer once; blocks rendered before are rendered again. */
  loadMath(load: () => Promise<MathRender> = loadKatex): Promise<void> {
    this.#mathLoading ??= load().then((render) => {
      this.#math = render;
      this.#cache.clear();
    });
    return this.#mathLoading;
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
        parts.push({ kind: 'code', lang, code, highlighted: this.#highlight?.(code, lang) ?? null });
      } else {
        group.push(token);
      }
    }
    flush();
    return parts;
  }
}
