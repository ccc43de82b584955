// Starts Debian's headless Chromium through playwright-core for the end-to-end scripts
// (e2e.mjs, watch.mjs): a fresh profile in a temporary folder, autoplay allowed. On a setup
// failure it prints what to install and exits with status 2.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

// Returns { context, close }: the browser context, and a function that closes it and removes
// the profile. `extraArgs` go to Chromium after the common ones.
export async function launch(extraArgs = []) {
  const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
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
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync',
        '--autoplay-policy=no-user-gesture-required', ...extraArgs],
    });
  } catch (e) {
    console.error(`cannot start ${executablePath} (${e.message.split('\n')[0]}): install the Debian package \`chromium\``);
    rmSync(userDataDir, { recursive: true, force: true });
    process.exit(2);
  }
  const close = async () => {
    await context.close();
    rmSync(userDataDir, { recursive: true, force: true });
  };
  return { context, close };
}
