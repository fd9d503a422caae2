/**
 * `$...$` (inline) and `$$...$$` (display) maths for markdown-it. The TeX is rendered by a
 * function given later (KaTeX, loaded on demand); until then it shows as escaped source.
 *
 * Dollar rules as in Pandoc, so that prices stay text: the opening `$` is followed by a
 * non-space, the closing one preceded by a non-space and not followed by a digit.
 */
import type { MarkdownIt } from 'markdown-it';

export type MathRender = (tex: string, display: boolean) => string;

/** Whether a text may hold maths (cheap: decides whether KaTeX is worth loading). */
export function hasMath(text: string): boolean {
  return /\$\$[\s\S]+?\$\$|\$[^\s$][^$\n]*?[^\s$\\]?\$(?!\d)/.test(text);
}

function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

export function pendingMath(tex: string, display: boolean): string {
  return display ? `<div class="math-pending">$$${escapeHtml(tex)}$$</div>` : `<code class="math-pending">${escapeHtml(tex)}</code>`;
}

/** Adds the two rules; `render()` is asked at render time, so it can change once KaTeX is loaded. */
export function mathPlugin(md: MarkdownIt, render: () => MathRender): void {
  md.inline.ruler.after('escape', 'math_inline', (state, silent) => {
    const src = state.src;
    const start = state.pos;
    if (src.charCodeAt(start) !== 0x24 /* $ */) return false;
    const display = src.charCodeAt(start + 1) === 0x24;
    const open = display ? 2 : 1;
    const first = src[start + open];
    if (first === undefined || (!display && /\s/.test(first))) return false;
    let end = src.indexOf(display ? '$$' : '$', start + open);
    while (end > 0 && src[end - 1] === '\\') end = src.indexOf(display ? '$$' : '$', end + 1);
    if (end < 0 || end === start + open) return false;
    if (!display && (/\s/.test(src[end - 1] ?? '') || /\d/.test(src[end + 1] ?? ''))) return false;
    if (!silent) {
      const token = state.push('math_inline', 'math', 0);
      token.content = src.slice(start + open, end);
      token.markup = display ? '$$' : '$';
    }
    state.pos = end + open;
    return true;
  });

  md.block.ruler.after('blockquote', 'math_block', (state, startLine, endLine, silent) => {
    const lineStart = (line: number) => (state.bMarks[line] ?? 0) + (state.tShift[line] ?? 0);
    const lineText = (line: number) => state.src.slice(lineStart(line), state.eMarks[line]);
    const first = lineText(startLine);
    if (!first.startsWith('$$')) return false;
    let content: string;
    let last = startLine;
    const rest = first.slice(2);
    if (rest.trimEnd().endsWith('$$') && rest.trim().length > 2) {
      content = rest.trimEnd().slice(0, -2);
    } else {
      const lines = [rest];
      for (;;) {
        last++;
        if (last >= endLine) return false; // not closed (yet): leave it to the inline rule / text
        const text = lineText(last);
        if (text.trimEnd().endsWith('$$')) {
          lines.push(text.trimEnd().slice(0, -2));
          break;
        }
        lines.push(text);
      }
      content = lines.join('\n');
    }
    if (silent) return true;
    const token = state.push('math_block', 'math', 0);
    token.content = content.trim();
    token.block = true;
    token.map = [startLine, last + 1];
    state.line = last + 1;
    return true;
  });

  md.renderer.rules.math_inline = (tokens, idx) => {
    const token = tokens[idx]!;
    return render()(token.content, token.markup === '$$');
  };
  md.renderer.rules.math_block = (tokens, idx) => render()(tokens[idx]!.content, true);
}
