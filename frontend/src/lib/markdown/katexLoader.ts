/** KaTeX, loaded on first use (its own chunk and stylesheet, not in the first-load bundle). */
import type { MathRender } from './math';

let loading: Promise<MathRender> | null = null;

export function loadKatex(): Promise<MathRender> {
  loading ??= Promise.all([import('katex'), import('katex/dist/katex.min.css')]).then(([module]) => {
    const katex = module.default;
    return (tex: string, display: boolean) =>
      katex.renderToString(tex, { displayMode: display, throwOnError: false, trust: false, output: 'htmlAndMathml' });
  });
  return loading;
}
