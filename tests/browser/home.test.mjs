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
import { PONTE, newPage, openApp, waitConnected, sendMessage, waitForMessage, screenshot } from './lib.mjs';
import { execFileSync } from 'node:child_process';
import { copyFileSync } from 'node:fs';
import path from 'node:path';
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

/** Open /diag in browser `i` at `url` and wait for the verdict. Returns {mapping, summary, result(key)}. */
async function diag(lab, i, url, mobile = true) {
  const p = await newPage(lab.browsers[i], { mobile });
  lab.pages.push(p);
  await p.goto(`${url}/diag`);
  await p.waitForSelector('body[data-done=true]', { timeout: 40000 });
  return {
    page: p,
    mapping: await p.getAttribute('[data-testid=diag-check][data-check=nat]', 'data-mapping'),
    summary: await p.getByTestId('diag-summary').textContent(),
    result: (key) => p.getAttribute(`[data-testid=diag-check][data-check=${key}]`, 'data-result'),
  };
}

/**
 * Relay-only WebRTC between two pages that already have their welcome (their own ICE servers and credentials):
 * both `iceTransportPolicy: 'relay'`, offer/answer passed through the test, a data channel message each way.
 * Resolves the selected pair's candidate types and addresses on the first page.
 */
async function relayOnly(a, b) {
  const setup = (page) => page.evaluate(() => {
    const servers = window.ponte.signaling.session.ice_servers;
    const pc = new RTCPeerConnection({ iceServers: servers, iceTransportPolicy: 'relay' });
    window.relayTest = { pc, got: [] };
    pc.ondatachannel = (ev) => { window.relayTest.dc = ev.channel; ev.channel.onmessage = (m) => window.relayTest.got.push(m.data); };
  });
  await setup(a);
  await setup(b);
  const gathered = (page, role) => page.evaluate(async (r) => {
    const { pc } = window.relayTest;
    if (r === 'offer') {
      const dc = pc.createDataChannel('relay-test');
      window.relayTest.dc = dc;
      dc.onmessage = (m) => window.relayTest.got.push(m.data);
      await pc.setLocalDescription(await pc.createOffer());
    } else {
      await pc.setLocalDescription(await pc.createAnswer());
    }
    await new Promise((done) => {
      if (pc.iceGatheringState === 'complete') done();
      else pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && done();
    });
    return pc.localDescription.toJSON();
  }, role);
  const offer = await gathered(a, 'offer');
  await b.evaluate((o) => window.relayTest.pc.setRemoteDescription(o), offer);
  const answer = await gathered(b, 'answer');
  await a.evaluate((o) => window.relayTest.pc.setRemoteDescription(o), answer);
  for (const [p, text] of [[a, 'relay-to-relay from the laptop'], [b, 'relay-to-relay from the phone']]) {
    await p.waitForFunction(() => window.relayTest.dc && window.relayTest.dc.readyState === 'open', null, { timeout: 30000 });
    await p.evaluate((t) => window.relayTest.dc.send(t), text);
  }
  await b.waitForFunction(() => window.relayTest.got.includes('relay-to-relay from the laptop'), null, { timeout: 10000 });
  await a.waitForFunction(() => window.relayTest.got.includes('relay-to-relay from the phone'), null, { timeout: 10000 });
  const pair = await a.evaluate(async () => {
    const stats = await window.relayTest.pc.getStats();
    let sel;
    stats.forEach((s) => { if (s.type === 'transport' && s.selectedCandidatePairId) sel = stats.get(s.selectedCandidatePairId); });
    const l = stats.get(sel.localCandidateId);
    const r = stats.get(sel.remoteCandidateId);
    return { local: l.candidateType, localAddress: l.address, remote: r.candidateType, remoteAddress: r.address };
  });
  for (const p of [a, b]) await p.evaluate(() => window.relayTest.pc.close());
  return pair;
}

/** Stop ponte (keeping a copy of its config) and run doctor, which then probes with the listen port itself. */
async function doctorStopped(lab) {
  const copy = path.join(lab.dir, 'ponte-stopped.toml');
  copyFileSync(lab.server.cfg, copy);
  await lab.server.stop();
  return doctor(lab, copy);
}

function doctor(lab, cfg = lab.server.cfg) {
  // Exit status 1 only means "a check failed" (e.g. the lab's TEST-NET addresses): the text is what we check.
  try {
    return inNode(lab, 'srv', PONTE, ['doctor', '-c', cfg]);
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

  describe('router with NAT loopback, doctor without a running daemon', () => {
    let lab;
    before(async () => { lab = await startHomeLab({ loopback: true, phone: 'cone' }); });
    after(async () => stopHomeLab(lab));

    test('laptop opens the public address: chats both ways, relayed (phone behind a cone NAT)', { timeout: 90000 }, async () => {
      await laptopAndPhone(lab, lab.publicUrl, 'public');
    });

    test('with ponte stopped, doctor still sees its own request come back through the router', { timeout: 30000 }, async () => {
      const out = await doctorStopped(lab);
      assert.match(out, /router .*does NAT loopback/i, out);
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

    test('relay to relay between the laptop (LAN ICE servers) and the phone stays inside ponte', { timeout: 90000 }, async () => {
      // Both forced to their relay: both relay candidates are 198.51.100.21:PORT and this router has no NAT loopback,
      // so this connects only because ponte delivers between its own relay ports internally.
      const a = await newPage(lab.browsers[0]);
      const b = await newPage(lab.browsers[1], { mobile: true });
      lab.pages.push(a, b);
      await openApp(a, lab.lanUrl);
      await openApp(b, lab.publicUrl);
      const pair = await relayOnly(a, b);
      assert.equal(pair.local, 'relay');
      assert.equal(pair.localAddress, '198.51.100.21', 'the laptop\'s relay advertises external_ip');
      assert.equal(pair.remoteAddress, '198.51.100.21', 'the phone\'s relay too');
    });

    test('start-up log and doctor say the router does not do NAT loopback, with the fix', { timeout: 30000 }, async () => {
      assert.match(lab.server.log, /no NAT loopback/i);
      const out = doctor(lab);
      assert.match(out, /no NAT loopback/i, out);
      assert.match(out, /http:\/\/10\.77\.1\.10:8080/, out);
    });

    test('/diag behind the symmetric NAT: "your network needs the relay"; on the LAN: direct possible', { timeout: 90000 }, async () => {
      const d = await diag(lab, 1, lab.publicUrl);
      assert.equal(await d.result('stun'), 'ok');
      assert.equal(await d.result('stun-2'), 'ok', 'the STUN-only second port answers');
      assert.equal(d.mapping, 'dependent');
      assert.equal(await d.result('nat'), 'warn');
      assert.match(d.summary, /needs the relay/i);
      assert.doesNotMatch(d.summary, /direct connections are possible/i);
      await screenshot(d.page, 'home-diag-symmetric-360', { fullPage: true });
      const l = await diag(lab, 0, lab.lanUrl, false);
      assert.equal(l.mapping, 'independent');
      assert.match(l.summary, /everything works/i);
    });

    test('with ponte stopped, doctor still finds no NAT loopback', { timeout: 30000 }, async () => {
      const out = await doctorStopped(lab);
      assert.match(out, /no NAT loopback/i, out);
    });
  });

  describe('router without NAT loopback, phone behind a cone NAT', () => {
    let lab;
    before(async () => { lab = await startHomeLab({ loopback: false, phone: 'cone' }); });
    after(async () => stopHomeLab(lab));

    test('laptop opens the LAN address: chats both ways, relayed', { timeout: 90000 }, async () => {
      await laptopAndPhone(lab, lab.lanUrl, 'lan');
    });

    test('/diag behind the cone NAT: direct connections possible; with UDP blocked: only the TCP relay', { timeout: 120000 }, async () => {
      const d = await diag(lab, 1, lab.publicUrl);
      assert.equal(d.mapping, 'independent');
      assert.equal(await d.result('nat'), 'ok');
      assert.match(d.summary, /everything works/i);
      const r2 = ['netns', 'exec', `${lab.prefix}-r2`, 'iptables'];
      execFileSync('ip', [...r2, '-I', 'FORWARD', '1', '-p', 'udp', '-j', 'DROP']);
      try {
        const u = await diag(lab, 1, lab.publicUrl);
        assert.equal(await u.result('stun'), 'fail');
        assert.equal(await u.result('turn-udp'), 'fail');
        assert.equal(await u.result('turn-tcp'), 'ok');
        assert.match(u.summary, /UDP is blocked here: only the TCP\/TLS relay works/i);
        await screenshot(u.page, 'home-diag-udp-blocked-360', { fullPage: true });
      } finally {
        execFileSync('ip', [...r2, '-D', 'FORWARD', '-p', 'udp', '-j', 'DROP']);
      }
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

