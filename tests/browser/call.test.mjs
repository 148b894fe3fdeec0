// Calls between Chromium pages on loopback, against the real ponte: a video call placed and answered (both sides
// receive audio packets and decode video frames), mute and camera-off stop the outgoing RTP, hang-up ends every
// local track on both sides, decline, busy (a third page calls someone already in a call), missed (the caller
// cancels), unanswered (the ring times out; shortened through window.ponte.setRingTimeout), a voice-only call,
// a second call on the same connection, and the speaker choice (setSinkId on the remote element, kept for the next
// call). Fake devices: Chromium's
// --use-fake-device-for-media-stream (a test pattern and a beep) with --use-fake-ui-for-media-stream (no prompt).
//
//   cd tests/browser && node --test call.test.mjs     (needs target/debug/ponte and /usr/bin/chromium)

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { requirements, launch, newPage, startPonte, freeTcpPort, loopbackToml, loopbackSetup, openApp, pair, waitConnected, screenshot } from './lib.mjs';
import { FAKE_MEDIA_ARGS } from './callkit.mjs';

const missing = requirements();

// callkit's fake devices with two cameras (so that "switch camera" shows on the phone page), the ring allowed to
// play, and the screen picked without a prompt.
const CALL_ARGS = [...FAKE_MEDIA_ARGS.map((x) => (x === '--use-fake-device-for-media-stream' ? `${x}=device-count=2` : x)),
  '--autoplay-policy=no-user-gesture-required', '--auto-select-desktop-capture-source=Entire screen'];

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

/** `caller` starts a call of `kind` ('voice' or 'video'), `callee` answers it, and both reach 'active'. */
async function answeredCall(caller, callee, kind = 'voice') {
  await caller.getByTestId(`call-${kind}`).click();
  await panelState(callee, 'incoming');
  await callee.getByTestId('call-accept').click();
  await panelState(caller, 'active');
  await panelState(callee, 'active');
}

async function callLine(p, kind, timeout = 10000) {
  await p.waitForSelector(`[data-testid=system-message][data-kind=${kind}]`, { state: 'attached', timeout });
  return p.locator(`[data-testid=system-message][data-kind=${kind}]`).last().textContent();
}

describe('calls on loopback', { skip: missing || false }, () => {
  let setup;
  let server;
  const open = (opts) => setup.open(opts);
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
    setup = await loopbackSetup({ chromeArgs: CALL_ARGS, permissions: ['camera', 'microphone'] });
    ({ server } = setup);
  });

  after(async () => {
    if (setup) await setup.close();
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
    // Direct or relayed is the chat's path (on loopback the TURN server shares 127.0.0.1 with the host candidates, so
    // the label may say relayed; the NAT lab tells them apart for real).
    const kind = await a.getByTestId('call-quality').getAttribute('data-path');
    assert.match(kind, /^(direct|relay)$/);
    // Spaces inside a figure are no-break spaces (\u00a0), so a figure never wraps inside.
    assert.match(await a.getByTestId('call-quality').textContent(), kind === 'direct' ? /Direct · \d+\u00a0ms · [\d.]+\u00a0%\u00a0loss · [\d.]+\u00a0Mbit\/s/ : /Relayed · \d+\u00a0ms · [\d.]+\u00a0%\u00a0loss · [\d.]+\u00a0Mbit\/s/);
    // The remote video really plays in the element (the test pattern has a size).
    await b.waitForFunction(() => document.querySelector('[data-testid=call-remote-video]').videoWidth > 0);
    await screenshot(a, 'call-video-desktop');
    await screenshot(b, 'call-video-360');

    // Mute: no outgoing audio RTP, while the other way still flows.
    await a.getByTestId('call-mute').click();
    await a.waitForSelector('[data-testid=call-mute][aria-pressed=true]');
    await a.waitForTimeout(500);
    let [x, y] = await delta(a, (s) => s.outbound.audio.packetsSent);
    assert.equal(y, x, `muted: outgoing audio packets ${x} → ${y}`);
    [x, y] = await delta(a, (s) => s.outbound.video.packetsSent, 1000);
    assert.ok(y > x, 'video still goes out while muted');
    await b.waitForFunction(() => /microphone is off/.test(document.querySelector('[data-testid=call-status]').textContent));
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
    // The other side shows the avatar instead of a frozen last frame.
    await b.waitForSelector('[data-testid=call-panel][data-remote-video=false]', { state: 'attached' });
    await screenshot(a, 'call-camera-off-desktop');
    await screenshot(b, 'call-peer-camera-off-360');
    await a.getByTestId('call-camera').click();
    await grows(a, (s) => s.outbound.video.packetsSent, 'outgoing video after camera on');
    await grows(b, (s) => s.inbound.video.framesDecoded, 'frames decoded after camera on');
    await b.waitForSelector('[data-testid=call-panel][data-remote-video=true]', { state: 'attached' });

    // The device menu lists the (fake) microphones; choosing another one keeps the audio going out.
    await a.getByTestId('call-devices').click();
    await a.getByTestId('call-devices-menu').waitFor();
    await a.waitForFunction(() => document.querySelectorAll('[data-testid=call-mic-select] option').length > 0);
    const mics = await a.$$eval('[data-testid=call-mic-select] option', (os) => os.map((o) => o.value));
    const other = mics.find((m) => m !== 'default') || mics[0];
    await a.getByTestId('call-mic-select').selectOption(other);
    await grows(a, (s) => s.outbound.audio.packetsSent, 'outgoing audio after choosing a microphone');
    await screenshot(a, 'call-devices-desktop');
    await a.getByTestId('call-devices').click();
    // Screen sharing (desktop only): the video sender switches to the screen, and back to the camera.
    assert.equal(await a.getByTestId('call-share-screen').isVisible(), true);
    assert.equal(await b.getByTestId('call-share-screen').isVisible(), false, 'no screen sharing on a phone');
    // Two (fake) cameras: the phone offers to switch; the sender takes the other camera and the old one is released.
    // Chromium's second fake camera is a depth (Y16) device that its encoder does not send, so the video is checked
    // after switching back to the first one.
    await b.getByTestId('call-switch-camera').waitFor();
    const cam = () => b.evaluate(() => { const c = window.ponte.calls.call; const tr = c.transceivers.find((x) => x.receiver.track.kind === 'video'); return { local: c.local.video && c.local.video.getSettings().deviceId, sending: tr.sender.track && tr.sender.track.getSettings().deviceId }; });
    const first = await cam();
    await b.getByTestId('call-switch-camera').click();
    await b.waitForFunction((d) => { const v = window.ponte.calls.call.local.video; return v && v.getSettings().deviceId !== d; }, first.local);
    const second = await cam();
    assert.equal(second.sending, second.local, 'the sender sends the new camera');
    assert.equal(await b.evaluate(() => window.ponte.callTracks().filter((t) => t.kind === 'video' && t.readyState === 'live').length), 1, 'the old camera is released');
    await b.getByTestId('call-switch-camera').click();
    await b.waitForFunction((d) => { const v = window.ponte.calls.call.local.video; return v && v.getSettings().deviceId === d; }, first.local);
    await grows(a, (s) => s.inbound.video.framesDecoded, 'frames decoded after switching the camera there and back');
    await a.getByTestId('call-share-screen').click();
    await a.waitForFunction(() => window.ponte.callState().sharing, null, { timeout: 10000 });
    await grows(b, (s) => s.inbound.video.framesDecoded, 'frames decoded while sharing the screen');
    await a.getByTestId('call-share-screen').click();
    await a.waitForFunction(() => !window.ponte.callState().sharing);
    await grows(b, (s) => s.inbound.video.framesDecoded, 'frames decoded after sharing');

    // The phone shrinks the call to a tile, writes in the chat, and taps the tile to get the call back.
    await b.getByTestId('call-minimize').click();
    await b.getByTestId('message-input').fill('writing during the call');
    await b.getByTestId('message-input').press('Enter');
    await a.locator('[data-testid=message-text]', { hasText: 'writing during the call' }).waitFor();
    await screenshot(b, 'call-minimized-360');
    await b.getByTestId('call-panel').click();
    await b.getByTestId('call-hangup').waitFor();
    assert.equal(await b.evaluate(() => document.querySelector('[data-testid=call-panel]').classList.contains('mini')), false);

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

  test('the speaker: the device menu lists the audio outputs, picking one moves the remote audio there (sinkId), the next call keeps it', async () => {
    // Chromium's --use-fake-device-for-media-stream fakes audio outputs too ("Fake Default Audio Output", "Fake Audio
    // Output 1", ...; checked with Debian's chromium 156, headless, on a machine without a sound card), so the menu
    // has a real choice and setSinkId() really switches (Chromium checks the ID against the devices it listed).
    const [a, b] = await connected({}, {});
    const remote = (p) => p.evaluate(() => { const v = document.querySelector('[data-testid=call-remote-video]'); return { sinkId: v.sinkId, paused: v.paused, audio: !!(v.srcObject && v.srcObject.getAudioTracks().length) }; });
    const speakers = () => a.$$eval('[data-testid=call-speaker-select] option', (os) => os.map((o) => ({ id: o.value, label: o.textContent, selected: o.selected })));
    const openMenu = async () => {
      await a.getByTestId('call-devices').click();
      await a.getByTestId('call-devices-menu').waitFor();
      await a.waitForFunction(() => document.querySelectorAll('[data-testid=call-speaker-select] option').length > 0);
    };

    await answeredCall(a, b);
    await grows(a, (s) => s.inbound.audio.packetsReceived, 'inbound audio packets');
    const before = await remote(a);
    assert.equal(before.sinkId, '', 'the remote audio starts on the default output');
    assert.equal(before.audio, true, 'the remote element carries the call\'s audio');
    await openMenu();
    assert.equal(await a.locator('#call-speaker-row').isVisible(), true, 'outputs listed: the speaker row shows');
    const listed = await speakers();
    const outputs = await a.evaluate(async () => (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === 'audiooutput').map((d) => d.deviceId));
    assert.deepEqual(listed.map((o) => o.id), outputs, 'every output the browser lists, in its order');
    assert.equal(listed[0].id, 'default');
    assert.equal(listed[0].selected, true, 'the default output is shown as chosen');
    const other = listed.find((o) => o.id !== 'default');
    assert.ok(other, `an output other than the default: ${JSON.stringify(listed)}`);
    assert.match(other.label, /^Fake Audio Output \d$/, 'named as the browser names it');
    await a.getByTestId('call-speaker-select').selectOption(other.id);
    await a.waitForFunction((id) => document.querySelector('[data-testid=call-remote-video]').sinkId === id, other.id, { timeout: 10000 });
    // The audio goes on arriving and the element goes on playing on the new output.
    await grows(a, (s) => s.inbound.audio.packetsReceived, 'inbound audio packets after choosing the speaker');
    assert.equal((await remote(a)).paused, false);
    assert.equal((await remote(b)).sinkId, '', 'the other side keeps its own output');
    await screenshot(a, 'call-speaker-desktop');
    await a.getByTestId('call-hangup').click();
    await panelState(a, 'ended');
    await panelState(b, 'ended');

    // The next call (the other side calls this time) plays on the chosen output: the page keeps one remote media
    // element for all its calls, and the menu shows the choice. (Within the page only: the client does not store the
    // choice, nor say that it does; a reload starts on the default output.)
    await answeredCall(b, a);
    await grows(a, (s) => s.inbound.audio.packetsReceived, 'inbound audio packets (second call)');
    const again = await remote(a);
    assert.equal(again.sinkId, other.id, 'the second call plays on the chosen output');
    assert.equal(again.paused, false);
    await openMenu();
    assert.deepEqual((await speakers()).filter((o) => o.selected).map((o) => o.id), [other.id], 'the menu shows the choice');
    // Back to the default output.
    await a.getByTestId('call-speaker-select').selectOption('default');
    await a.waitForFunction(() => document.querySelector('[data-testid=call-remote-video]').sinkId === 'default', null, { timeout: 10000 });
    await a.getByTestId('call-hangup').click();
    await panelState(b, 'ended');
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
    await answeredCall(a, b);
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

  test('over plain http on a real host name (not a secure context) the call buttons explain instead of failing', async () => {
    // ponte.test resolves to 127.0.0.1 in this browser only; http on a name that is not localhost is insecure.
    const port = await freeTcpPort();
    const plain = await startPonte({
      name: 'ponte-plain-http',
      toml: await loopbackToml({ port, http: `allowed_origins = ["http://ponte.test:${port}"]` }),
    });
    const insecure = await launch({ extraArgs: ['--allow-loopback-in-peer-connection', ...CALL_ARGS, '--host-resolver-rules=MAP ponte.test 127.0.0.1'] });
    try {
      const url = `http://ponte.test:${port}`;
      const a = await newPage(insecure);
      const b = await newPage(insecure);
      await openApp(a, url);
      const idB = await openApp(b, url);
      assert.equal(await a.evaluate(() => window.isSecureContext), false);
      await pair(a, b, idB);
      await waitConnected(a);
      const btn = a.getByTestId('call-video');
      assert.equal(await btn.getAttribute('aria-disabled'), 'true');
      assert.match(await btn.getAttribute('title'), /https/);
      await btn.click({ force: true }); // aria-disabled: Playwright would wait for it to be enabled; a person can click
      assert.match(await callLine(a, 'call-unavailable'), /secure page.*https/);
      assert.equal(await a.getByTestId('call-panel').isVisible(), false);
      assert.deepEqual(a.errors, []);
    } finally {
      await insecure.close();
      await plain.stop();
    }
  });

  test('a call rings: a chime every 2 s and, in a hidden tab, a notification (pt-BR); the ring stops when the caller gives up', async () => {
    const a = await open();
    const b = await open({ locale: 'pt-BR' });
    await b.addInitScript(() => {
      // Record instead of showing; pretend the tab is in the background.
      window.shown = [];
      window.Notification = class {
        static permission = 'granted';
        static requestPermission() { return Promise.resolve('granted'); }
        constructor(title, opts) { window.shown.push({ title, body: opts && opts.body }); }
        close() { window.closedNotes = (window.closedNotes || 0) + 1; }
      };
      Object.defineProperty(document, 'hidden', { configurable: true, get: () => window.fakeHidden === true });
      window.chimes = 0;
      const orig = AudioContext.prototype.createOscillator;
      AudioContext.prototype.createOscillator = function (...args) { window.chimes += 1; return orig.apply(this, args); };
    });
    const idA = await openApp(a, server.url);
    const idB = await openApp(b, server.url);
    await b.getByTestId('my-id').click(); // a user gesture, so the page may play sound later
    await pair(a, b, idB);
    await waitConnected(a);
    await a.waitForFunction((p) => window.ponte.conversation(p).link.chatOpen, idB);
    await b.evaluate(() => { window.fakeHidden = true; });
    await a.getByTestId('call-video').click();
    await b.waitForFunction(() => window.shown.some((n) => /chamando/.test(n.title)));
    const note = (await b.evaluate(() => window.shown)).find((n) => /chamando/.test(n.title));
    assert.equal(note.title, `ponte: ${idA.slice(0, 4)}-${idA.slice(4)} está chamando`);
    assert.match(note.body, /Chamada de vídeo/);
    assert.match(await b.getByTestId('call-status').textContent(), /Chamada de vídeo recebida/);
    assert.equal(await b.getByTestId('call-accept').getAttribute('aria-label'), 'Atender');
    const c1 = await b.evaluate(() => window.chimes);
    await b.waitForFunction((n) => window.chimes > n, c1, { timeout: 5000 }); // it rings again
    await screenshot(b, 'call-ringing-ptbr-desktop');
    await a.getByTestId('call-hangup').click();
    await panelState(b, 'ended');
    assert.ok(await b.evaluate(() => window.closedNotes) >= 1, 'the notification is taken back');
    const c2 = await b.evaluate(() => window.chimes);
    await b.waitForTimeout(2500);
    assert.equal(await b.evaluate(() => window.chimes), c2, 'the ring stopped');
    assert.match(await callLine(b, 'call-missed'), /Chamada perdida de/);
  });

  test('nobody answers: the caller gets "no answer", the callee a missed call, the ring stops, both are idle again', async () => {
    const [a, b, idA, idB] = await connected({}, { mobile: true });
    // 30 s of ringing would make the test slow: the test-only hook shortens it on both pages (docs/web-client.md).
    for (const p of [a, b]) await p.evaluate(() => window.ponte.setRingTimeout(3000));
    await b.evaluate(() => {
      window.chimes = 0;
      const orig = AudioContext.prototype.createOscillator;
      AudioContext.prototype.createOscillator = function (...args) { window.chimes += 1; return orig.apply(this, args); };
    });
    const placed = Date.now();
    await a.getByTestId('call-video').click();
    await panelState(b, 'incoming');
    await a.waitForFunction(() => window.ponte.callState().ringing);
    await b.waitForFunction(() => window.chimes > 0, null, { timeout: 5000 });
    await panelState(a, 'ended', 10000);
    await panelState(b, 'ended', 10000);
    const rang = Date.now() - placed;
    assert.ok(rang >= 2500, `it rang for the set time before giving up (${rang} ms)`);
    assert.equal((await state(a)).reason, 'unanswered');
    assert.equal((await state(b)).reason, 'missed', 'the caller\'s call-end timeout reaches the callee');
    assert.equal(await callLine(a, 'call-unanswered'), `No answer from ${idB.slice(0, 4)}-${idB.slice(4)}`);
    assert.equal(await callLine(b, 'call-missed'), `Missed call from ${idA.slice(0, 4)}-${idA.slice(4)}`);
    // Both idle: no live call, the panels are gone, the caller's preview camera is released, the callee never opened one.
    for (const p of [a, b]) {
      assert.equal(await p.evaluate(() => window.ponte.calls.call), null);
      assert.equal(await p.getByTestId('call-panel').isVisible(), false);
    }
    assert.deepEqual((await a.evaluate(() => window.ponte.callTracks())).filter((t) => t.readyState !== 'ended'), []);
    assert.deepEqual(await b.evaluate(() => window.ponte.callTracks()), []);
    const chimes = await b.evaluate(() => window.chimes);
    await b.waitForTimeout(2500);
    assert.equal(await b.evaluate(() => window.chimes), chimes, 'the ring stopped');
    await screenshot(b, 'call-missed-360');
    // Idle for real: the next call rings and is answered.
    await answeredCall(a, b);
    await a.getByTestId('call-hangup').click();
    await panelState(b, 'ended');
    assert.deepEqual(a.errors, []);
    assert.deepEqual(b.errors, []);
  });

  test('ending the conversation ends the call on both sides', async () => {
    const [a, b] = await connected();
    await answeredCall(a, b, 'video');
    await a.getByTestId('end-chat').click();
    await panelState(a, 'ended');
    await panelState(b, 'ended');
    for (const p of [a, b]) {
      assert.equal((await state(p)).reason, 'gone');
      assert.deepEqual((await p.evaluate(() => window.ponte.callTracks())).filter((t) => t.readyState !== 'ended'), []);
    }
  });
});
