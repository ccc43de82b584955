// Drives Debian's headless Chromium with playwright-core: opens a `swarmcast get --stream` watch
// page (/watch/N, a plain <video> element reading the file with Range requests while the
// torrent downloads), waits until the video plays past 1 s from the start, then seeks to the
// middle and waits until it plays past the middle plus 1 s. Prints one JSON line:
// {"played_s": seconds from page load to 1 s played, "seek_s": seconds from the seek to 1 s
// played after it, "duration": the video's length, "error": null or a message}.
// Usage: node web/watch.mjs URL [TIMEOUT_SECONDS]   (exit 0 = both happened, 1 = not, 2 = setup)
import { launch } from './browser.mjs';

const url = process.argv[2];
const timeoutS = Number(process.argv[3] || 60);
if (!url) {
  console.error('usage: node web/watch.mjs URL [TIMEOUT_SECONDS]');
  process.exit(2);
}
const { context, close } = await launch();
const result = { played_s: null, seek_s: null, duration: null, error: null };
const deadline = Date.now() + timeoutS * 1000;
// Polls `f` in the page every 100 ms until it is true or the deadline passes.
async function until(page, f, arg) {
  for (;;) {
    const err = await page.evaluate(() => {
      const v = document.getElementById('video');
      return v && v.error ? `media error ${v.error.code}: ${v.error.message}` : null;
    });
    if (err) throw new Error(err);
    if (await page.evaluate(f, arg)) return;
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 100));
  }
}
try {
  const page = context.pages()[0] || await context.newPage();
  const t0 = Date.now();
  const response = await page.goto(url, { waitUntil: 'load' });
  if (!response || !response.ok()) throw new Error(`GET ${url}: ${response ? response.status() : 'no response'}`);
  await page.evaluate(() => document.getElementById('video').play().catch(() => {}));
  await until(page, () => document.getElementById('video').currentTime > 1);
  result.played_s = (Date.now() - t0) / 1000;
  result.duration = await page.evaluate(() => document.getElementById('video').duration);
  const mid = result.duration / 2;
  const t1 = Date.now();
  await page.evaluate((m) => { document.getElementById('video').currentTime = m; }, mid);
  await until(page, (m) => document.getElementById('video').currentTime > m + 1, mid);
  result.seek_s = (Date.now() - t1) / 1000;
} catch (e) {
  result.error = e.message;
} finally {
  await close();
}
console.log(JSON.stringify(result));
process.exit(result.played_s !== null && result.seek_s !== null ? 0 : 1);
