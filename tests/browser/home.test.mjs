// ponte where it is usually installed: on a home server behind the home router (issue #13). The lab
// (tests/lab/homelab.sh) puts ponte at 10.77.1.10 behind router 1, which forwards its ports from 198.51.100.21;
// a laptop (and a second one) on that LAN, a phone in home 2 behind a cone or symmetric NAT; router 1 with or
// without NAT loopback. Every cell of the table chats both ways and each page names its path. Needs root.
//
//   cd tests/browser && node --test home.test.mjs
//
// Every packet stays inside the namespaces the test creates (TEST-NET-2 and 10.77/16 only).

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { PONTE, waitConnected, sendMessage, waitForMessage, screenshot } from './lib.mjs';
import { labMissing, startHomeLab, stopHomeLab, homePair, inNode } from './labkit.mjs';

const missing = labMissing();

async function chatBothWays(a, b, tag) {
  await sendMessage(a, `hello from the laptop ${tag}`);
  await waitForMessage(b, `hello from the laptop ${tag}`);
  await sendMessage(b, `hello from outside ${tag}`);
  await waitForMessage(a, `hello from outside ${tag}`);
  await a.waitForSelector('[data-testid=message-status][data-status=delivered]');
  await b.waitForSelector('[data-testid=message-status][data-status=delivered]');
}

async function pathText(page, re) {
  await page.waitForFunction((src) => new RegExp(src, 'i').test(document.querySelector('[data-testid=path-label]').textContent), re.source, { timeout: 15000 });
  return page.getByTestId('path-label').textContent();
}

/** The ICE server URLs this page was handed (from the welcome). */
async function iceUrls(page) {
  return page.evaluate(() => {
    const s = (window.ponte.signaling.session && window.ponte.signaling.session.ice_servers) || [];
    return s.flatMap((x) => (Array.isArray(x.urls) ? x.urls : [x.urls]));
  });
}

/** Laptop (`urlA`) and phone pair, connect, chat both ways; both pages say "relayed". */
async function laptopAndPhone(lab, urlA, tag) {
  const { a, b } = await homePair(lab, { from: 0, urlA, to: 1, urlB: lab.publicUrl });
  await waitConnected(a, 40000);
  await waitConnected(b, 40000);
  await chatBothWays(a, b, tag);
  const pa = await pathText(a, /relayed/);
  const pb = await pathText(b, /relayed/);
  assert.match(pa, /relayed through this server/i, 'laptop');
  assert.match(pb, /relayed through this server/i, 'phone');
  return { a, b };
}

function doctor(lab) {
  // Exit status 1 only means "a check failed" (e.g. the lab's TEST-NET addresses): the text is what we check.
  try {
    return inNode(lab, 'srv', PONTE, ['doctor', '-c', lab.server.cfg]);
  } catch (e) {
    return String(e.stdout || '') + String(e.stderr || '');
  }
}

describe('ponte at home', { skip: missing || false, concurrency: 1 }, () => {
  describe('router with NAT loopback, phone behind a symmetric NAT', () => {
    let lab;
    before(async () => { lab = await startHomeLab({ loopback: true, phone: 'symmetric' }); });
    after(async () => stopHomeLab(lab));

    test('laptop opens the LAN address: chats both ways, relayed', { timeout: 90000 }, async () => {
      const { a } = await laptopAndPhone(lab, lab.lanUrl, 'lan');
      await screenshot(a, 'home-loopback-lan-laptop');
    });

    test('laptop opens the public address: chats both ways, relayed', { timeout: 90000 }, async () => {
      await laptopAndPhone(lab, lab.publicUrl, 'public');
    });

    test('start-up log and doctor say the router does NAT loopback', { timeout: 30000 }, async () => {
      assert.match(lab.server.log, /router does NAT loopback/i);
      const out = doctor(lab);
      assert.match(out, /router .*does NAT loopback/i, out);
    });
  });

  describe('router with NAT loopback, phone behind a cone NAT', () => {
    let lab;
    before(async () => { lab = await startHomeLab({ loopback: true, phone: 'cone' }); });
    after(async () => stopHomeLab(lab));

    test('laptop opens the public address: chats both ways, relayed', { timeout: 90000 }, async () => {
      await laptopAndPhone(lab, lab.publicUrl, 'public');
    });
  });

  describe('router without NAT loopback, phone behind a symmetric NAT', () => {
    let lab;
    before(async () => { lab = await startHomeLab({ loopback: false, phone: 'symmetric' }); });
    after(async () => stopHomeLab(lab));

    test('laptop opens the LAN address: chats both ways, relayed (LAN ICE servers, relay stays inside ponte)', { timeout: 90000 }, async () => {
      const { a, b } = await laptopAndPhone(lab, lab.lanUrl, 'lan');
      // The laptop got STUN/TURN at the LAN address it used; the phone at the router's public address.
      const la = await iceUrls(a);
      const lb = await iceUrls(b);
      assert.ok(la.length && la.every((u) => u.includes('10.77.1.10')), la.join(' '));
      assert.ok(lb.length && lb.every((u) => u.includes('198.51.100.21')), lb.join(' '));
      await screenshot(a, 'home-noloopback-lan-laptop');
      await screenshot(b, 'home-noloopback-phone-360');
    });

    test('start-up log and doctor say the router does not do NAT loopback, with the fix', { timeout: 30000 }, async () => {
      assert.match(lab.server.log, /no NAT loopback/i);
      const out = doctor(lab);
      assert.match(out, /no NAT loopback/i, out);
      assert.match(out, /http:\/\/10\.77\.1\.10:8080/, out);
    });
  });

  describe('router without NAT loopback, phone behind a cone NAT', () => {
    let lab;
    before(async () => { lab = await startHomeLab({ loopback: false, phone: 'cone' }); });
    after(async () => stopHomeLab(lab));

    test('laptop opens the LAN address: chats both ways, relayed', { timeout: 90000 }, async () => {
      await laptopAndPhone(lab, lab.lanUrl, 'lan');
    });

    test('both at home: two laptops on the LAN connect directly', { timeout: 90000 }, async () => {
      const { a, b } = await homePair(lab, { from: 0, urlA: lab.lanUrl, to: 2, urlB: lab.lanUrl, mobileB: false });
      await waitConnected(a, 40000);
      await waitConnected(b, 40000);
      await chatBothWays(a, b, 'home');
      const pa = await pathText(a, /direct/);
      const pb = await pathText(b, /direct/);
      assert.doesNotMatch(pa, /relay/i);
      assert.doesNotMatch(pb, /relay/i);
    });
  });
});

