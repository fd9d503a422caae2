// The chat page against a live backend: streaming, stop, reload, model switch, theme screenshots.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  assertClean,
  assertStreamed,
  lastAnswer,
  openApp,
  recordSentFrames,
  screenshot,
  sendMessage,
  setMaxNewTokens,
  sharedBrowser,
  TEST_TIMEOUT_MS,
  watchAnswer,
} from './helpers.mjs';

describe('chat page', { timeout: TEST_TIMEOUT_MS * 6 }, () => {
  const browser = sharedBrowser();

  test('an answer streams in token by token; light and dark screenshots', { timeout: TEST_TIMEOUT_MS }, async () => {
    const { context, page, problems } = await openApp(browser());
    try {
      const frames = recordSentFrames(page);
      await setMaxNewTokens(page, 24);
      await sendMessage(page, 'Hello! Tell me a story.');
      await page.getByTestId('message-user').filter({ hasText: 'Hello! Tell me a story.' }).waitFor();
      const early = await watchAnswer(page, { until: 'tokens' });
      await screenshot(page, 'chat-streaming');
      const rest = await watchAnswer(page);
      const lengths = [...early.lengths, ...rest.lengths.filter((n) => n > (early.lengths.at(-1) ?? 0))];
      assertStreamed(lengths);
      assert.ok(early.sawRate || rest.sawRate, 'a tokens/second figure is shown while generating');
      assert.ok(['done', 'stopped'].includes(rest.state), `unexpected final state ${rest.state}`);

      const open = frames.find((f) => f.type === 'open_inference_session');
      assert.equal(open?.max_length, 512);
      const generate = frames.find((f) => f.type === 'generate');
      assert.equal(generate?.max_new_tokens, 1);
      assert.equal(typeof generate?.stop_sequence, 'string');
      assert.ok(generate?.inputs?.includes('Hello! Tell me a story.'));

      await page.emulateMedia({ colorScheme: 'light' });
      await screenshot(page, 'chat-light');
      await page.emulateMedia({ colorScheme: 'dark' });
      const background = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
      assert.notEqual(background, 'rgb(255, 255, 255)', 'dark theme should change the background');
      await screenshot(page, 'chat-dark');
      await page.setViewportSize({ width: 390, height: 780 });
      await screenshot(page, 'chat-phone');
      await assertClean(page, problems);
    } finally {
      await context.close();
    }
  });

  test('stop mid-answer, then the next message is answered', { timeout: TEST_TIMEOUT_MS }, async () => {
    const { context, page, problems } = await openApp(browser());
    try {
      await setMaxNewTokens(page, 400);
      await sendMessage(page, 'Write a very long essay.');
      await watchAnswer(page, { until: 'tokens' });
      await page.getByTestId('stop').click();
      await page.locator('[data-testid="message-assistant"][data-state="stopped"]').waitFor();
      await page.getByTestId('send').waitFor();

      await setMaxNewTokens(page, 16);
      await sendMessage(page, 'And now a short one.');
      const { lengths, state } = await watchAnswer(page);
      assert.ok(lengths.length >= 1, 'the second answer should stream');
      assert.notEqual(state, 'error');
      assert.equal(await page.getByTestId('message-assistant').count(), 2);
      assert.equal(await page.getByTestId('error-box').count(), 0);
      await assertClean(page, problems);
    } finally {
      await context.close();
    }
  });

  test('the conversation survives a reload', { timeout: TEST_TIMEOUT_MS }, async () => {
    const { context, page, problems } = await openApp(browser());
    try {
      await setMaxNewTokens(page, 12);
      await sendMessage(page, 'Remember this message');
      await watchAnswer(page);
      const answer = (await lastAnswer(page).locator('.answer').textContent())?.trim();
      await page.reload({ waitUntil: 'domcontentloaded' });
      await page.getByTestId('conversation-item').filter({ hasText: 'Remember this message' }).waitFor();
      await page.getByTestId('message-user').filter({ hasText: 'Remember this message' }).waitFor();
      assert.equal((await lastAnswer(page).locator('.answer').textContent())?.trim(), answer);

      // Ctrl+K searches the chats (kept in IndexedDB) by title and text.
      await page.keyboard.press('Control+k');
      assert.equal(await page.evaluate(() => document.activeElement?.getAttribute('data-testid')), 'chat-search');
      await page.keyboard.type('remember THIS');
      assert.equal(await page.getByTestId('conversation-item').count(), 1);
      await page.getByTestId('chat-search').fill('words in no chat');
      assert.equal(await page.getByTestId('conversation-item').count(), 0);
      await assertClean(page, problems);
    } finally {
      await context.close();
    }
  });

  test('regenerate the last answer; edit an earlier message and resend from there', { timeout: TEST_TIMEOUT_MS }, async () => {
    const { context, page, problems } = await openApp(browser());
    try {
      const frames = recordSentFrames(page);
      await setMaxNewTokens(page, 8);
      await sendMessage(page, 'First question');
      await watchAnswer(page);
      await sendMessage(page, 'Second question');
      await watchAnswer(page);
      assert.equal(await page.getByTestId('message-assistant').count(), 2);

      // Regenerate: the last answer is produced again, in place (still two answers).
      const before = frames.length;
      await page.getByTestId('regenerate').last().click();
      const regenerated = await watchAnswer(page);
      assert.notEqual(regenerated.state, 'error');
      assert.equal(await page.getByTestId('message-assistant').count(), 2);
      const resent = frames.slice(before).filter((f) => f.type === 'generate');
      assert.ok(resent.length >= 1, 'regenerate sends a new generate request');

      // Edit the first question: everything after it is replaced by the new exchange.
      await page.getByTestId('message-user').first().getByTestId('edit-message').click();
      const editor = page.getByLabel('Edit your message');
      await editor.fill('First question, edited');
      await page.getByTestId('message-user').first().getByRole('button', { name: 'Send' }).click();
      const edited = await watchAnswer(page);
      assert.notEqual(edited.state, 'error');
      const users = await page.getByTestId('message-user').allTextContents();
      assert.equal(users.length, 1, `the later turns are dropped, got ${users}`);
      assert.ok(users[0].includes('First question, edited'));
      assert.equal(await page.getByTestId('message-assistant').count(), 1);
      const last = frames.filter((f) => f.type === 'generate').at(-1);
      assert.ok(last?.inputs?.includes('First question, edited'), 'the edited text is sent');
      assert.ok(!last?.inputs?.includes('Second question'), 'the dropped turn is not sent');

      // The earlier version is kept and can be shown again in place (< 1/2 >).
      const firstUser = page.getByTestId('message-user').first();
      assert.equal((await firstUser.getByTestId('version-label').textContent())?.trim(), '2/2');
      await firstUser.getByRole('button', { name: 'Previous version' }).click();
      await page.getByTestId('message-user').filter({ hasText: 'Second question' }).waitFor();
      assert.equal(await page.getByTestId('message-assistant').count(), 2);
      await assertClean(page, problems);
    } finally {
      await context.close();
    }
  });

  test('switching model starts a new dialogue with that model', { timeout: TEST_TIMEOUT_MS }, async () => {
    const { context, page, problems } = await openApp(browser());
    try {
      const frames = recordSentFrames(page);
      await setMaxNewTokens(page, 12);
      await sendMessage(page, 'First model');
      await watchAnswer(page);

      const select = page.locator('select#model-select');
      const current = await select.inputValue();
      const keys = await select.locator('option').evaluateAll((options) => options.map((o) => o.value));
      assert.ok(keys.length >= 2, `the test backend should serve at least two models, got ${keys}`);
      const other = keys.find((k) => k !== current);
      await select.selectOption(other);

      assert.equal(await page.getByTestId('message-user').count(), 0, 'a new dialogue is empty');
      assert.equal(await page.getByTestId('conversation-item').count(), 2);
      await sendMessage(page, 'Second model');
      const { lengths } = await watchAnswer(page);
      assert.ok(lengths.length >= 1, 'the answer from the other model should stream');
      const opens = frames.filter((f) => f.type === 'open_inference_session').map((f) => f.model);
      assert.deepEqual(opens, [current, other]);

      // The first dialogue is still there with its own model.
      await page.getByTestId('conversation-item').filter({ hasText: 'First model' }).getByRole('button').first().click();
      await page.getByTestId('message-user').filter({ hasText: 'First model' }).waitFor();
      assert.equal(await select.inputValue(), current);
      await assertClean(page, problems);
    } finally {
      await context.close();
    }
  });
});
