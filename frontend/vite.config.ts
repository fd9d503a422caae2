/// <reference types="vitest/config" />
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { defineConfig, type Plugin } from 'vite';
import { svelte } from '@sveltejs/vite-plugin-svelte';
import { markdownSection } from './src/lib/swarm/swarmLayout';

/** `virtual:join-the-swarm`: the README's "Join the swarm" section, which the swarm panel shows. */
function joinTheSwarm(): Plugin {
  const id = 'virtual:join-the-swarm';
  const readme = fileURLToPath(new URL('../README.md', import.meta.url));
  return {
    name: 'join-the-swarm',
    resolveId: (source) => (source === id ? `\0${id}` : null),
    load(resolved) {
      if (resolved !== `\0${id}`) return null;
      this.addWatchFile(readme);
      return `export default ${JSON.stringify(markdownSection(readFileSync(readme, 'utf8'), 'Join the swarm'))};`;
    },
  };
}

// The dev server proxies the API (HTTP and WebSocket) to a running backend.
const backend = process.env.BACKEND_URL ?? 'http://127.0.0.1:5000';

export default defineConfig({
  plugins: [svelte(), joinTheSwarm()],
  server: {
    proxy: {
      '/api': {
        target: backend,
        ws: true,
        changeOrigin: true,
        // Models that are not public are served over the socket only to the app's own page
        // (Origin == the backend's origin). In development the page comes from Vite, so present
        // the backend's own origin for proxied requests.
        configure: (proxy) => {
          const origin = new URL(backend).origin;
          proxy.on('proxyReq', (req) => req.setHeader('origin', origin));
          proxy.on('proxyReqWs', (req) => req.setHeader('origin', origin));
        },
      },
    },
  },
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    // Everything as files: the backend serves the page under a CSP without inline scripts.
    assetsInlineLimit: 0,
    reportCompressedSize: true,
    chunkSizeWarningLimit: 400,
  },
  test: {
    include: ['src/**/*.test.ts'],
    environment: 'node',
  },
});
