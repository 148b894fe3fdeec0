// Fault tests (issue 7): ponte killed or stopped under live chats.
//
//   cd tests/browser && node --test --test-concurrency=1 faults.test.mjs
//
// - NAT lab (root), ponte with a state dir: a direct cone/cone chat survives `kill -9` of ponte; after the restart
//   both pages come back online with the SAME IDs (signed tokens) and re-pair without a click (pairing tickets).
// - NAT lab, symmetric/symmetric, so the chat is relayed by ponte's TURN: `kill -9` takes the relay down with it,
//   the pages say "reconnecting" (not "failed"); after the restart they get their IDs back, re-pair by ticket,
//   restart ICE on the same RTCPeerConnection with the new TURN credentials, and the same conversation goes on,
//   relayed again.
// - Loopback, ponte with no lasting key (no state dir, no TURN secret): SIGTERM while one side streams messages:
//   ponte exits 0 within 5 s, the pages see a clean close (1001), the stream is not interrupted, and the pages
//   reconnect once ponte is back, with new IDs, and re-pair over the still-open chat channel.
//
// Every packet stays on loopback or inside the namespaces the lab creates.

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import {
  requirements, launch, newPage, startPonte, freeTcpPort, loopbackToml, openApp, pair, waitConnected, sendMessage,
  waitForMessage, screenshot,
} from './lib.mjs';
import { labMissing, startLab, stopLab, twoPeers, restartServer } from './labkit.mjs';

const labWhy = labMissing();
const loopWhy = requirements();

/** Send a signal to ponte itself (not a wrapper) and wait for it to exit; resolves { code, signal, ms }. */
async function signalPonte(server, sig) {
  const { proc } = server;
  assert.equal(readFileSync(`/proc/${proc.pid}/comm`, 'utf8').trim(), 'ponte', 'the handle is the ponte process');
  const started = Date.now();
  const exited = new Promise((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal, ms: Date.now() - started })));
  proc.kill(sig);
  return exited;
}

const offline = (p) => p.waitForSelector('[data-testid=server-status]:not([data-state=open]):not([data-state=connecting])', { timeout: 30000 });
const online = (p, timeout = 45000) => p.waitForSelector('[data-testid=server-status][data-state=open]', { timeout });

async function pathText(page, re) {
  await page.waitForFunction((src) => new RegExp(src, 'i').test(document.querySelector('[data-testid=path-label]').textContent), re.source, { timeout: 15000 });
  return page.getByTestId('path-label').textContent();
}

/** After a restart of ponte with its state dir: both pages have their IDs back and re-paired without a click. */
async function restored(a, b, idA, idB) {
  for (const [p, id, other] of [[a, idA, idB], [b, idB, idA]]) {
    assert.equal(await p.evaluate(() => window.ponte.id), id, 'the ID survives the restart');
    assert.equal((await p.getByTestId('my-id').textContent()).replace('-', ''), id);
    assert.equal(await p.evaluate(() => window.ponte.signaling.session.restored), true);
    await p.waitForFunction((peer) => window.ponte.conversation(peer)?.serverPaired === true, other, { timeout: 30000 });
    assert.equal(await p.locator('[data-testid=conversation]').count(), 1, 'still the one conversation');
    assert.equal(await p.getByTestId('incoming-request').count(), 0, 'the re-pairing needs no click');
    assert.ok(await p.getByTestId('banner').isHidden(), 'no "new ID" banner');
  }
}

/** After a server restart: both pages have new IDs and silently re-pair with each other on the new server. */
async function repaired(a, b, idA, idB) {
  const newA = await a.evaluate(() => window.ponte.id);
  const newB = await b.evaluate(() => window.ponte.id);
  assert.notEqual(newA, idA, 'IDs do not survive a server restart');
  assert.notEqual(newB, idB, 'IDs do not survive a server restart');
  assert.equal((await a.getByTestId('my-id').textContent()).replace('-', ''), newA);
  assert.equal((await b.getByTestId('my-id').textContent()).replace('-', ''), newB);
  assert.match(await a.getByTestId('banner').textContent(), /new ID/);
  await a.waitForFunction((id) => window.ponte.conversation(id)?.serverPaired === true, newB, { timeout: 30000 });
  await b.waitForFunction((id) => window.ponte.conversation(id)?.serverPaired === true, newA, { timeout: 30000 });
  assert.equal(await a.locator(`[data-testid=conversation][data-peer="${newB}"]`).count(), 1);
  assert.equal(await b.locator(`[data-testid=conversation][data-peer="${newA}"]`).count(), 1);
  assert.equal(await a.getByTestId('incoming-request').count(), 0, 'the re-pairing needs no click');
  assert.equal(await b.getByTestId('incoming-request').count(), 0, 'the re-pairing needs no click');
  return { newA, newB };
}

describe('faults in the NAT lab', { skip: labWhy || false, concurrency: 1 }, () => {
  describe('both behind cone NAT', () => {
    let lab;
    before(async () => { lab = await startLab({ nat1: 'cone', nat2: 'cone' }); });
    after(async () => stopLab(lab));

    test('kill -9 of ponte: the direct chat goes on; after the restart both come back with their IDs and re-pair', { timeout: 180000 }, async () => {
      const { a, b, idB } = await twoPeers(lab);
      const idA = await a.evaluate(() => window.ponte.id);
      await waitConnected(a, 40000);
      await waitConnected(b, 40000);
      await pathText(a, /direct/);
      await pathText(b, /direct/);
      await sendMessage(a, 'before the crash');
      await waitForMessage(b, 'before the crash');

      const killed = await signalPonte(lab.server, 'SIGKILL');
      assert.equal(killed.signal, 'SIGKILL');
      await offline(a);
      await offline(b);
      // The direct path does not need the server.
      await sendMessage(a, 'while ponte is dead');
      await waitForMessage(b, 'while ponte is dead');
      await sendMessage(b, 'still talking');
      await waitForMessage(a, 'still talking');
      assert.equal(await a.getByTestId('connection-state').getAttribute('data-state'), 'connected');
      assert.equal(await b.getByTestId('connection-state').getAttribute('data-state'), 'connected');
      assert.doesNotMatch(await pathText(a, /direct/), /relay/i);
      assert.doesNotMatch(await pathText(b, /direct/), /relay/i);
      await screenshot(a, 'fault-kill9-server-dead-desktop');

      await restartServer(lab);
      await online(a);
      await online(b);
      await sendMessage(a, 'after the restart');
      await waitForMessage(b, 'after the restart');
      await sendMessage(b, 'welcome back');
      await waitForMessage(a, 'welcome back');
      await restored(a, b, idA, idB);
      await screenshot(b, 'fault-kill9-restarted-360');
    });
  });

  describe('both behind symmetric NAT (relayed)', () => {
    let lab;
    before(async () => { lab = await startLab({ nat1: 'symmetric', nat2: 'symmetric' }); });
    after(async () => stopLab(lab));

    test('kill -9 of ponte under a relayed chat: same IDs, re-paired without a click, ICE restarted over the new relay', { timeout: 240000 }, async () => {
      const { a, b, idB } = await twoPeers(lab);
      const idA = await a.evaluate(() => window.ponte.id);
      await waitConnected(a, 40000);
      await waitConnected(b, 40000);
      await pathText(a, /relay/);
      await pathText(b, /relay/);
      await sendMessage(a, 'before the crash');
      await waitForMessage(b, 'before the crash');
      await sendMessage(b, 'relayed hello');
      await waitForMessage(a, 'relayed hello');
      // The RTCPeerConnection must be the same one afterwards (an ICE restart, not a new conversation).
      for (const [p, peer] of [[a, idB], [b, idA]]) {
        await p.evaluate((peer) => { window.pcBefore = window.ponte.conversation(peer).link.pc; }, peer);
      }

      const killed = await signalPonte(lab.server, 'SIGKILL');
      assert.equal(killed.signal, 'SIGKILL');
      await offline(a);
      await offline(b);
      // The relay died with ponte: the path is down, and the pages say so without giving up.
      for (const p of [a, b]) {
        await p.waitForSelector('[data-testid=connection-state][data-state=reconnecting]', { timeout: 45000 });
      }
      await b.waitForTimeout(3000);
      for (const p of [a, b]) assert.equal(await p.getByTestId('connection-state').getAttribute('data-state'), 'reconnecting', 'no "failed" while the server is away');
      await screenshot(a, 'fault-kill9-relayed-reconnecting-desktop');

      await restartServer(lab);
      await online(a);
      await online(b);
      await restored(a, b, idA, idB);
      await waitConnected(a, 60000);
      await waitConnected(b, 60000);
      assert.match(await pathText(a, /relay/), /relay/i);
      assert.match(await pathText(b, /relay/), /relay/i);
      for (const [p, peer] of [[a, idB], [b, idA]]) {
        assert.ok(await p.evaluate((peer) => window.ponte.conversation(peer).link.pc === window.pcBefore, peer), 'same RTCPeerConnection (ICE restart)');
      }
      await sendMessage(a, 'after the restart');
      await waitForMessage(b, 'after the restart');
      await sendMessage(b, 'relayed again');
      await waitForMessage(a, 'relayed again');
      // The same conversation view: what was said before the crash is still there.
      await waitForMessage(b, 'before the crash', 1000);
      await waitForMessage(a, 'relayed hello', 1000);
      assert.match(await b.locator('#messages').textContent(), /reconnected with/i);
      await screenshot(b, 'fault-kill9-relayed-restored-360');
      await screenshot(a, 'fault-kill9-relayed-restored-desktop');
    });
  });
});

describe('faults on loopback', { skip: loopWhy || false }, () => {
  let browser;
  const pages = [];
  before(async () => { browser = await launch({ extraArgs: ['--allow-loopback-in-peer-connection'] }); });
  after(async () => {
    for (const p of pages) if (p.errors.length) console.log(`page errors: ${p.errors.join(' | ')}`);
    if (browser) await browser.close();
  });

  test('SIGTERM during traffic: exit 0 within 5 s, clean close 1001, the stream goes on, the pages reconnect', { timeout: 150000 }, async () => {
    const toml = await loopbackToml({ port: await freeTcpPort() });
    let server = await startPonte({ toml, name: 'ponte to be stopped' });
    let stopPump = false;
    let pump = null;
    try {
      const a = await newPage(browser);
      const b = await newPage(browser);
      pages.push(a, b);
      const idA = await openApp(a, server.url);
      const idB = await openApp(b, server.url);
      await pair(a, b, idB);
      await waitConnected(a);
      await waitConnected(b);
      // Record the close codes the pages' signaling sees.
      for (const p of [a, b]) {
        await p.evaluate(() => {
          window.closeCodes = [];
          window.ponte.signaling.addEventListener('state', (e) => { if (e.detail.state === 'closed') window.closeCodes.push(e.detail.code); });
        });
      }

      // A steady stream of messages from A while ponte shuts down.
      let sent = 0;
      pump = (async () => {
        while (!stopPump) {
          sent += 1;
          await sendMessage(a, `tick ${sent}`);
          await a.waitForTimeout(100);
        }
      })();
      await waitForMessage(b, 'tick 5');

      const stopped = await signalPonte(server, 'SIGTERM');
      assert.equal(stopped.signal, null, `ponte died of ${stopped.signal}`);
      assert.equal(stopped.code, 0, `exit code\n${server.log.slice(-2000)}`);
      assert.ok(stopped.ms < 5000, `ponte took ${stopped.ms} ms to stop`);
      assert.match(server.log, /SIGTERM/);
      for (const p of [a, b]) {
        await p.waitForFunction(() => window.closeCodes.length > 0, null, { timeout: 10000 });
        assert.equal(await p.evaluate(() => window.closeCodes[0]), 1001, 'a clean close: server shutting down');
      }
      await offline(a);
      await offline(b);
      // The stream goes on over the direct path.
      const mark = sent + 5;
      await waitForMessage(b, `tick ${mark}`);
      stopPump = true;
      await pump;
      await waitForMessage(b, `tick ${sent}`);
      assert.equal(await a.getByTestId('connection-state').getAttribute('data-state'), 'connected');

      server = await startPonte({ toml, name: 'ponte started again' });
      await online(a);
      await online(b);
      await sendMessage(b, 'after the stop');
      await waitForMessage(a, 'after the stop');
      await repaired(a, b, idA, idB);
    } finally {
      stopPump = true;
      if (pump) await pump.catch(() => {});
      await server.stop();
    }
  });
});
