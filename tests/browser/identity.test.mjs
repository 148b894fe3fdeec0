// The lasting identity in Chromium with persistent profiles, against the mock server's implementation of
// docs/protocol.md "Identities, contacts and presence" (mock-server.mjs): close and reopen the browser → same ID;
// a second tab of the profile takes the ID over and the first offers "use here"; a server that refuses the key
// leaves the page anonymous, saying why.
//
//   cd tests/browser && node --test identity.test.mjs      (needs /usr/bin/chromium; no ponte binary)

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { requirements } from './lib.mjs';
import { openProfile, appPage } from './profiles.mjs';
import { startMockServer, newIdentities } from './mock-server.mjs';

const missing = requirements({ needPonte: false });

describe('a lasting identity per browser profile', { skip: missing || false }, () => {
  let server;
  const identities = newIdentities();
  const dirs = [];
  const profile = () => { const d = mkdtempSync(path.join(tmpdir(), 'ponte-profile-')); dirs.push(d); return d; };

  before(async () => { server = await startMockServer({ identities }); });
  after(async () => {
    if (server) await server.close();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  test('close and reopen the browser: the same ID, said to be lasting; another profile gets another ID', async () => {
    const dir = profile();
    let ctx = await openProfile(dir);
    let page = await appPage(ctx, server.url);
    const id = await page.evaluate(() => window.ponte.id);
    const key = await page.evaluate(() => window.ponte.identityKey);
    assert.equal(key.length, 87);
    assert.equal(await page.getByTestId('id-note').getAttribute('data-kind'), 'lasting');
    await ctx.close();
    // A server restart that kept its state (the same bindings) in between, on the same port (the origin, and so
    // the IndexedDB the key lives in, includes the port).
    const port = server.port;
    await server.close();
    server = await startMockServer({ identities, port });
    ctx = await openProfile(dir);
    page = await appPage(ctx, server.url);
    assert.equal(await page.evaluate(() => window.ponte.id), id, 'same ID after closing the browser and a restart');
    assert.equal(await page.evaluate(() => window.ponte.identityKey), key);
    assert.equal(await page.evaluate(() => window.ponte.signaling.session.restored), true);
    assert.equal(await page.getByTestId('banner').isVisible(), false, 'no "your ID changed" banner');
    await ctx.close();

    const other = await openProfile(profile());
    const p2 = await appPage(other, server.url);
    assert.notEqual(await p2.evaluate(() => window.ponte.id), id);
    assert.deepEqual(p2.errors, []);
    await other.close();
  });

  test('a second tab of the profile takes the ID; the first says so and takes it back with "use here"', async () => {
    const ctx = await openProfile(profile());
    const a = await appPage(ctx, server.url);
    const id = await a.evaluate(() => window.ponte.id);
    const b = await appPage(ctx, server.url);
    assert.equal(await b.evaluate(() => window.ponte.id), id, 'same ID in the second tab');
    await a.waitForSelector('[data-testid=server-status][data-state=taken]');
    await a.getByTestId('banner').waitFor();
    assert.match(await a.getByTestId('banner').textContent(), /another tab/);
    // It does not fight for the ID by itself.
    await a.waitForTimeout(1500);
    assert.equal(await b.getAttribute('[data-testid=server-status]', 'data-state'), 'open');
    await a.locator('#banner-action').click();
    await a.waitForSelector('[data-testid=server-status][data-state=open]');
    assert.equal(await a.evaluate(() => window.ponte.id), id);
    await b.waitForSelector('[data-testid=server-status][data-state=taken]');
    await ctx.close();
  });

  test('a server that refuses the key: the page goes on with a one-time ID and says why', async () => {
    const refusing = await startMockServer({ refuseIdentities: true });
    const ctx = await openProfile(profile());
    const page = await appPage(ctx, refusing.url);
    assert.match(await page.evaluate(() => window.ponte.id), /^[a-z2-9]{8}$/);
    assert.equal(await page.getByTestId('id-note').getAttribute('data-kind'), 'one-time');
    assert.match(await page.getByTestId('id-note').textContent(), /refused/);
    await ctx.close();
    await refusing.close();
  });
});
