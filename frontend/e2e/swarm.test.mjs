// The swarm, visible (issue 12): the swarm panel against the real swarm with the chat's route marked,
// the route in the answer's facts, the context gauge (the server's count), a full chat that drops its
// oldest turns and goes on, and the "connect your GPU" prompts.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  assertClean,
  BASE_URL,
  lastAnswer,
  openApp,
  recordReceivedFrames,
  recordSentFrames,
  screenshot,
  sendMessage,
  setMaxNewTokens,
  sharedBrowser,
  TEST_TIMEOUT_MS,
  watchAnswer,
} from './helpers.mjs';

const SOCKET = /\/api\/v2\/generate$/;

async function swarmOfServer() {
  const response = await fetch(`${BASE_URL}/api/v1/swarm?model=tiny`);
  assert.equal(response.status, 200);
  return response.json();
}

describe('the swarm, visible', { timeout: TEST_TIMEOUT_MS * 4 }, () => {
  const browser = sharedBrowser();

  test('the panel lists the servers and marks the route; the route and the context size are facts of the answer', { timeout: TEST_TIMEOUT_MS }, async () => {
    const { context, page, problems } = await openApp(browser());
    try {
      const received = recordReceivedFrames(page);
      await setMaxNewTokens(page, 8);
      await sendMessage(page, 'Which servers answer me?');
      const answer = await watchAnswer(page);
      assert.equal(answer.state, 'done');

      // the route in the answer's facts: the test swarm's one server, every block
      const swarm = await swarmOfServer();
      const [server] = swarm.servers;
      const facts = lastAnswer(page).getByTestId('message-route');
      assert.equal((await facts.textContent())?.trim(), `· via ${server.short_id} blocks 0–${swarm.blocks_total - 1}`);

      // the gauge shows the server's count: the first frame's, plus the tokens the page took after it
      const counted = received.find((f) => typeof f.context_tokens === 'number');
      assert.ok(counted, 'a frame carried context_tokens');
      const gauge = page.getByTestId('context-gauge');
      assert.equal(await gauge.getAttribute('data-exact'), 'true');
      assert.equal(Number(await gauge.getAttribute('data-used')), counted.context_tokens + 8 - counted.token_count);
      assert.match((await gauge.textContent()) ?? '', /\/ 2,048 tokens/);

      await page.getByTestId('swarm-toggle').click();
      const panel = page.getByTestId('swarm-panel');
      const row = panel.getByTestId('swarm-server');
      await row.first().waitFor();
      assert.equal(await row.count(), swarm.servers.length);
      assert.equal(await row.first().getAttribute('data-peer'), server.peer_id);
      assert.equal(await row.first().getAttribute('data-on-route'), 'true');
      assert.match((await row.first().textContent()) ?? '', /online/);
      assert.match((await row.first().textContent()) ?? '', /tokens\/s/);
      assert.match((await panel.getByTestId('swarm-summary').textContent()) ?? '', new RegExp(`${swarm.blocks_total} of ${swarm.blocks_total} blocks served`));
      assert.match((await panel.getByTestId('swarm-route').textContent()) ?? '', new RegExp(server.short_id.replace(/\./g, '\\.')));

      // "too slow? connect your GPU" opens the README's section on joining the swarm
      const join = panel.getByTestId('join-the-swarm');
      assert.equal(await join.evaluate((el) => el.open), false);
      await panel.getByTestId('swarm-slow').getByRole('button', { name: 'Connect your GPU' }).click();
      assert.equal(await join.evaluate((el) => el.open), true);
      assert.match((await join.textContent()) ?? '', /python -m backend swarm/);
      await screenshot(page, 'swarm-panel');

      await page.getByRole('button', { name: 'Close the swarm panel' }).click();
      await panel.waitFor({ state: 'detached' });
      await assertClean(page, problems);
    } finally {
      await context.close();
    }
  });

  test('a full chat drops its oldest turns and goes on', { timeout: TEST_TIMEOUT_MS }, async () => {
    const { context, page, problems } = await openApp(browser());
    try {
      await setMaxNewTokens(page, 4);
      // the test model's context is 2,048 tokens; each of these words is one token
      const first = `first ${'apple '.repeat(1100)}`;
      const second = `second ${'pear '.repeat(1300)}`;
      await sendMessage(page, first);
      assert.equal((await watchAnswer(page)).state, 'done');
      const gauge = page.getByTestId('context-gauge');
      assert.ok(Number(await gauge.getAttribute('data-used')) > 1100);

      await sendMessage(page, second);
      const box = page.locator('[data-testid="error-box"][data-kind="context_too_long"]');
      await box.waitFor({ timeout: 60_000 });
      assert.match((await box.textContent()) ?? '', /This chat is full/);
      assert.equal(await gauge.getAttribute('data-level'), 'full');
      await screenshot(page, 'chat-full');

      const sent = recordSentFrames(page);
      await box.getByTestId('drop-oldest-turns').click();
      await box.waitFor({ state: 'detached' });
      await page.locator('[data-testid="message-assistant"][data-state="done"]').waitFor({ timeout: 90_000 });
      const users = await page.getByTestId('message-user').allTextContents();
      assert.deepEqual(users.map((t) => t.trim().split(' ')[0]), ['second']);
      const generate = sent.find((f) => f.type === 'generate');
      assert.ok(generate?.inputs?.includes('second pear') && !generate.inputs.includes('first apple'));
      const used = Number(await gauge.getAttribute('data-used'));
      assert.ok(used > 1100 && used < 2048, `the gauge after dropping: ${used}`);
      await assertClean(page, problems);
    } finally {
      await context.close();
    }
  });

  test('out of capacity: the error and the panel offer to connect a GPU', { timeout: TEST_TIMEOUT_MS }, async () => {
    const { context, page, problems } = await openApp(browser(), {
      beforeGoto: async (page) => {
        await page.routeWebSocket(SOCKET, (ws) => {
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
        });
        // the real swarm's answer, its one server announcing no cache left
        await page.route(/\/api\/v1\/swarm/, async (route) => {
          const response = await route.fetch();
          const body = await response.json();
          body.servers = body.servers.map((s) => ({ ...s, cache_tokens_left: 0 }));
          await route.fulfill({ response, json: body });
        });
      },
    });
    try {
      await sendMessage(page, 'Hi');
      const box = page.locator('[data-testid="error-box"][data-kind="capacity"]');
      await box.waitFor();
      await box.getByTestId('connect-gpu').click();
      const panel = page.getByTestId('swarm-panel');
      await panel.getByTestId('swarm-capacity').waitFor();
      assert.match((await panel.getByTestId('swarm-capacity').textContent()) ?? '', /Out of capacity/);
      assert.equal(await panel.getByTestId('join-the-swarm').evaluate((el) => el.open), true);
      await assertClean(page, problems);
    } finally {
      await context.close();
    }
  });
});
