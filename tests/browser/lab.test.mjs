// End-to-end tests in the network-namespace lab (tests/lab/netlab.sh): ponte on a public-looking address
// (198.51.100.10), two Chromiums each in its own home behind its own NAT (cone or symmetric). Needs root.
//
//   cd tests/browser && node --test lab.test.mjs
//
// Every packet stays inside the namespaces the test creates; nothing is connected to the host's network.

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { newPage, waitConnected, sendMessage, waitForMessage, screenshot, openApp, pair } from './lib.mjs';
import { labMissing, startLab, stopLab, twoPeers } from './labkit.mjs';

const missing = labMissing();

async function chatBothWays(a, b) {
  await sendMessage(a, 'hello from home 1');
  await waitForMessage(b, 'hello from home 1');
  await sendMessage(b, 'hello from home 2');
  await waitForMessage(a, 'hello from home 2');
  await a.waitForSelector('[data-testid=message-status][data-status=delivered]');
  await b.waitForSelector('[data-testid=message-status][data-status=delivered]');
}

async function pathText(page, re) {
  await page.waitForFunction((src) => new RegExp(src, 'i').test(document.querySelector('[data-testid=path-label]').textContent), re.source, { timeout: 15000 });
  return page.getByTestId('path-label').textContent();
}

describe('NAT lab', { skip: missing || false, concurrency: 1 }, () => {
  describe('both behind cone NAT', () => {
    let lab;
    before(async () => { lab = await startLab({ nat1: 'cone', nat2: 'cone' }); });
    after(async () => stopLab(lab));

    test('request, accept, chat both ways, path shows direct', { timeout: 90000 }, async () => {
      const { a, b } = await twoPeers(lab);
      await waitConnected(a, 40000);
      await waitConnected(b, 40000);
      await chatBothWays(a, b);
      const pa = await pathText(a, /direct/);
      const pb = await pathText(b, /direct/);
      assert.doesNotMatch(pa, /relay/i);
      assert.doesNotMatch(pb, /relay/i);
      await a.getByTestId('details-toggle').click();
      await screenshot(a, 'lab-direct-desktop');
      await screenshot(b, 'lab-direct-360');
    });

    test('when the path drops the UI says so, fails over or restarts ICE, and the chat comes back', { timeout: 150000 }, async () => {
      const { a, b } = await twoPeers(lab);
      await waitConnected(a, 40000);
      await waitConnected(b, 40000);
      await pathText(a, /direct/);
      const nat1 = ['netns', 'exec', `${lab.prefix}-nat1`, 'iptables'];
      const rules = [];
      const block = (...match) => { execFileSync('ip', [...nat1, '-I', 'FORWARD', '1', ...match, '-j', 'DROP']); rules.push(match); };
      const unblockAll = () => { while (rules.length) execFileSync('ip', [...nat1, '-D', 'FORWARD', ...rules.pop(), '-j', 'DROP']); };
      try {
        // 1. Home 1's router drops UDP: the connection moves to the relay over TCP, and the path label follows.
        block('-p', 'udp');
        assert.match(await pathText(a, /TURN tcp/), /relayed through this server \(TURN tcp\)/i);
        await sendMessage(a, 'over TCP now');
        await waitForMessage(b, 'over TCP now');
        await screenshot(a, 'lab-failover-tcp-desktop');
        // 2. Everything dropped: "reconnecting", then an ICE restart once the network is back.
        block();
        await a.waitForSelector('[data-testid=connection-state][data-state=reconnecting]', { timeout: 30000 });
        await b.waitForSelector('[data-testid=connection-state][data-state=reconnecting]', { timeout: 30000 });
        await screenshot(a, 'lab-reconnecting-desktop');
        await a.waitForTimeout(4000);
        unblockAll();
        await waitConnected(a, 60000);
        await waitConnected(b, 60000);
        // Whichever path ICE settles on (direct or relayed), it is named.
        await pathText(a, /direct|relayed/);
        await sendMessage(a, 'after the path came back');
        await waitForMessage(b, 'after the path came back');
        await sendMessage(b, 'welcome back');
        await waitForMessage(a, 'welcome back');
      } finally {
        unblockAll();
      }
    });

    test('the other side relays over TCP (its router drops UDP): this side names TCP on its side, never a guessed UDP', { timeout: 120000 }, async () => {
      const nat1 = ['netns', 'exec', `${lab.prefix}-nat1`, 'iptables'];
      const rule = ['FORWARD', '-p', 'udp', '-j', 'DROP'];
      execFileSync('ip', [...nat1, '-I', ...rule]);
      try {
        const a = await newPage(lab.browsers[0]);
        const b = await newPage(lab.browsers[1], { mobile: true });
        lab.pages.push(a, b);
        const idA = await openApp(a, lab.url);
        const idB = await openApp(b, lab.url);
        // Every text B's label ever shows, from before the connection exists.
        await b.evaluate(() => {
          const label = document.querySelector('[data-testid=path-label]');
          window.pathLabels = [];
          new MutationObserver(() => window.pathLabels.push(label.textContent)).observe(label, { childList: true, characterData: true, subtree: true });
        });
        await pair(a, b, idB);
        await waitConnected(a, 40000);
        await waitConnected(b, 40000);
        assert.match(await pathText(a, /TURN tcp/), /relayed through this server \(TURN tcp\)/i);
        const dA = `${idA.slice(0, 4)}-${idA.slice(4)}`;
        assert.equal(await pathText(b, /TURN tcp, on/), `Relayed through this server (TURN tcp, on ${dA}’s side)`);
        await chatBothWays(a, b);
        await b.getByTestId('details-toggle').click();
        assert.match(await b.locator('#d-path').textContent(), /TURN tcp, on/);
        const seen = await b.evaluate(() => window.pathLabels);
        assert.deepEqual(seen.filter((x) => /udp, on/i.test(x)), [], `B never claimed UDP on A's side: ${JSON.stringify(seen)}`);
        await screenshot(b, 'lab-remote-tcp-360');
      } finally {
        execFileSync('ip', [...nat1, '-D', ...rule]);
      }
    });

    test('/diag reports STUN and TURN working', { timeout: 60000 }, async () => {
      const p = await newPage(lab.browsers[0]);
      lab.pages.push(p);
      await p.goto(`${lab.url}/diag`);
      await p.waitForSelector('body[data-done=true]', { timeout: 40000 });
      const result = (key) => p.getAttribute(`[data-testid=diag-check][data-check=${key}]`, 'data-result');
      assert.equal(await result('ws'), 'ok');
      assert.equal(await result('stun'), 'ok', 'STUN');
      assert.equal(await result('turn-udp'), 'ok', 'TURN over UDP');
      assert.equal(await result('turn-tcp'), 'ok', 'TURN over TCP');
      assert.match(await p.getByTestId('diag-summary').textContent(), /everything works/i);
      // The public address STUN saw is the NAT's WAN address.
      assert.match(await p.locator('[data-check=stun] .check-detail').textContent(), /198\.51\.100\.21/);
      await screenshot(p, 'diag-desktop', { fullPage: true });
      const m = await newPage(lab.browsers[1], { mobile: true });
      lab.pages.push(m);
      await m.goto(`${lab.url}/diag`);
      await m.waitForSelector('body[data-done=true]', { timeout: 40000 });
      await screenshot(m, 'diag-360', { fullPage: true });
    });
  });

  describe('both behind symmetric NAT', () => {
    let lab;
    before(async () => { lab = await startLab({ nat1: 'symmetric', nat2: 'symmetric' }); });
    after(async () => stopLab(lab));

    test('chat works and the path shows relayed through this server', { timeout: 90000 }, async () => {
      const { a, b } = await twoPeers(lab);
      await waitConnected(a, 40000);
      await waitConnected(b, 40000);
      await chatBothWays(a, b);
      // When the relay is on the other side, the transport shows once its `path` message arrived: wait for it.
      assert.match(await pathText(a, /relayed through this server \(TURN/), /relayed through this server \(TURN (udp|tcp)/i);
      assert.match(await pathText(b, /relayed/), /relayed through this server/i);
      await a.getByTestId('details-toggle').click();
      await screenshot(a, 'lab-relayed-desktop');
      await screenshot(b, 'lab-relayed-360');
    });
  });

  describe('symmetric NAT with TURN disabled', () => {
    let lab;
    before(async () => { lab = await startLab({ nat1: 'symmetric', nat2: 'symmetric', turn: false }); });
    after(async () => stopLab(lab));

    test('the UI shows a clear failure, not an endless spinner', { timeout: 90000 }, async () => {
      const { a, b } = await twoPeers(lab);
      const started = Date.now();
      for (const p of [a, b]) {
        await p.waitForSelector('[data-testid=connection-state][data-state=failed]', { timeout: 45000 }).catch(async (e) => {
          await screenshot(p, 'lab-failed-timeout');
          const st = await p.evaluate(async () => {
            const c = [...document.querySelectorAll('[data-testid=conversation]')].map((x) => x.dataset.peer);
            const conv = c.length ? window.ponte.conversation(c[0]) : null;
            const diag = conv ? await Promise.race([conv.link.diagnose().then((d) => JSON.stringify(d)).catch((er) => `threw ${er}`), new Promise((r) => setTimeout(() => r('hung'), 5000))]) : null;
            return { diag, timer: conv && conv.link.connectTimer, restarts: conv && conv.link.restarts, convs: c, state: conv && conv.link.state, pc: conv && conv.link.pc.connectionState, ice: conv && conv.link.pc.iceConnectionState, badge: document.querySelector('[data-testid=connection-state]').dataset.state };
          });
          throw new Error(`${e.message}\nstate: ${JSON.stringify(st)}`);
        });
        await p.getByTestId('failure').waitFor();
        const text = await p.getByTestId('failure-text').textContent();
        assert.match(text, /no path/i);
        assert.match(text, /relay \(TURN\)/i);
      }
      assert.ok(Date.now() - started < 45000);
      assert.equal(await a.getByTestId('message-input').isEnabled(), true);
      await screenshot(a, 'lab-failed-desktop');
      await screenshot(b, 'lab-failed-360');
    });
  });
});
