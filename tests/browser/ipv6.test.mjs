// IPv6 in the browser (issue #19), against the real ponte binary on loopback:
// - ponte listening and relaying on [::1] only (how a home reachable only over IPv6 looks from the inside): the
//   app's share link is an IPv6 URL, /diag gets an IPv6 relay from TURN (it got 440 before, and /diag said the relay
//   "could not be reached"), and two browsers chat through it;
// - /diag names a refusal as a refusal: a relay that answers with an error code was reached.
// - a DS-Lite home in the NAT lab (tests/lab/dslite.sh, needs root): the server's IPv4 is behind the provider's
//   CGNAT, so it is reachable only over IPv6 through its router's IPv6 firewall; two dual-stack phones outside chat
//   through it, directly when their firewalls let hole punching through and through the IPv6 relay otherwise, and a
//   laptop at home chats with a phone.
//
//   cd tests/browser && node --test ipv6.test.mjs     (needs target/debug/ponte and /usr/bin/chromium)
//
// Lab traffic stays inside the namespaces the test creates (TEST-NET-2, 2001:db8::/32, 10.77/16, 100.64/10).

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import net from 'node:net';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  PONTE, requirements, launch, newPage, startPonte, openApp, pair, waitConnected, sendMessage,
  waitForMessage, screenshot,
} from './lib.mjs';
import { labMissing, labPrefix, labScript, settleLab, launchIn, teardownLab, inNode } from './labkit.mjs';

const missing = requirements();

function hasIpv6Loopback() {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen(0, '::1', () => s.close(() => resolve(true)));
  });
}

/** A port free on [::1] for UDP and TCP. */
async function freePort6() {
  for (let i = 0; i < 20; i++) {
    const port = await new Promise((resolve, reject) => {
      const s = net.createServer();
      s.once('error', reject);
      s.listen(0, '::1', () => { const { port: p } = s.address(); s.close(() => resolve(p)); });
    });
    const ok = await new Promise((resolve) => {
      const u = dgram.createSocket({ type: 'udp6', ipv6Only: true });
      u.once('error', () => resolve(false));
      u.bind(port, '::1', () => u.close(() => resolve(true)));
    });
    if (ok) return port;
  }
  throw new Error('no free port on [::1]');
}

const check = (p, key) => p.getAttribute(`[data-testid=diag-check][data-check=${key}]`, 'data-result');
const detail = (p, key) => p.locator(`[data-testid=diag-check][data-check=${key}] .check-detail`).textContent();

describe('IPv6 on loopback', { skip: missing || false }, () => {
  let browser;
  const servers = [];
  const pages = [];
  let v6 = true;
  const open = async (opts) => {
    const p = await newPage(browser, opts);
    pages.push(p);
    return p;
  };

  before(async () => {
    v6 = await hasIpv6Loopback();
    if (!v6 && process.env.CI === 'true') throw new Error('no IPv6 loopback (CI=true)');
    browser = await launch({ extraArgs: ['--allow-loopback-in-peer-connection'] });
  });

  after(async () => {
    for (const p of pages) if (p.errors.length) console.log(`page errors: ${p.errors.join(' | ')}`);
    if (browser) await browser.close();
    for (const s of servers) await s.stop();
  });

  test('an IPv6-only ponte: IPv6 share link, /diag gets an IPv6 relay, two browsers chat', async (t) => {
    if (!v6) { t.skip('no IPv6 loopback'); return; }
    const port = await freePort6();
    const server = await startPonte({
      name: 'ponte-v6',
      toml: `[http]
listen = "[::1]:0"
[turn]
listen_udp = ["[::1]:${port}"]
listen_tcp = ["[::1]:${port}"]
relay_ip = "::1"
allow_peers = ["::1/128"]
`,
    });
    servers.push(server);
    assert.match(server.url, /^http:\/\/\[::1\]:\d+$/);
    const d = await open();
    await d.goto(`${server.url}/diag`);
    await d.waitForSelector('body[data-done=true]', { timeout: 60000 });
    await screenshot(d, 'diag-ipv6-only');
    assert.equal(await check(d, 'ws'), 'ok');
    // The URLs name [::1]: the IPv6 checks are keyed …-v6.
    assert.equal(await check(d, 'turn-udp-v6'), 'ok', await detail(d, 'turn-udp-v6'));
    assert.match(await detail(d, 'turn-udp-v6'), /::1/);
    assert.equal(await check(d, 'turn-tcp-v6'), 'ok', await detail(d, 'turn-tcp-v6'));

    const a = await open();
    const b = await open();
    const aId = await openApp(a, server.url);
    const bId = await openApp(b, server.url);
    assert.equal(await a.getByTestId('share-link').inputValue(), `${server.url}/#${aId}`, 'the share link is the IPv6 URL');
    await pair(b, a, aId);
    await waitConnected(a);
    await waitConnected(b);
    await sendMessage(b, 'hello over IPv6');
    await waitForMessage(a, 'hello over IPv6');
    assert.ok(bId);
  });

  test('/diag names a refusal as a refusal, not as "could not be reached"', async () => {
    // Every relay port held by another program: the server answers the Allocate with 508.
    const held = dgram.createSocket('udp4');
    const relayPort = await new Promise((resolve) => held.bind(0, '127.0.0.1', () => resolve(held.address().port)));
    try {
      const server = await startPonte({
        name: 'ponte-full',
        toml: `[http]
listen = "127.0.0.1:0"
[turn]
listen_udp = ["127.0.0.1:0"]
listen_tcp = []
relay_ip = "127.0.0.1"
relay_port_min = ${relayPort}
relay_port_max = ${relayPort}
self_test = false
`,
      });
      servers.push(server);
      const d = await open();
      await d.goto(`${server.url}/diag`);
      await d.waitForSelector('body[data-done=true]', { timeout: 60000 });
      assert.equal(await check(d, 'turn-udp'), 'fail');
      const why = await detail(d, 'turn-udp');
      assert.match(why, /was reached but refused the request \(508/, why);
      assert.doesNotMatch(why, /could not be reached/, why);
    } finally {
      held.close();
    }
  });
});

// ---------------------------------------------------------------- the DS-Lite lab (tests/lab/dslite.sh)

const SRV6 = '2001:db8:1::10';
const URL6 = `http://[${SRV6}]:8080`;

/** The lab, ponte on the home server configured for an IPv6-only home, one Chromium per node (h1, h2, h3). */
async function startDsLite(phones) {
  const prefix = labPrefix('ds', { env: false });
  const lab = { prefix, browsers: {}, pages: [] };
  lab.dir = mkdtempSync(path.join(tmpdir(), 'ponte-dslite-'));
  try {
    labScript('dslite.sh', 'up', prefix, phones);
    // No address waits for duplicate-address detection here (dslite.sh adds them with nodad): only the pings.
    await settleLab(prefix, [], ['h1', 'h2', 'h3'].map((node) => [node, SRV6]));
    // The configuration docs/deploy.md gives for a DS-Lite home; the lab's peers live in 2001:db8::/32, which the
    // peer policy refuses unless allowed.
    lab.server = await startPonte({
      name: 'ponte-dslite',
      netns: `${prefix}-srv`,
      toml: `[http]
listen = "[::]:8080"
[turn]
listen_udp = ["[::]:3478"]
listen_tcp = ["[::]:3478"]
relay_ip = "${SRV6}"
external_ip = "${SRV6}"
relay_port_min = 49160
relay_port_max = 49200
allow_peers = ["2001:db8::/32"]
secret = "lab-secret-not-for-production"
[signaling]
state_dir = "${path.join(lab.dir, 'state')}"
`,
    });
    for (const node of ['h1', 'h2', 'h3']) lab.browsers[node] = await launchIn(lab, node);
  } catch (e) {
    await stopDsLite(lab);
    throw e;
  }
  return lab;
}

async function stopDsLite(lab) {
  await teardownLab(lab, 'dslite.sh', async () => { if (lab.server) await lab.server.stop().catch(() => {}); });
}

async function iceUrls(page) {
  return page.evaluate(() => {
    const s = (window.ponte.signaling.session && window.ponte.signaling.session.ice_servers) || [];
    return s.flatMap((x) => (Array.isArray(x.urls) ? x.urls : [x.urls]));
  });
}

async function pathText(page, re) {
  await page.waitForFunction((src) => new RegExp(src, 'i').test(document.querySelector('[data-testid=path-label]').textContent), re.source, { timeout: 20000 });
  return page.getByTestId('path-label').textContent();
}

/** Pages in nodes `na` and `nb` open the server over IPv6, pair, connect and chat both ways. */
async function chatOverIpv6(lab, na, nb, tag) {
  const a = await newPage(lab.browsers[na]);
  const b = await newPage(lab.browsers[nb], { mobile: true });
  lab.pages.push(a, b);
  await openApp(a, URL6);
  const idB = await openApp(b, URL6);
  await pair(a, b, idB);
  await waitConnected(a, 40000);
  await waitConnected(b, 40000);
  await sendMessage(a, `hello from ${na} ${tag}`);
  await waitForMessage(b, `hello from ${na} ${tag}`);
  await sendMessage(b, `hello from ${nb} ${tag}`);
  await waitForMessage(a, `hello from ${nb} ${tag}`);
  return { a, b };
}

const labWhy = missing || labMissing();

describe('DS-Lite: a home server reachable only over IPv6', { skip: labWhy || false, concurrency: 1 }, () => {
  describe('phones whose firewalls let hole punching through', () => {
    let lab;
    before(async () => { lab = await startDsLite('punch'); });
    after(async () => stopDsLite(lab));

    test('two dual-stack phones outside chat directly over IPv6; the page hands out IPv6 URLs only', { timeout: 120000 }, async () => {
      const { a, b } = await chatOverIpv6(lab, 'h2', 'h3', 'punch');
      for (const p of [a, b]) {
        const urls = await iceUrls(p);
        assert.ok(urls.length && urls.every((u) => u.includes(`[${SRV6}]`)), urls.join(' '));
        assert.match(await pathText(p, /direct/), /direct/i);
      }
      await screenshot(b, 'dslite-phones-direct-360');
    });

    test('a laptop at home chats with a phone outside', { timeout: 120000 }, async () => {
      const { a } = await chatOverIpv6(lab, 'h1', 'h2', 'home');
      assert.match(await a.getByTestId('share-link').inputValue(), /^http:\/\/\[2001:db8:1::10\]:8080\/#/);
    });

    test('over IPv4 nothing outside reaches the server; the self-test and doctor say IPv6 only', { timeout: 60000 }, async () => {
      // The home's public IPv4 is the provider's CGNAT address: no port of it leads to the server.
      assert.throws(() => inNode(lab, 'h2', 'timeout', ['3', 'bash', '-c', 'echo > /dev/tcp/198.51.100.31/8080']));
      assert.match(lab.server.log, /TURN self-test passed: .*\[2001:db8:1::10\]:\d+.*\(IPv6 relays\)/);
      let out;
      try { out = inNode(lab, 'srv', PONTE, ['doctor', '-c', lab.server.cfg]); } catch (e) { out = String(e.stdout || '') + String(e.stderr || ''); }
      assert.match(out, /families\s+reachable over IPv6 only/, out);
      assert.match(out, /relay .*passed: .*\(IPv6 relays\)/, out);
    });
  });

  describe('phones that cannot reach each other directly', () => {
    let lab;
    before(async () => { lab = await startDsLite('nopunch'); });
    after(async () => stopDsLite(lab));

    test('two dual-stack phones chat through the IPv6 relay', { timeout: 120000 }, async () => {
      const { a, b } = await chatOverIpv6(lab, 'h2', 'h3', 'relay');
      assert.match(await pathText(a, /relayed/), /relayed through this server/i);
      assert.match(await pathText(b, /relayed/), /relayed through this server/i);
      await screenshot(b, 'dslite-phones-relayed-360');
    });

    test('/diag on a phone: IPv6 STUN and relay work', { timeout: 90000 }, async () => {
      const p = await newPage(lab.browsers.h2, { mobile: true });
      lab.pages.push(p);
      await p.goto(`${URL6}/diag`);
      await p.waitForSelector('body[data-done=true]', { timeout: 60000 });
      await screenshot(p, 'dslite-diag-360');
      assert.equal(await check(p, 'turn-udp-v6'), 'ok', await detail(p, 'turn-udp-v6'));
      assert.match(await detail(p, 'turn-udp-v6'), /2001:db8:1::10/);
      assert.equal(await check(p, 'turn-tcp-v6'), 'ok', await detail(p, 'turn-tcp-v6'));
      assert.equal(await check(p, 'stun-v6'), 'ok', await detail(p, 'stun-v6'));
    });
  });
});
