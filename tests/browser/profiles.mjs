// Persistent browser profiles for the identity, contacts and history tests: closing the context and launching it
// again on the same directory is "closing and reopening the browser" (IndexedDB, the identity key, stay).

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';
import { CHROMIUM, CHROME_ARGS, waitConnected } from './lib.mjs';

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


/** Save the open conversation's person as a contact named `name` (typed into the page's name dialog, Enter).
 * `state`: how the new contact row must be present (`attached` where the contacts card may be folded away, e.g. at
 * 360 px). */
export async function saveContact(page, name, { state = 'visible' } = {}) {
  await page.getByTestId('save-contact').waitFor();
  await page.getByTestId('save-contact').click();
  await page.getByTestId('name-input').fill(name);
  await page.getByTestId('name-input').press('Enter');
  await page.getByTestId('name-dialog').waitFor({ state: 'hidden' });
  await page.locator(`[data-testid=contact-name]:text-is("${name}")`).waitFor({ state });
}

/** Profile directories and their browsers for one test file, all closed and removed by `close()`. */
export function profiles() {
  const dirs = [];
  const ctxs = [];
  return {
    profile() {
      const d = mkdtempSync(path.join(tmpdir(), 'ponte-profile-'));
      dirs.push(d);
      return d;
    },
    async browser(dir) {
      const c = await openProfile(dir);
      ctxs.push(c);
      return c;
    },
    async close() {
      for (const c of ctxs) await c.close().catch(() => {});
      for (const d of dirs) rmSync(d, { recursive: true, force: true });
    },
  };
}

/** A asks for B by ID, B accepts, both wait for the chat to open; returns both IDs. */
export async function connectPages(a, b) {
  const idA = await a.evaluate(() => window.ponte.id);
  const idB = await b.evaluate(() => window.ponte.id);
  await a.getByTestId('peer-id-input').fill(idB);
  await a.getByTestId('connect').click();
  await b.getByTestId('accept').click();
  await waitConnected(a);
  await waitConnected(b);
  return { idA, idB };
}

/** The page's confirmation dialog (dialog.js), opened by `open()`: checks the question matches `text`, that the
 * destructive button is named `action` and that the focus starts on Cancel, then answers with the action's button
 * (`confirm: true`) or Cancel. Resolves once the dialog is closed. */
export async function answerConfirm(page, open, { text, action, confirm }) {
  const dialog = page.getByTestId('confirm-dialog');
  await open();
  await dialog.waitFor();
  if (text) assert.match(await page.getByTestId('confirm-text').textContent(), text);
  if (action) assert.equal(await page.getByTestId('confirm-ok').textContent(), action);
  assert.equal(await page.evaluate(() => document.activeElement?.dataset.testid), 'confirm-cancel', 'the focus starts on Cancel');
  await page.getByTestId(confirm ? 'confirm-ok' : 'confirm-cancel').click();
  await dialog.waitFor({ state: 'hidden' });
}
