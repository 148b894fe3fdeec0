// Identities, contacts, history and verification in Firefox (Debian's firefox-esr, puppeteer-core over WebDriver
// BiDi) with persistent profile directories, against the mock server: close and reopen both browsers → the same
// IDs, contacts online, history, verified state; the fingerprint binding checks out.
//
//   cd tests/browser && node --test firefox-identity.test.mjs     (needs /usr/bin/firefox-esr; no ponte binary)

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import puppeteer from 'puppeteer-core';
import { startMockServer, newIdentities } from './mock-server.mjs';

const FIREFOX = process.env.FIREFOX || '/usr/bin/firefox-esr';
function missingFirefox() {
  if (existsSync(FIREFOX)) return null;
  if (process.env.CI === 'true') throw new Error(`Firefox tests cannot run, missing ${FIREFOX}`);
  return `missing ${FIREFOX} (apt-get install -y firefox-esr)`;
}

async function openFirefox(userDataDir) {
  const browser = await puppeteer.launch({
    browser: 'firefox',
    executablePath: FIREFOX,
    headless: true,
    timeout: 60000,
    userDataDir,
    extraPrefsFirefox: {
      'media.peerconnection.ice.loopback': true,
      'media.peerconnection.ice.obfuscate_host_addresses': false,
      'intl.accept_languages': 'en-US',
    },
  });
  const page = (await browser.pages())[0] || await browser.newPage();
  await page.setViewport({ width: 1280, height: 800 });
  return { browser, page };
}

async function app(page, url) {
  await page.goto(url);
  await page.waitForFunction(() => window.ponte && window.ponte.id, { timeout: 20000 });
  return page.evaluate(() => window.ponte.id);
}

const click = (page, sel) => page.locator(sel).click();
const connected = (page) => page.waitForSelector('[data-testid=connection-state][data-state=connected]', { timeout: 30000 });

async function saveContact(page, name) {
  await page.waitForSelector('[data-testid=save-contact]:not([hidden])');
  // The name dialog of the page (contacts.js), typed into and submitted with Enter.
  await click(page, '[data-testid=save-contact]');
  await page.waitForSelector('[data-testid=name-dialog][open]');
  await page.type('[data-testid=name-input]', name);
  await page.keyboard.press('Enter');
  await page.waitForFunction((n) => [...document.querySelectorAll('[data-testid=contact-name]')].some((x) => x.textContent === n), {}, name);
}

describe('identities in Firefox', { skip: missingFirefox() || false }, () => {
  let server;
  const dirs = [];
  const open = [];
  const tmp = () => { const d = mkdtempSync(path.join(tmpdir(), 'ponte-ff-profile-')); dirs.push(d); return d; };

  before(async () => { server = await startMockServer({ identities: newIdentities(), grace: 500 }); });
  after(async () => {
    for (const b of open) await b.close().catch(() => {});
    if (server) await server.close();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  test('close and reopen both Firefoxes: same IDs, contacts online, history, verified state, binding ok', async () => {
    const dirA = tmp();
    const dirB = tmp();
    let A = await openFirefox(dirA);
    let B = await openFirefox(dirB);
    open.push(A.browser, B.browser);
    const idA = await app(A.page, server.url);
    const idB = await app(B.page, server.url);
    assert.equal(await A.page.$eval('[data-testid=id-note]', (e) => e.dataset.kind), 'lasting');
    await A.page.locator('[data-testid=peer-id-input]').fill(idB);
    await click(A.page, '[data-testid=connect]');
    await click(B.page, '[data-testid=accept]');
    await connected(A.page);
    await connected(B.page);
    await A.page.waitForFunction((p) => window.ponte.conversation(p)?.binding === 'ok', {}, idB);
    await saveContact(A.page, 'Bob');
    await saveContact(B.page, 'Alice');
    await A.page.locator('[data-testid=message-input]').fill('hello from firefox');
    await A.page.keyboard.press('Enter');
    await B.page.waitForFunction(() => [...document.querySelectorAll('[data-testid=message-text]')].some((x) => x.textContent === 'hello from firefox'));
    await click(A.page, '[data-testid=details-toggle]');
    const code = await A.page.$eval('[data-testid=security-code]', (e) => e.textContent);
    await click(A.page, '[data-testid=mark-verified]');
    await A.page.waitForSelector('[data-testid=verify-state][data-state=verified]');
    await A.browser.close();
    await B.browser.close();

    A = await openFirefox(dirA);
    B = await openFirefox(dirB);
    open.push(A.browser, B.browser);
    assert.equal(await app(A.page, server.url), idA);
    assert.equal(await app(B.page, server.url), idB);
    await A.page.waitForSelector(`[data-testid=contact][data-peer="${idB}"][data-online=true][data-verified=true]`);
    await click(A.page, `[data-testid=contact][data-peer="${idB}"] [data-testid=contact-connect]`);
    await B.page.waitForSelector(`[data-testid=incoming-request][data-peer="${idA}"]`);
    await click(B.page, '[data-testid=accept]');
    await connected(A.page);
    await A.page.waitForFunction((p) => window.ponte.conversation(p)?.binding === 'ok', {}, idB);
    await A.page.waitForSelector('[data-testid=history-end]');
    assert.ok(await A.page.$$eval('[data-testid=message-text]', (xs) => xs.some((x) => x.textContent === 'hello from firefox')));
    await click(A.page, '[data-testid=details-toggle]');
    await A.page.waitForSelector('[data-testid=verify-state][data-state=verified]');
    assert.equal(await A.page.$eval('[data-testid=security-code]', (e) => e.textContent), code);
  });
});
