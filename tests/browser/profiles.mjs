// Persistent browser profiles for the identity, contacts and history tests: closing the context and launching it
// again on the same directory is "closing and reopening the browser" (IndexedDB, the identity key, stay).

import { chromium } from 'playwright-core';
import { CHROMIUM, CHROME_ARGS } from './lib.mjs';

/** A browser with its own profile directory: closing and launching it again is "closing and reopening the browser". */
export async function openProfile(dir, { mobile = false } = {}) {
  const ctx = await chromium.launchPersistentContext(dir, {
    executablePath: CHROMIUM,
    headless: true,
    args: [...CHROME_ARGS, '--allow-loopback-in-peer-connection'],
    viewport: mobile ? { width: 360, height: 740 } : { width: 1280, height: 800 },
    locale: 'en-US',
    timeout: 60000,
  });
  return ctx;
}

export async function appPage(ctx, url) {
  const page = ctx.pages()[0] && ctx.pages()[0].url() === 'about:blank' ? ctx.pages()[0] : await ctx.newPage();
  page.errors = [];
  page.on('pageerror', (e) => page.errors.push(String(e)));
  await page.goto(url);
  await page.waitForFunction(() => window.ponte && window.ponte.id, null, { timeout: 15000 });
  return page;
}

