// Drives Debian's headless Chromium with playwright-core: opens a Swarmcast web player page,
// polls its JSON status (<pre id="status">) until the video has ended, an error is reported, or
// the time limit passes, then prints the last status as one JSON line on stdout.
// Usage: node web/e2e.mjs URL [TIMEOUT_SECONDS]   (exit 0 = ended, 1 = not ended, 2 = setup error)
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const url = process.argv[2];
const timeoutS = Number(process.argv[3] || 60);
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
if (!url) {
  console.error('usage: node web/e2e.mjs URL [TIMEOUT_SECONDS]');
  process.exit(2);
}
let chromium;
try {
  ({ chromium } = await import('playwright-core'));
} catch (e) {
  console.error(`cannot load playwright-core (${e.message}): run \`npm ci --prefix web\``);
  process.exit(2);
}
const userDataDir = mkdtempSync(join(tmpdir(), 'swarmcast-chromium-'));
let context;
try {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--autoplay-policy=no-user-gesture-required'],
  });
} catch (e) {
  console.error(`cannot start ${executablePath} (${e.message.split('\n')[0]}): install the Debian package \`chromium\``);
  rmSync(userDataDir, { recursive: true, force: true });
  process.exit(2);
}
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
  await context.close();
  rmSync(userDataDir, { recursive: true, force: true });
}
console.log(JSON.stringify(status));
process.exit(code);
