// Identities, contacts, presence, auto-accept, the fingerprint binding and history against the REAL server (not
// the mock): Chromium persistent profiles; ponte restarted on the same port with its state directory keeps the
// bindings, so both browsers come back with their IDs and their contacts online.
//
//   cd tests/browser && node --test identity-ponte.test.mjs      (needs target/debug/ponte and /usr/bin/chromium)

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { requirements, startPonte, freeTcpPort, freeUdpTcpPort, waitConnected, sendMessage, waitForMessage } from './lib.mjs';
import { openProfile, appPage, saveContact } from './profiles.mjs';

const missing = requirements();

describe('identities with the real server', { skip: missing || false }, () => {
  let server;
  let toml;
  const dirs = [];
  const ctxs = [];
  const tmp = (p) => { const d = mkdtempSync(path.join(tmpdir(), p)); dirs.push(d); return d; };
  const browser = async (dir) => { const c = await openProfile(dir); ctxs.push(c); return c; };

  before(async () => {
    const http = await freeTcpPort();
    const turn = await freeUdpTcpPort();
    toml = `[http]
listen = "127.0.0.1:${http}"
[turn]
listen_udp = ["127.0.0.1:${turn}"]
listen_tcp = ["127.0.0.1:${turn}"]
[signaling]
state_dir = ${JSON.stringify(tmp('ponte-state-'))}
`;
    server = await startPonte({ toml });
  });
  after(async () => {
    for (const c of ctxs) await c.close().catch(() => {});
    if (server) await server.stop();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  test('same IDs after closing the browsers and restarting ponte; contacts online; one click reconnects; binding ok; history kept', async () => {
    const dirA = tmp('ponte-profile-');
    const dirB = tmp('ponte-profile-');
    let ctxA = await browser(dirA);
    let ctxB = await browser(dirB);
    let a = await appPage(ctxA, server.url);
    let b = await appPage(ctxB, server.url);
    const idA = await a.evaluate(() => window.ponte.id);
    const idB = await b.evaluate(() => window.ponte.id);
    assert.equal(await a.getByTestId('id-note').getAttribute('data-kind'), 'lasting');
    await a.getByTestId('peer-id-input').fill(idB);
    await a.getByTestId('connect').click();
    await b.getByTestId('accept').click();
    await waitConnected(a);
    await waitConnected(b);
    await a.waitForFunction((p) => window.ponte.conversation(p)?.binding === 'ok', idB);
    await b.waitForFunction((p) => window.ponte.conversation(p)?.binding === 'ok', idA);
    await saveContact(a, 'Bob');
    await saveContact(b, 'Alice');
    await a.waitForSelector(`[data-testid=contact][data-peer="${idB}"][data-online=true]`);
    await b.waitForSelector(`[data-testid=contact][data-peer="${idA}"][data-online=true]`);
    await sendMessage(a, 'kept across everything');
    await waitForMessage(b, 'kept across everything');
    await b.getByTestId('auto-accept').check();
    await ctxA.close();
    await ctxB.close();

    // ponte restarts (same port, same state directory).
    const cfgToml = toml;
    await server.stop();
    server = await startPonte({ toml: cfgToml });

    ctxA = await browser(dirA);
    ctxB = await browser(dirB);
    a = await appPage(ctxA, server.url);
    b = await appPage(ctxB, server.url);
    assert.equal(await a.evaluate(() => window.ponte.id), idA, 'A keeps its ID');
    assert.equal(await b.evaluate(() => window.ponte.id), idB, 'B keeps its ID');
    await a.waitForSelector(`[data-testid=contact][data-peer="${idB}"][data-online=true]`);
    await a.locator(`[data-testid=contact][data-peer="${idB}"] [data-testid=contact-connect]`).click();
    await waitConnected(a);
    await waitConnected(b);
    assert.equal(await b.getByTestId('incoming-request').count(), 0, 'accepted automatically');
    await a.waitForFunction((p) => window.ponte.conversation(p)?.binding === 'ok', idB);
    await waitForMessage(a, 'kept across everything');
    await waitForMessage(b, 'kept across everything');
  });

  test('a second tab of a profile takes the ID over (4002) and "use here" takes it back', async () => {
    const ctx = await browser(tmp('ponte-profile-'));
    const a = await appPage(ctx, server.url);
    const id = await a.evaluate(() => window.ponte.id);
    const b = await appPage(ctx, server.url);
    assert.equal(await b.evaluate(() => window.ponte.id), id);
    await a.waitForSelector('[data-testid=server-status][data-state=taken]');
    await a.locator('#banner-action').click();
    await a.waitForSelector('[data-testid=server-status][data-state=open]');
    await b.waitForSelector('[data-testid=server-status][data-state=taken]');
    assert.equal(await a.evaluate(() => window.ponte.id), id);
  });
});
