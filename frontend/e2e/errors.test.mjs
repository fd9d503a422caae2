// Failure handling and injection safety, with frames injected through page.routeWebSocket.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  assertClean,
  openApp,
  screenshot,
  sendMessage,
  setMaxNewTokens,
  sharedBrowser,
  TEST_TIMEOUT_MS,
  watchAnswer,
} from './helpers.mjs';

const SOCKET = /\/api\/v2\/generate/;
const PAYLOAD = '<img src=x onerror="window.__xss=1;alert(1)"><script>window.__xss=2;alert(2)</script>';

describe('errors and injection', { timeout: TEST_TIMEOUT_MS * 4 }, () => {
  const browser = sharedBrowser();

  test('a server error shows the error box and Retry answers', { timeout: TEST_TIMEOUT_MS }, async () => {
    const { context, page, problems } = await openApp(browser(), {
      beforeGoto: (page) => {
        let injected = false; // once, across connections
        return page.routeWebSocket(SOCKET, (ws) => {
          const server = ws.connectToServer();
          ws.onMessage((message) => {
            const request = JSON.parse(String(message));
            if (request.type === 'generate' && !injected) {
              injected = true;
              ws.send(JSON.stringify({ ok: false, traceback: 'Traceback (most recent call last):\nRuntimeError: injected failure' }));
              return;
            }
            server.send(message);
          });
          server.onMessage((message) => ws.send(message));
        });
      },
    });
    try {
      await setMaxNewTokens(page, 12);
      await sendMessage(page, 'This will fail once');
      const box = page.getByTestId('error-box');
      await box.waitFor();
      assert.match((await box.textContent()) ?? '', /injected failure/);
      await screenshot(page, 'error-box');

      await page.getByTestId('retry').click();
      const { lengths, state } = await watchAnswer(page);
      assert.ok(lengths.length >= 1, 'the retried answer should stream');
      assert.notEqual(state, 'error');
      assert.equal(await box.count(), 0, 'the error box goes away');
      assert.equal(await page.getByTestId('message-assistant').count(), 1);
      await assertClean(page, problems);
    } finally {
      await context.close();
    }
  });

  test('out of capacity is explained', { timeout: TEST_TIMEOUT_MS }, async () => {
    const { context, page, problems } = await openApp(browser(), {
      beforeGoto: (page) =>
        page.routeWebSocket(SOCKET, (ws) => {
          ws.onMessage((message) => {
            const request = JSON.parse(String(message));
            ws.send(
              JSON.stringify(
                request.type === 'open_inference_session'
                  ? { ok: true }
                  : { ok: false, code: 'cache_full', traceback: 'RuntimeError: attention cache is full' },
              ),
            );
          });
        }),
    });
    try {
      await sendMessage(page, 'Hi');
      const box = page.locator('[data-testid="error-box"][data-kind="capacity"]');
      await box.waitFor();
      assert.match((await box.textContent()) ?? '', /out of capacity/i);
      await assertClean(page, problems);
    } finally {
      await context.close();
    }
  });

  test('user text and model output with HTML render inert', { timeout: TEST_TIMEOUT_MS }, async () => {
    const { context, page, problems } = await openApp(browser(), {
      beforeGoto: (page) =>
        page.routeWebSocket(SOCKET, (ws) => {
          ws.onMessage((message) => {
            const request = JSON.parse(String(message));
            if (request.type === 'open_inference_session') return ws.send(JSON.stringify({ ok: true }));
            const parts = [
              'Here: ',
              '<img src=x onerror="window.__xss=3;alert(3)">',
              ' <script>window.__xss=4;alert(4)</script>',
              ' [click](javascript:alert(5))',
              ' <a href="javascript:alert(6)">a</a>',
              request.stop_sequence,
            ];
            parts.forEach((outputs, i) =>
              setTimeout(
                () => ws.send(JSON.stringify({ ok: true, outputs, stop: i === parts.length - 1, token_count: 1 })),
                50 * (i + 1),
              ),
            );
          });
        }),
    });
    try {
      await setMaxNewTokens(page, 50);
      await sendMessage(page, PAYLOAD);
      await page.locator('[data-testid="message-assistant"][data-state="done"]').waitFor();

      const messages = page.getByTestId('messages');
      assert.equal(await messages.locator('img, script, iframe, svg').count(), 0, 'no element was created');
      assert.equal(await messages.locator('a[href^="javascript" i]').count(), 0, 'no javascript: link');
      assert.ok(((await page.getByTestId('message-user').textContent()) ?? '').includes(PAYLOAD), 'user text shown literally');
      const answer = (await page.getByTestId('message-assistant').textContent()) ?? '';
      assert.ok(answer.includes('<img src=x onerror='), 'model output shown literally');
      assert.equal(await page.evaluate(() => window.__xss), undefined, 'no injected code ran');
      await page.waitForTimeout(300);
      await assertClean(page, problems);
    } finally {
      await context.close();
    }
  });
});
