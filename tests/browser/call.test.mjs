// Calls between Chromium pages on loopback, against the real ponte: a video call placed and answered (both sides
// receive audio packets and decode video frames), mute and camera-off stop the outgoing RTP, hang-up ends every
// local track on both sides, decline, busy (a third page calls someone already in a call), missed (the caller
// cancels), a voice-only call, and a second call on the same connection. Fake devices: Chromium's
// --use-fake-device-for-media-stream (a test pattern and a beep) with --use-fake-ui-for-media-stream (no prompt).
//
//   cd tests/browser && node --test call.test.mjs     (needs target/debug/ponte and /usr/bin/chromium)

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { requirements, launch, newPage, startPonte, freeUdpTcpPort, openApp, pair, waitConnected, screenshot } from './lib.mjs';

const missing = requirements();

export const FAKE_MEDIA_ARGS = ['--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream', '--autoplay-policy=no-user-gesture-required'];

/** The page's call stats (window.ponte.callStats()). */
const stats = (p) => p.evaluate(() => window.ponte.callStats());
const state = (p) => p.evaluate(() => window.ponte.callState());

/** Read `pick(stats)` twice, `ms` apart: [before, after]. */
async function delta(p, pick, ms = 2500) {
  const a = pick(await stats(p));
  await p.waitForTimeout(ms);
  const b = pick(await stats(p));
  return [a ?? 0, b ?? 0];
}

/** Wait until `pick(stats)` grows past its current value (media flows). */
async function grows(p, pick, what, timeout = 20000) {
  const start = pick(await stats(p)) ?? 0;
  const until = Date.now() + timeout;
  for (;;) {
    const now = pick(await stats(p)) ?? 0;
    if (now > start) return now;
    if (Date.now() > until) throw new Error(`${what} did not grow (stuck at ${now})`);
    await p.waitForTimeout(300);
  }
}

async function panelState(p, s, timeout = 20000) {
  await p.waitForSelector(`[data-testid=call-panel][data-state=${s}]`, { state: 'attached', timeout });
}

async function callLine(p, kind, timeout = 10000) {
  await p.waitForSelector(`[data-testid=system-message][data-kind=${kind}]`, { state: 'attached', timeout });
  return p.locator(`[data-testid=system-message][data-kind=${kind}]`).last().textContent();
}

describe('calls on loopback', { skip: missing || false }, () => {
  let server;
  let browser;
  const pages = [];
  const open = async (opts) => {
    const p = await newPage(browser, opts);
    await p.context().grantPermissions(['camera', 'microphone']);
    pages.push(p);
    return p;
  };
  /** Two pages with a connected conversation; returns [a, b, idA, idB]. */
  const connected = async (optsA, optsB) => {
    const a = await open(optsA);
    const b = await open(optsB);
    const idA = await openApp(a, server.url);
    const idB = await openApp(b, server.url);
    await pair(a, b, idB);
    await waitConnected(a);
    await waitConnected(b);
    await a.waitForFunction((peer) => window.ponte.conversation(peer).link.chatOpen, idB);
    await b.waitForFunction((peer) => window.ponte.conversation(peer).link.chatOpen, idA);
    return [a, b, idA, idB];
  };

  before(async () => {
    if (process.env.CALL_DEV_MOCK) { // development only: the mock server while no ponte binary is built
      const { startMockServer } = await import('./mock-server.mjs');
      server = await startMockServer();
      browser = await launch({ extraArgs: ['--allow-loopback-in-peer-connection', ...FAKE_MEDIA_ARGS] });
      return;
    }
    const turnPort = await freeUdpTcpPort();
    server = await startPonte({
      toml: `[http]
listen = "127.0.0.1:0"
[turn]
listen_udp = ["127.0.0.1:${turnPort}"]
listen_tcp = ["127.0.0.1:${turnPort}"]
`,
    });
    browser = await launch({ extraArgs: ['--allow-loopback-in-peer-connection', ...FAKE_MEDIA_ARGS] });
  });

  after(async () => {
    for (const p of pages) {
      if (p.errors.length) console.log(`page errors: ${p.errors.join(' | ')}`);
    }
    if (browser) await browser.close();
    if (server) await server.stop();
  });

  test('video call: ring, accept, media both ways, mute and camera-off stop the outgoing RTP, hang-up ends every track', async () => {
    const [a, b] = await connected({}, { mobile: true });
    await a.getByTestId('call-video').click();
    await panelState(a, 'outgoing');
    await panelState(b, 'incoming');
    await a.waitForFunction(() => window.ponte.callState().ringing);
    assert.match(await b.getByTestId('call-status').textContent(), /incoming video call/i);
    assert.equal(await b.getByTestId('call-accept').isVisible(), true);
    assert.equal(await b.getByTestId('call-decline').isVisible(), true);
    await screenshot(b, 'call-ringing-360');
    await screenshot(a, 'call-calling-desktop');
    await b.getByTestId('call-accept').click();
    await panelState(a, 'active');
    await panelState(b, 'active');

    // Both sides receive audio packets and decode video frames, and keep doing so.
    for (const p of [a, b]) {
      await grows(p, (s) => s.inbound.audio.packetsReceived, 'inbound audio packets');
      await grows(p, (s) => s.inbound.video.framesDecoded, 'decoded video frames');
    }
    await a.waitForFunction(() => /\d\d:\d\d/.test(document.querySelector('[data-testid=call-duration]').textContent));
    await a.waitForFunction(() => /Mbit\/s/.test(document.querySelector('[data-testid=call-quality]').textContent), null, { timeout: 10000 });
    assert.equal(await a.getByTestId('call-quality').getAttribute('data-path'), 'direct');
    assert.match(await a.getByTestId('call-quality').textContent(), /Direct.*ms.*loss.*Mbit\/s/);
    // The remote video really plays in the element (the test pattern has a size).
    await b.waitForFunction(() => document.querySelector('[data-testid=call-remote-video]').videoWidth > 0);
    await screenshot(a, 'call-video-desktop');
    await screenshot(b, 'call-video-360');

    // Mute: no outgoing audio RTP, while the other way still flows.
    await a.getByTestId('call-mute').click();
    assert.equal(await a.getByTestId('call-mute').getAttribute('aria-pressed'), 'true');
    await a.waitForTimeout(500);
    let [x, y] = await delta(a, (s) => s.outbound.audio.packetsSent);
    assert.equal(y, x, `muted: outgoing audio packets ${x} → ${y}`);
    [x, y] = await delta(a, (s) => s.outbound.video.packetsSent, 1000);
    assert.ok(y > x, 'video still goes out while muted');
    await a.getByTestId('call-mute').click();
    await grows(a, (s) => s.outbound.audio.packetsSent, 'outgoing audio after unmute');

    // Camera off: no outgoing video RTP, and the camera track is stopped (its light goes off).
    await a.getByTestId('call-camera').click();
    await a.waitForFunction(() => window.ponte.callState().cameraOff);
    await a.waitForTimeout(500);
    [x, y] = await delta(a, (s) => s.outbound.video.packetsSent);
    assert.equal(y, x, `camera off: outgoing video packets ${x} → ${y}`);
    const live = await a.evaluate(() => window.ponte.callTracks().filter((t) => t.kind === 'video' && t.readyState === 'live').length);
    assert.equal(live, 0, 'no live camera track while the camera is off');
    await screenshot(a, 'call-camera-off-desktop');
    await a.getByTestId('call-camera').click();
    await grows(a, (s) => s.outbound.video.packetsSent, 'outgoing video after camera on');
    await grows(b, (s) => s.inbound.video.framesDecoded, 'frames decoded after camera on');

    // Dark theme, in call.
    await b.emulateMedia({ colorScheme: 'dark' });
    await screenshot(b, 'call-video-360-dark');

    // Hang up from the callee: both panels go, every local track on both sides is ended.
    await b.getByTestId('call-hangup').click();
    await panelState(a, 'ended');
    await panelState(b, 'ended');
    for (const p of [a, b]) {
      const tracks = await p.evaluate(() => window.ponte.callTracks());
      assert.ok(tracks.length >= 2, 'audio and video were captured');
      assert.deepEqual(tracks.filter((t) => t.readyState !== 'ended'), [], 'every local track ended');
      assert.equal(await p.getByTestId('call-panel').isVisible(), false);
    }
    assert.equal((await state(a)).reason, 'remote-hangup');
    assert.equal((await state(b)).reason, 'hangup');
    assert.match(await callLine(a, 'call-ended'), /Call ended · \d\d:\d\d/);
    await callLine(b, 'call-ended');
    // The call's transceivers stop: no RTP either way afterwards; the chat goes on.
    await a.waitForFunction(() => window.ponte.callPc().getTransceivers().every((t) => t.stopped || t.currentDirection === 'stopped' || t.currentDirection === 'inactive'), null, { timeout: 10000 });
    assert.equal(await a.getByTestId('connection-state').getAttribute('data-state'), 'connected');
    await screenshot(a, 'call-ended-desktop');

    // A second call on the same connection works (voice only this time): audio flows, no camera is opened.
    await b.getByTestId('call-voice').click();
    await panelState(a, 'incoming');
    assert.match(await a.getByTestId('call-status').textContent(), /incoming voice call/i);
    await screenshot(a, 'call-ringing-voice-desktop');
    await a.getByTestId('call-accept').click();
    await panelState(a, 'active');
    await panelState(b, 'active');
    for (const p of [a, b]) {
      await grows(p, (s) => s.inbound.audio.packetsReceived, 'inbound audio packets (voice call)');
      const s = await stats(p);
      assert.equal(s.outbound.video.packetsSent ?? 0, 0, 'a voice call sends no video');
      const kinds = await p.evaluate(() => window.ponte.callState() && window.ponte.callTracks().map((t) => t.kind));
      assert.deepEqual(kinds, ['audio'], 'a voice call captures the microphone only');
    }
    assert.equal(await b.getByTestId('call-camera').isVisible(), false);
    await screenshot(b, 'call-voice-360');
    await a.getByTestId('call-hangup').click();
    await panelState(b, 'ended');
    for (const p of [a, b]) {
      assert.deepEqual((await p.evaluate(() => window.ponte.callTracks())).filter((t) => t.readyState !== 'ended'), []);
    }
    assert.deepEqual(a.errors, []);
    assert.deepEqual(b.errors, []);
  });

  test('decline, missed (the caller gives up), busy (a third page calls someone in a call)', async () => {
    const [a, b, , idB] = await connected();
    // Decline.
    await a.getByTestId('call-video').click();
    await panelState(b, 'incoming');
    await b.getByTestId('call-decline').click();
    await panelState(a, 'ended');
    assert.equal((await state(a)).reason, 'declined');
    assert.match(await callLine(a, 'call-declined'), /declined the call/);
    assert.match(await callLine(b, 'call-declined'), /You declined/);
    assert.deepEqual((await a.evaluate(() => window.ponte.callTracks())).filter((t) => t.readyState !== 'ended'), [], 'the caller\'s preview camera is released');
    assert.deepEqual(await b.evaluate(() => window.ponte.callTracks()), [], 'declining never opened the callee\'s camera');

    // Missed: the caller hangs up while it rings.
    await a.getByTestId('call-voice').click();
    await panelState(b, 'incoming');
    await a.getByTestId('call-hangup').click();
    await panelState(b, 'ended');
    assert.equal((await state(b)).reason, 'missed');
    assert.match(await callLine(b, 'call-missed'), /Missed call from/);
    assert.match(await callLine(a, 'call-cancelled'), /cancelled/);

    // Busy: A and B are in a call; C (connected to B) calls B.
    await a.getByTestId('call-voice').click();
    await panelState(b, 'incoming');
    await b.getByTestId('call-accept').click();
    await panelState(a, 'active');
    const c = await open({ mobile: true });
    await openApp(c, server.url);
    await pair(c, b, idB);
    await waitConnected(c);
    await c.waitForFunction((peer) => window.ponte.conversation(peer).link.chatOpen, idB);
    await c.getByTestId('call-video').click();
    await panelState(c, 'ended');
    assert.equal((await state(c)).reason, 'busy');
    assert.match(await callLine(c, 'call-busy'), /is in another call/);
    await screenshot(c, 'call-busy-360');
    assert.equal((await state(b)).state, 'active', 'B\'s call goes on');
    assert.equal((await state(a)).state, 'active');
    assert.match(await b.locator('[data-testid=system-message][data-kind=call-missed]').last().textContent({ timeout: 5000 }).catch(() => ''), /another call|Missed/);
    await a.getByTestId('call-hangup').click();
    await panelState(b, 'ended');
  });

  test('ending the conversation ends the call on both sides', async () => {
    const [a, b] = await connected();
    await a.getByTestId('call-video').click();
    await panelState(b, 'incoming');
    await b.getByTestId('call-accept').click();
    await panelState(a, 'active');
    await a.getByTestId('end-chat').click();
    await panelState(a, 'ended');
    await panelState(b, 'ended');
    for (const p of [a, b]) {
      assert.equal((await state(p)).reason, 'gone');
      assert.deepEqual((await p.evaluate(() => window.ponte.callTracks())).filter((t) => t.readyState !== 'ended'), []);
    }
  });
});
