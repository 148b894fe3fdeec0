// Keys verified once, in Chromium with persistent profiles against the mock server: the security code of two
// identities is the same on both sides and on every connection, "mark as verified" survives closing both
// browsers, every connection's DTLS fingerprints are signed by the identity keys, and a forged binding is a loud
// warning.
//
//   cd tests/browser && node --test verify.test.mjs      (needs /usr/bin/chromium; no ponte binary)

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { requirements, waitConnected } from './lib.mjs';
import { startMockServer, newIdentities } from './mock-server.mjs';
import { appPage, saveContact, profiles, connectPages } from './profiles.mjs';

const missing = requirements({ needPonte: false });

async function code(page) {
  if (!(await page.locator('#details').isVisible())) await page.getByTestId('details-toggle').click();
  await page.waitForSelector('[data-testid=security-code][data-kind=identity]');
  return page.getByTestId('security-code').textContent();
}

const binding = (page, peer) => page.waitForFunction((p) => window.ponte.conversation(p)?.binding, peer, { timeout: 15000 })
  .then(() => page.evaluate((p) => window.ponte.conversation(p).binding, peer));

describe('keys verified once', { skip: missing || false }, () => {
  let server;
  const { profile, browser, close: closeProfiles } = profiles();

  before(async () => { server = await startMockServer({ identities: newIdentities(), grace: 500 }); });
  after(async () => {
    await closeProfiles();
    if (server) await server.close();
  });

  test('a stable code, verified once and kept; fingerprints bound to the keys; a forged binding warns', async () => {
    const dirA = profile();
    const dirB = profile();
    let ctxA = await browser(dirA);
    let ctxB = await browser(dirB);
    let a = await appPage(ctxA, server.url);
    let b = await appPage(ctxB, server.url);
    const { idA, idB } = await connectPages(a, b);
    const first = await code(a);
    assert.match(first, /^\d{4}( \d{4}){4}$/);
    assert.equal(await code(b), first, 'the same code on both sides');
    assert.equal(await binding(a, idB), 'ok');
    assert.equal(await binding(b, idA), 'ok');
    assert.equal(await a.getByTestId('verify-state').getAttribute('data-state'), 'unverified');
    assert.equal(await a.getByTestId('mark-verified').isVisible(), false, 'save the contact first');
    await saveContact(a, 'Bob');
    await saveContact(b, 'Alice');
    await a.getByTestId('mark-verified').click();
    await a.waitForSelector('[data-testid=verify-state][data-state=verified]');
    await a.waitForSelector(`[data-testid=contact][data-peer="${idB}"][data-verified=true]`);
    await ctxA.close();
    await ctxB.close();

    // Both browsers closed and opened again; a new connection (new DTLS certificates): the same code, still verified.
    ctxA = await browser(dirA);
    ctxB = await browser(dirB);
    a = await appPage(ctxA, server.url);
    b = await appPage(ctxB, server.url);
    await b.getByTestId('auto-accept').check();
    await a.waitForSelector(`[data-testid=contact][data-peer="${idB}"][data-online=true][data-verified=true]`);
    await a.locator(`[data-testid=contact][data-peer="${idB}"] [data-testid=contact-connect]`).click();
    await waitConnected(a);
    await waitConnected(b);
    assert.equal(await code(a), first, 'the code did not change with the connection');
    assert.equal(await a.getByTestId('verify-state').getAttribute('data-state'), 'verified');
    assert.equal(await binding(a, idB), 'ok');

    // A binding that does not verify (what a man in the middle would have to send): a loud warning.
    await b.evaluate((p) => {
      const c = window.ponte.conversation(p);
      c.link.send({ t: 'id-bind', key: window.ponte.identityKey, sig: 'A'.repeat(86) });
    }, idA);
    await a.waitForSelector('[data-testid=verify-state][data-state=mismatch]');
    assert.match(await a.locator('[data-testid=system-message][data-kind=warning]').last().textContent(), /not signed by their identity key/);
    assert.match(await a.getByTestId('banner').textContent(), /Somebody may be in the middle/);
  });
});
