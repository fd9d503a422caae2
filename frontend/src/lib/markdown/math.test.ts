import { describe, expect, it } from 'vitest';
import { hasMath } from './math';
import { MarkdownRenderer } from './renderer';
import { splitThinking } from './thinking';

const html = (renderer: MarkdownRenderer, source: string) =>
  renderer
    .render(source)
    .map((s) => (s.kind === 'html' ? s.html : s.code))
    .join('');

const fakeTex = async () => (tex: string, display: boolean) => `<m d="${display}">${tex.replace(/</g, '&lt;')}</m>`;

describe('maths', () => {
  it('tells maths from prices', () => {
    expect(hasMath('Euler: $e^{i\\pi} + 1 = 0$.')).toBe(true);
    expect(hasMath('$$\\int_0^1 x\\,dx$$')).toBe(true);
    expect(hasMath('It costs $5 and $10.')).toBe(false);
    expect(hasMath('no maths')).toBe(false);
  });

  it('shows escaped source until KaTeX is loaded, then renders inline and display maths', async () => {
    const renderer = new MarkdownRenderer();
    const source = 'Inline $a<b$ here.\n\n$$\nx^2\n$$\n\nCosts $5 and $10.';
    const before = html(renderer, source);
    expect(before).toContain('<code class="math-pending">a&#60;b</code>');
    expect(before).not.toContain('<b');

    await renderer.loadMath(fakeTex);
    const after = html(renderer, source);
    expect(after).toContain('<m d="false">a&lt;b</m>');
    expect(after).toContain('<m d="true">x^2</m>');
    expect(after).toContain('Costs $5 and $10.');
  });

  it('renders real KaTeX (loaded on demand)', async () => {
    const renderer = new MarkdownRenderer();
    await renderer.loadMath();
    const out = html(renderer, '$\\frac{1}{2}$ and <script>alert(1)</script>');
    expect(out).toContain('class="katex"');
    expect(out).not.toContain('<script>');
  });
});

describe('thinking', () => {
  it('splits a leading <think> block from the answer', () => {
    expect(splitThinking('<think>Hmm, 2+2.</think>\n4')).toEqual({ thinking: 'Hmm, 2+2.', open: false, answer: '\n4' });
    expect(splitThinking('  <think>still going')).toEqual({ thinking: 'still going', open: true, answer: '' });
    expect(splitThinking('No thinking <think>here</think>')).toEqual({
      thinking: null,
      open: false,
      answer: 'No thinking <think>here</think>',
    });
  });
});
