// One-click reconnect between saved contacts across the NAT lab (tests/lab/netlab.sh), cone and symmetric NAT:
// each home runs Chromium with a persistent profile; they chat, save each other, A's browser is closed and opened
// again, and one click on the contact reconnects (B accepts contacts automatically). Needs root.
//
// The lab serves ponte over plain http://198.51.100.10, which is not a secure context (no WebCrypto, so no
// identity): the browsers are told to treat exactly that origin as secure, as https would be.
//
//   cd tests/browser && node --test lab-identity.test.mjs     (needs the ident server as target/debug/ponte)

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { CHROME_ARGS, waitConnected, sendMessage, waitForMessage, newPage, openApp } from './lib.mjs';
import { labMissing, startLab, stopLab } from './labkit.mjs';
import { appPage, saveContact } from './profiles.mjs';

const missing = labMissing();

function openInHome(lab, home, dir, mobile = false) {
  return chromium.launchPersistentContext(dir, {
    executablePath: path.join(lab.dir, `chromium-${home}.sh`),
    headless: true,
    args: [...CHROME_ARGS, `--unsafely-treat-insecure-origin-as-secure=${lab.url}`],
    viewport: mobile ? { width: 360, height: 740 } : { width: 1280, height: 800 },
    locale: 'en-US',
    timeout: 60000,
  });
}

for (const [nat, pathRe] of [['cone', /direct/i], ['symmetric', /relay/i]]) {
  describe(`saved contacts behind ${nat} NAT`, { skip: missing || false }, () => {
    let lab;
    const dirs = [];
    const ctxs = [];
    const tmp = () => { const d = mkdtempSync(path.join(tmpdir(), 'ponte-lab-profile-')); dirs.push(d); return d; };
    before(async () => { lab = await startLab({ nat1: nat, nat2: nat }); });
    after(async () => {
      for (const c of ctxs) await c.close().catch(() => {});
      await stopLab(lab);
      for (const d of dirs) rmSync(d, { recursive: true, force: true });
    });

    test('without the secure-origin exception the page is anonymous on plain http and says why', { skip: nat !== 'cone' && 'once is enough' }, async () => {
      const p = await newPage(lab.browsers[0]);
      lab.pages.push(p);
      await openApp(p, lab.url);
      assert.equal(await p.getByTestId('id-note').getAttribute('data-kind'), 'one-time');
      assert.match(await p.getByTestId('id-note').textContent(), /not secure/);
      assert.ok(!(await p.evaluate(() => window.ponte.identityKey)), 'no key');
    });

    test('chat, save each other, close and reopen A, one click reconnects', { timeout: 180000 }, async () => {
      const dirA = tmp();
      let ctxA = await openInHome(lab, 'h1', dirA);
      const ctxB = await openInHome(lab, 'h2', tmp(), true);
      ctxs.push(ctxA, ctxB);
      let a = await appPage(ctxA, lab.url);
      const b = await appPage(ctxB, lab.url);
      assert.equal(await a.getByTestId('id-note').getAttribute('data-kind'), 'lasting');
      const idA = await a.evaluate(() => window.ponte.id);
      const idB = await b.evaluate(() => window.ponte.id);
      await a.getByTestId('peer-id-input').fill(idB);
      await a.getByTestId('connect').click();
      await b.getByTestId('accept').click();
      await waitConnected(a, 40000);
      await waitConnected(b, 40000);
      await saveContact(a, 'Bob', { state: 'attached' });
      await saveContact(b, 'Alice', { state: 'attached' });
      await b.getByTestId('back').click(); // a phone shows the list again
      await b.getByTestId('auto-accept').check();
      await ctxA.close();

      ctxA = await openInHome(lab, 'h1', dirA);
      ctxs.push(ctxA);
      a = await appPage(ctxA, lab.url);
      assert.equal(await a.evaluate(() => window.ponte.id), idA);
      await a.waitForSelector(`[data-testid=contact][data-peer="${idB}"][data-online=true]`, { timeout: 20000 });
      await a.locator(`[data-testid=contact][data-peer="${idB}"] [data-testid=contact-connect]`).click();
      await waitConnected(a, 40000);
      await b.waitForFunction((p) => window.ponte.conversation(p)?.link.state === 'connected', idA, { timeout: 40000 });
      assert.equal(await b.getByTestId('incoming-request').count(), 0, 'accepted automatically');
      await sendMessage(a, `back again through ${nat} NAT`);
      await waitForMessage(b, `back again through ${nat} NAT`);
      await a.waitForFunction((src) => new RegExp(src, 'i').test(document.querySelector('[data-testid=path-label]').textContent), pathRe.source, { timeout: 15000 });
      await a.waitForFunction((p) => window.ponte.conversation(p)?.binding === 'ok', idB);
    });
  });
}
