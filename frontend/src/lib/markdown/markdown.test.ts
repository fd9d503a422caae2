import { JSDOM } from 'jsdom';
import { describe, expect, it } from 'vitest';
import { repairBlock, splitBlocks } from './blocks';
import { isSafeLink, MarkdownRenderer, type Segment } from './renderer';

function html(segments: Segment[]): string {
  return segments.map((s) => (s.kind === 'html' ? s.html : `<pre>${s.highlighted ?? ''}</pre>`)).join('');
}

function dom(markup: string): Document {
  return new JSDOM(`<body>${markup}</body>`).window.document;
}

function assertInert(markup: string): void {
  const doc = dom(markup);
  expect(doc.querySelectorAll('script, img, iframe, object, embed, svg, style, form').length).toBe(0);
  for (const el of doc.querySelectorAll('*')) {
    for (const attr of el.attributes) expect(attr.name.startsWith('on')).toBe(false);
  }
  for (const a of doc.querySelectorAll('a')) expect(isSafeLink(a.getAttribute('href') ?? '')).toBe(true);
}

describe('markdown rendering', () => {
  const renderer = new MarkdownRenderer();

  it('renders basic markdown', () => {
    const out = html(renderer.render('# Title\n\nSome **bold** and `code`.\n\n- a\n- b'));
    expect(out).toContain('<h1>Title</h1>');
    expect(out).toContain('<strong>bold</strong>');
    expect(out).toContain('<code>code</code>');
    expect(out).toContain('<li>a</li>');
  });

  it.each([
    '<img src=x onerror=alert(1)>',
    '<script>alert(1)</script>',
    '<iframe src="javascript:alert(1)"></iframe>',
    '<svg onload=alert(1)>',
    '<a href="javascript:alert(1)">x</a>',
    '<div onclick="alert(1)">click</div>',
    '<style>body{display:none}</style>',
  ])('escapes raw HTML: %s', (input) => {
    const out = html(renderer.render(`Text ${input} more\n\n${input}`));
    assertInert(out);
    expect(dom(out).body.textContent).toContain(input);
  });

  it.each([
    '[x](javascript:alert(1))',
    '[x](JAVASCRIPT:alert(1))',
    '[x]( javascript:alert(1))',
    '[x](jav&#x09;ascript:alert(1))',
    '[x](data:text/html,<script>alert(1)</script>)',
    '[x](vbscript:msgbox(1))',
    '<javascript:alert(1)>',
    '[x][r]\n\n[r]: javascript:alert(1)',
  ])('drops unsafe links: %s', (input) => {
    const out = html(renderer.render(input));
    assertInert(out);
    expect(dom(out).querySelectorAll('a').length).toBe(0);
  });

  it('keeps http, https and mailto links, opening in a new tab', () => {
    const doc = dom(html(renderer.render('[a](https://example.org) [b](http://x.test) [c](mailto:a@b.c)')));
    const links = [...doc.querySelectorAll('a')];
    expect(links.map((a) => a.getAttribute('href'))).toEqual(['https://example.org', 'http://x.test', 'mailto:a@b.c']);
    expect(links.every((a) => a.getAttribute('rel')?.includes('noopener'))).toBe(true);
    expect(links.every((a) => a.getAttribute('target') === '_blank')).toBe(true);
  });

  it('does not render images (no requests from model output)', () => {
    const out = html(renderer.render('![pixel](https://tracker.test/p.png)'));
    expect(dom(out).querySelectorAll('img').length).toBe(0);
  });

  it('makes code blocks separate segments with highlighting (loaded on demand) that escapes the code', async () => {
    expect(renderer.render('```python\nx = 1\n```')[0]).toMatchObject({ kind: 'code', highlighted: null });
    await renderer.loadHighlighter();
    const segments = renderer.render('Intro\n\n```python\nprint("<script>")\n```\n\nAfter');
    const code = segments.find((s) => s.kind === 'code');
    expect(code).toMatchObject({ kind: 'code', lang: 'python', code: 'print("<script>")' });
    expect(code?.kind === 'code' && code.highlighted).toContain('&lt;script&gt;');
    assertInert(html(segments));
  });

  it('code of an unknown language is left for plain-text rendering', () => {
    const [code] = renderer.render('```nosuchlang\n<img src=x onerror=alert(1)>\n```');
    expect(code).toMatchObject({ kind: 'code', highlighted: null, code: '<img src=x onerror=alert(1)>' });
  });

  it('closes an unclosed code fence while streaming', () => {
    const segments = renderer.render('Look:\n\n```js\nconst a = 1;', true);
    expect(segments.map((s) => s.kind)).toEqual(['html', 'code']);
    expect(segments[1]).toMatchObject({ code: 'const a = 1;', lang: 'js' });
  });

  it('memoizes finished blocks and not the streaming one', () => {
    const r = new MarkdownRenderer();
    r.render('First paragraph.\n\nSecond, still typ', true);
    expect(r.cacheSize).toBe(1);
    const again = r.render('First paragraph.\n\nSecond, still typing', true);
    expect(r.cacheSize).toBe(1);
    expect(again).toHaveLength(2);
    r.render('First paragraph.\n\nSecond, still typing.', false);
    expect(r.cacheSize).toBe(2);
  });
});

describe('block splitting', () => {
  it('splits at blank lines but not inside fences', () => {
    const blocks = splitBlocks('a\n\n```\nx\n\ny\n```\n\nb');
    expect(blocks.map((b) => b.text)).toEqual(['a', '```\nx\n\ny\n```', 'b']);
  });

  it('keeps indented continuations in the same block', () => {
    expect(splitBlocks('1. item\n\n   more\n\npara').map((b) => b.text)).toEqual(['1. item\n\n   more', 'para']);
  });

  it('reports and repairs an open fence', () => {
    const blocks = splitBlocks('p\n\n~~~~\ncode');
    expect(blocks.at(-1)?.openFence).toBe('~~~~');
    expect(repairBlock(blocks.at(-1)!)).toBe('~~~~\ncode\n~~~~');
  });
});
