// Screenshots of the app answering with the real embedded model, for the README (`make screenshots`).
// Needs BASE_URL of a running app (make run) and Debian's Chromium. Writes ../docs/screenshot-*.png
// (light, dark, phone, and the swarm panel beside the light one).
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { launchBrowser, openApp, sendMessage, watchAnswer } from '../e2e/helpers.mjs';

const docs = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'docs');
const shots = [
  { name: 'screenshot-light', colorScheme: 'light', viewport: { width: 1280, height: 800 }, swarm: 'screenshot-swarm' },
  { name: 'screenshot-dark', colorScheme: 'dark', viewport: { width: 1280, height: 800 } },
  { name: 'screenshot-phone', colorScheme: 'light', viewport: { width: 390, height: 800 } },
];

const browser = await launchBrowser();
try {
  for (const shot of shots) {
    const { context, page } = await openApp(browser, shot);
    await sendMessage(page, 'What is the capital of France?');
    await watchAnswer(page, { timeout: 120_000 });
    await sendMessage(page, 'Write a Python function that adds two numbers.');
    await watchAnswer(page, { timeout: 240_000 });
    await page.screenshot({ path: path.join(docs, `${shot.name}.png`) });
    console.log(`wrote docs/${shot.name}.png`);
    if (shot.swarm) {
      // the swarm panel beside the same chat: its servers, the route of the last answer marked
      await page.getByTestId('swarm-toggle').click();
      await page.getByTestId('swarm-server').first().waitFor();
      await page.screenshot({ path: path.join(docs, `${shot.swarm}.png`) });
      console.log(`wrote docs/${shot.swarm}.png`);
    }
    await context.close();
  }
} finally {
  await browser.close();
}
