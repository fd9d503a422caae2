// An answer survives a dropped connection and a reload: the server keeps generating for its
// reattach window and the page reattaches (issue 12).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  lastAnswer,
  openApp,
  sendMessage,
  setMaxNewTokens,
  sharedBrowser,
  TEST_TIMEOUT_MS,
  watchAnswer,
} from './helpers.mjs';

const PROMPT = 'Write a long story about a lighthouse keeper.';
const TOKENS = 48;

async function greedy(page) {
  await page.getByTestId('settings-toggle').click();
  const field = page.getByLabel('Top-k');
  await field.fill('1');
  await field.press('Tab');
  await page.getByRole('button', { name: 'Close settings' }).click();
}

async function answerText(page) {
  return (await lastAnswer(page).locator('[data-testid="markdown"]').textContent())?.trim() ?? '';
}

describe('resumable answers', { timeout: TEST_TIMEOUT_MS * 2 }, () => {
  const browser = sharedBrowser();

  test('mid-answer: 5 s offline and a reload; the answer completes as without them', { timeout: TEST_TIMEOUT_MS }, async () => {
    const { context, page } = await openApp(browser());
    try {
      await setMaxNewTokens(page, TOKENS);
      await greedy(page);
      await sendMessage(page, PROMPT);
      const reference = await watchAnswer(page);
      assert.equal(reference.state, 'done');
      const expected = await answerText(page);

      await page.getByTestId('new-chat').click();
      await sendMessage(page, PROMPT);
      await watchAnswer(page, { until: 'tokens' });
      const before = await answerText(page);
      await context.setOffline(true);
      await page.waitForTimeout(5000);
      await context.setOffline(false);
      await page.reload({ waitUntil: 'domcontentloaded' });
      await page.getByTestId('message-user').filter({ hasText: PROMPT }).waitFor();
      await page.locator('[data-testid="message-assistant"][data-state="done"]').waitFor({ timeout: 90_000 });
      const after = await answerText(page);
      assert.ok(after.startsWith(before), `the answer lost text: ${JSON.stringify(before)} -> ${JSON.stringify(after)}`);
      assert.equal(after, expected);
    } finally {
      await context.close();
    }
  });
});
