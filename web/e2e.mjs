// Drives Debian's headless Chromium with playwright-core: opens a Swarmcast web player page,
// polls its JSON status (<pre id="status">) until the video has ended, an error is reported, or
// the time limit passes, then prints the last status as one JSON line on stdout.
// Usage: node web/e2e.mjs URL [TIMEOUT_SECONDS]   (exit 0 = ended, 1 = not ended, 2 = setup error)
import { launch } from './browser.mjs';

const url = process.argv[2];
const timeoutS = Number(process.argv[3] || 60);
if (!url) {
  console.error('usage: node web/e2e.mjs URL [TIMEOUT_SECONDS]');
  process.exit(2);
}
const { context, close } = await launch(['--disable-quic']);
let status = null;
let code = 1;
try {
  const page = context.pages()[0] || await context.newPage();
  const consoleLines = [];
  page.on('console', (m) => { if (m.type() === 'error') consoleLines.push(m.text()); });
  page.on('pageerror', (e) => consoleLines.push(`page error: ${e.message}`));
  const response = await page.goto(url, { waitUntil: 'load' });
  if (!response || !response.ok()) {
    status = { state: 'error', errors: [`GET ${url}: ${response ? response.status() : 'no response'}`] };
  } else {
    const deadline = Date.now() + timeoutS * 1000;
    for (;;) {
      const text = await page.textContent('#status');
      try { status = JSON.parse(text); } catch { status = { state: 'error', errors: [`bad status: ${text}`] }; }
      if (status.ended || status.state === 'error' || Date.now() > deadline) break;
      await new Promise((r) => setTimeout(r, 250));
    }
  }
  status.console = consoleLines;
  code = status.ended ? 0 : 1;
} finally {
  await close();
}
console.log(JSON.stringify(status));
process.exit(code);
