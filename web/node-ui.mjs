// Drives Debian's headless Chromium with playwright-core through the node's web UI: opens the
// address `swarmcast up` printed (with its #token=…), waits for the event stream ("live"),
// pastes a magnet link into the add form, submits it, and waits until the torrent's row shows
// 100.0% and "seeding", all from the page's own updates (no reload). Then writes a screenshot.
// Prints one JSON line: {"live": bool, "row_s": seconds from submit to the row appearing,
// "complete_s": seconds from submit to 100%, "name": the row's name, "error": null or a message}.
// Usage: node web/node-ui.mjs URL MAGNET SCREENSHOT.png [TIMEOUT_SECONDS]
//   (exit 0 = complete, 1 = not, 2 = setup)
import { launch } from './browser.mjs';

const [url, magnet, shot] = process.argv.slice(2, 5);
const timeoutS = Number(process.argv[5] || 90);
if (!url || !magnet || !shot) {
  console.error('usage: node web/node-ui.mjs URL MAGNET SCREENSHOT.png [TIMEOUT_SECONDS]');
  process.exit(2);
}
const { context, close } = await launch();
const result = { live: false, row_s: null, complete_s: null, name: null, error: null };
try {
  const page = context.pages()[0] || await context.newPage();
  await page.setViewportSize({ width: 1200, height: 420 });
  const response = await page.goto(url, { waitUntil: 'load' });
  if (!response || !response.ok()) throw new Error(`GET ${url}: ${response ? response.status() : 'no response'}`);
  const timeout = timeoutS * 1000;
  await page.waitForFunction(() => document.getElementById('live').textContent === 'live', null, { timeout });
  result.live = true;
  await page.fill('#source', magnet);
  const t0 = Date.now();
  await page.click('#add button[type=submit]');
  await page.waitForSelector('#torrents tbody tr', { timeout });
  result.row_s = (Date.now() - t0) / 1000;
  await page.waitForFunction(() => {
    const tr = document.querySelector('#torrents tbody tr');
    return tr && tr.className === 'seeding' && tr.querySelector('.pct').textContent === '100.0%';
  }, null, { timeout, polling: 50 });
  result.complete_s = (Date.now() - t0) / 1000;
  result.name = await page.textContent('#torrents tbody tr .name');
  const message = await page.textContent('#message');
  if (message && message.startsWith('Added') === false && message !== '') throw new Error(`page says: ${message}`);
  await page.screenshot({ path: shot });
} catch (e) {
  result.error = e.message.split('\n')[0];
} finally {
  await close();
}
console.log(JSON.stringify(result));
process.exit(result.complete_s !== null && result.error === null ? 0 : 1);
