import { mount } from 'svelte';
import App from './App.svelte';
import './app.css';
import { createAppState, defaultSocketUrl } from './lib/stores/appState';
import { browserChatDb } from './lib/util/chatDb';
import { browserStorage } from './lib/util/storage';

const app = createAppState({
  storage: browserStorage(),
  db: browserChatDb(),
  fetch: (input, init) => fetch(input, init),
  socketUrl: defaultSocketUrl(window.location),
  createSocket: (url) => new WebSocket(url),
});

const target = document.getElementById('app');
if (!target) throw new Error('#app is missing');

export default mount(App, { target, props: { app } });
