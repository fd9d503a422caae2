/// <reference types="vitest/config" />
import { defineConfig } from 'vite';
import { svelte } from '@sveltejs/vite-plugin-svelte';

// The dev server proxies the API (HTTP and WebSocket) to a running backend.
const backend = process.env.BACKEND_URL ?? 'http://127.0.0.1:5000';

export default defineConfig({
  plugins: [svelte()],
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
