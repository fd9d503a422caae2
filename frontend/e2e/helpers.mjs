// Shared helpers for the end-to-end tests (node:test + playwright-core against a running backend).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before } from 'node:test';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));

export const BASE_URL = process.env.BASE_URL ?? '';
export const ARTIFACTS_DIR = path.resolve(process.env.ARTIFACTS_DIR ?? path.join(here, '..', '..', 'test-artifacts'));
export const CHROMIUM_PATH = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
/** Bound for one answer to finish streaming. */
export const ANSWER_TIMEOUT_MS = Number(process.env.E2E_ANSWER_TIMEOUT_MS ?? 90_000);
/** Bound for a whole test. */
export const TEST_TIMEOUT_MS = Number(process.env.E2E_TEST_TIMEOUT_MS ?? 240_000);

const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-quic',
];

export async function launchBrowser() {
  assert.ok(BASE_URL, 'Set BASE_URL to the running backend, e.g. BASE_URL=http://127.0.0.1:5000');
  assert.ok(
    fs.existsSync(CHROMIUM_PATH),
    `Chromium not found at ${CHROMIUM_PATH}: install it (apt-get install -y chromium) or set CHROMIUM_PATH`,
  );
  fs.mkdirSync(ARTIFACTS_DIR, { recursive: true });
  return chromium.launch({ executablePath: CHROMIUM_PATH, headless: true, args: CHROMIUM_ARGS });
}

/**
 * A fresh browser context (empty storage) with the app loaded. `problems` collects console
 * errors, uncaught exceptions, dialogs (alert/confirm: an injection would show one) and CSP
 * violations; `assertClean` fails the test on any of them.
 */
export async function openApp(browser, { colorScheme = 'light', viewport = { width: 1280, height: 860 }, beforeGoto } = {}) {
  const context = await browser.newContext({ colorScheme, viewport });
  const page = await context.newPage();
  page.setDefaultTimeout(30_000);
  const problems = [];
  page.on('console', (msg) => {
    if (msg.type() === 'error') problems.push(`console error: ${msg.text()}`);
  });
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  page.on('dialog', (dialog) => {
    problems.push(`dialog: ${dialog.type()} ${dialog.message()}`);
    void dialog.dismiss();
  });
  await context.addInitScript(() => {
    window.__cspViolations = [];
    document.addEventListener('securitypolicyviolation', (e) => {
      window.__cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`);
    });
  });
  if (beforeGoto) await beforeGoto(page);
  await page.goto(BASE_URL, { waitUntil: 'domcontentloaded' });
  // The shell renders at once; wait for the model list to arrive.
  await page.locator('select#model-select:not([disabled])').waitFor({ timeout: 30_000 });
  return { context, page, problems };
}

export async function assertClean(page, problems) {
  const csp = await page.evaluate(() => window.__cspViolations ?? []);
  assert.deepEqual(csp, [], `CSP violations: ${csp.join('; ')}`);
  assert.deepEqual(problems, [], `Problems in the page:\n${problems.join('\n')}`);
}

/** Sets "Max new tokens" in the settings panel (the test model never stops by itself). */
export async function setMaxNewTokens(page, n) {
  await page.getByTestId('settings-toggle').click();
  const field = page.getByLabel('Max new tokens');
  await field.fill(String(n));
  await field.press('Tab');
  await page.getByRole('button', { name: 'Close settings' }).click();
}

export async function sendMessage(page, text) {
  const composer = page.getByLabel('Message', { exact: true });
  await composer.fill(text);
  await composer.press('Enter');
}

export function lastAnswer(page) {
  return page.getByTestId('message-assistant').last();
}

/**
 * Samples the last answer's text every 50 ms until it is no longer streaming.
 * Returns the distinct text lengths seen while streaming and the final state.
 */
export async function watchAnswer(page, { until = 'finished', timeout = ANSWER_TIMEOUT_MS } = {}) {
  const deadline = Date.now() + timeout;
  const lengths = [];
  let sawRate = false;
  for (;;) {
    const snapshot = await page.evaluate(() => {
      const all = document.querySelectorAll('[data-testid="message-assistant"]');
      const el = all[all.length - 1];
      const rate = document.querySelector('[data-testid="tokens-per-second"]') !== null;
      return el
        ? { state: el.getAttribute('data-state'), rate, length: (el.querySelector('[data-testid="markdown"]')?.textContent ?? '').trim().length }
        : null;
    });
    if (snapshot) {
      if (snapshot.rate) sawRate = true;
      if (snapshot.state === 'streaming' && snapshot.length > 0 && lengths.at(-1) !== snapshot.length) {
        lengths.push(snapshot.length);
      }
      if (snapshot.state !== 'streaming') return { lengths, sawRate, state: snapshot.state, finalLength: snapshot.length };
      if (until === 'tokens' && lengths.length >= 3) return { lengths, sawRate, state: snapshot.state, finalLength: snapshot.length };
    }
    assert.ok(Date.now() < deadline, `The answer did not finish within ${timeout} ms (lengths seen: ${lengths.join(',')})`);
    await page.waitForTimeout(50);
  }
}

export function assertStreamed(lengths) {
  assert.ok(lengths.length >= 3, `Expected the answer to grow over several snapshots, saw lengths [${lengths.join(', ')}]`);
  for (let i = 1; i < lengths.length; i++) assert.ok(lengths[i] > lengths[i - 1], `Answer text shrank: ${lengths.join(', ')}`);
}

export async function screenshot(page, name) {
  const file = path.join(ARTIFACTS_DIR, `${name}.png`);
  await page.screenshot({ path: file, fullPage: false });
  return file;
}

/** Records the JSON frames of the page's WebSockets in one direction: `framesent` or `framereceived`. */
function recordFrames(page, direction) {
  const frames = [];
  page.on('websocket', (ws) => {
    ws.on(direction, (event) => {
      try {
        frames.push(JSON.parse(String(event.payload)));
      } catch {
        // not JSON
      }
    });
  });
  return frames;
}

/** Records the JSON frames the page sends over the chat socket. */
export function recordSentFrames(page) {
  return recordFrames(page, 'framesent');
}

/** Records the JSON frames the page receives over the chat socket. */
export function recordReceivedFrames(page) {
  return recordFrames(page, 'framereceived');
}

/** A browser for the tests of one suite: launched before them, closed after them. Returns its getter. */
export function sharedBrowser() {
  let browser;
  before(async () => {
    browser = await launchBrowser();
  });
  after(async () => {
    await browser?.close();
  });
  return () => browser;
}
