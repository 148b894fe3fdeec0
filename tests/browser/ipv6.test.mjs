// IPv6 in the browser (issue #19), against the real ponte binary on loopback:
// - ponte listening and relaying on [::1] only (how a home reachable only over IPv6 looks from the inside): the
//   app's share link is an IPv6 URL, /diag gets an IPv6 relay from TURN (it got 440 before, and /diag said the relay
//   "could not be reached"), and two browsers chat through it;
// - /diag names a refusal as a refusal: a relay that answers with an error code was reached.
// The DS-Lite NAT lab (homes, CGNAT, IPv6 firewalls) is tests/lab/dslite.sh with its own test file.
//
//   cd tests/browser && node --test ipv6.test.mjs     (needs target/debug/ponte and /usr/bin/chromium)

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import net from 'node:net';
import {
  requirements, launch, newPage, startPonte, openApp, pair, waitConnected, sendMessage, waitForMessage, screenshot,
} from './lib.mjs';

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
