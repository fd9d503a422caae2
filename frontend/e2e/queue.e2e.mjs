// The "Queued, position N…" note on the real page, against a backend that runs one generation at a time
// (PETALS_CHAT_MAX_CONCURRENT_GENERATIONS=1: tests/test_browser.py starts it for this file). Not a *.test.mjs
// file, so the shared live server (64 generations at once, nothing ever queues) never runs it.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  assertClean,
  openApp,
  recordReceivedFrames,
  screenshot,
  sendMessage,
  setMaxNewTokens,
  sharedBrowser,
  TEST_TIMEOUT_MS,
  watchAnswer,
} from './helpers.mjs';

describe('waiting in line', { timeout: TEST_TIMEOUT_MS * 2 }, () => {
  const browser = sharedBrowser();

  test('a message waiting for the only generation slot shows its place, then its answer', { timeout: TEST_TIMEOUT_MS }, async () => {
    const holder = await openApp(browser());
    let received = [];
    const waiter = await openApp(browser(), {
      beforeGoto: (page) => {
        received = recordReceivedFrames(page);
      },
    });
    try {
      // a long answer (the test model never stops by itself) holds the only generation slot
      await setMaxNewTokens(holder.page, 1500);
      await sendMessage(holder.page, 'Tell me a very long story.');
      await watchAnswer(holder.page, { until: 'tokens' });

      await setMaxNewTokens(waiter.page, 8);
      await sendMessage(waiter.page, 'Hi');
      const note = waiter.page.getByTestId('status').getByText('Queued, position 1…');
      await note.waitFor();
      await screenshot(waiter.page, 'queued');
      assert.equal(
        await holder.page.getByTestId('message-assistant').last().getAttribute('data-state'),
        'streaming',
        'the slot is still taken while the note shows',
      );

      await holder.page.getByTestId('stop').click(); // the slot frees: the waiting message is answered
      const { state, finalLength } = await watchAnswer(waiter.page);
      assert.ok(['done', 'stopped'].includes(state), `unexpected final state ${state}`);
      assert.ok(finalLength > 0, 'the answer arrived');
      await note.waitFor({ state: 'detached' });
      assert.ok(
        received.some((frame) => frame.queued === true && frame.position === 1),
        'the server told the page its place in line',
      );
      await assertClean(holder.page, holder.problems);
      await assertClean(waiter.page, waiter.problems);
    } finally {
      await holder.context.close();
      await waiter.context.close();
    }
  });
});
