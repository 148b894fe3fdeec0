// Calls in the NAT lab (tests/lab/netlab.sh): two Chromiums with fake camera and microphone, each in its own home
// behind its own NAT, ponte on 198.51.100.10. Cone/cone: the call is direct; symmetric/symmetric: it goes through
// ponte's TURN relay. Both sides' inbound-rtp show audio packets and decoded video frames growing; mute and
// camera-off stop the outgoing tracks; hang-up releases every track; decline and busy (cone lab only: they are
// messages on the chat channel, whatever the path). Needs root.
//
//   cd tests/browser && node --test lab-call.test.mjs
//
// The lab serves plain http, not a secure context, so getUserMedia would be refused: the browsers treat exactly
// the lab's origin as secure, as https would be.

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { newPage, waitConnected, openApp, pair, screenshot } from './lib.mjs';
import { labMissing, startLab, stopLab, twoPeers, LAB_URL } from './labkit.mjs';
import {
  FAKE_MEDIA_ARGS, until, callState, callStats, waitCallState, assertMediaFlows, assertTracksReleased,
} from './callkit.mjs';

const missing = labMissing();
const CHROME = [...FAKE_MEDIA_ARGS, '--autoplay-policy=no-user-gesture-required', `--unsafely-treat-insecure-origin-as-secure=${LAB_URL}`];

/** Camera and microphone allowed for the lab's origin (the fake-UI flag answers the prompt anyway). */
async function allowMedia(...pages) {
  for (const p of pages) await p.context().grantPermissions(['camera', 'microphone'], { origin: LAB_URL });
}

/** Calls ride the chat's data channel: wait until it is open on both sides. */
async function chatOpen(a, b, idA, idB) {
  await a.waitForFunction((peer) => window.ponte.conversation(peer).link.chatOpen, idB, { timeout: 20000 });
  await b.waitForFunction((peer) => window.ponte.conversation(peer).link.chatOpen, idA, { timeout: 20000 });
}

/** Outbound counters of one kind grow by less than `slack` over `ms`: that sender sends nothing (or next to it). */
async function assertSenderSilent(page, kind, what, { ms = 2500, slack = 3 } = {}) {
  // The sender may need a moment to take the change (a frame or an RTP packet already queued).
  await new Promise((r) => setTimeout(r, 1000));
  const s0 = (await callStats(page)).outbound[kind];
  await new Promise((r) => setTimeout(r, ms));
  const s1 = (await callStats(page)).outbound[kind];
  const sent = (s1?.packetsSent ?? 0) - (s0?.packetsSent ?? 0);
  assert.ok(sent <= slack, `${what}: the ${kind} sender still sent ${sent} packets in ${ms} ms (${JSON.stringify(s0)} → ${JSON.stringify(s1)})`);
}

async function assertSenderSends(page, kind, what, ms = 2500) {
  const s0 = (await callStats(page)).outbound[kind];
  await new Promise((r) => setTimeout(r, ms));
  const s1 = (await callStats(page)).outbound[kind];
  assert.ok((s1?.packetsSent ?? 0) - (s0?.packetsSent ?? 0) > 10, `${what}: the ${kind} sender sends again (${JSON.stringify(s0)} → ${JSON.stringify(s1)})`);
}

for (const [nat, path] of [['cone', 'direct'], ['symmetric', 'relay']]) {
  describe(`calls, both behind ${nat} NAT (${path})`, { skip: missing || false, concurrency: 1 }, () => {
    let lab;
    let a;
    let b;
    let idB;
    before(async () => {
      lab = await startLab({ nat1: nat, nat2: nat, chromeArgs: CHROME });
      ({ a, b, idB } = await twoPeers(lab));
      await allowMedia(a, b);
      await waitConnected(a, 40000);
      await waitConnected(b, 40000);
      await chatOpen(a, b, await a.evaluate(() => window.ponte.id), idB);
    });
    after(async () => stopLab(lab));

    test(`video call: media both ways over the ${path} path, mute and camera off stop the senders, hang-up releases every track`, { timeout: 120000 }, async () => {
      await a.getByTestId('call-video').click();
      await waitCallState(b, 'incoming');
      await b.getByTestId('call-accept').click();
      await waitCallState(a, 'active');
      await waitCallState(b, 'active');
      const stats = await assertMediaFlows([a, b], { video: true, label: `${nat}/${nat}` });
      for (const [p, who] of [[a, 'caller'], [b, 'callee']]) {
        assert.equal(stats[p === a ? 0 : 1].path.kind, path, `${who}: the call is ${path} (${JSON.stringify(stats[p === a ? 0 : 1].path)})`);
        // The quality indicator says so too.
        assert.equal(await p.getByTestId('call-quality').getAttribute('data-path'), path);
      }
      await screenshot(a, `lab-call-${nat}-desktop`);
      await screenshot(b, `lab-call-${nat}-360`);

      // Mute on A: A's audio sender stops; unmute: it sends again.
      await a.getByTestId('call-mute').click();
      assert.equal(await a.getByTestId('call-mute').getAttribute('aria-pressed'), 'true');
      assert.equal((await callState(a)).muted, true);
      await assertSenderSilent(a, 'audio', 'muted');
      await a.getByTestId('call-mute').click();
      await assertSenderSends(a, 'audio', 'unmuted');
      // Camera off on B: B's video sender stops, and A decodes no more of B's frames; the camera track is released.
      await b.getByTestId('call-camera').click();
      // The state follows once the sender has dropped the camera (replaceTrack is asynchronous).
      await b.waitForFunction(() => window.ponte.callState().cameraOff === true, null, { timeout: 10000 });
      await assertSenderSilent(b, 'video', 'camera off');
      const f0 = (await callStats(a)).inbound.video.framesDecoded;
      await new Promise((r) => setTimeout(r, 2000));
      const f1 = (await callStats(a)).inbound.video.framesDecoded;
      assert.ok(f1 - f0 <= 2, `A still decodes B's video with B's camera off: ${f0} → ${f1}`);
      const camOn = await b.evaluate(() => window.ponte.callTracks().filter((t) => t.kind === 'video' && t.readyState === 'live'));
      assert.deepEqual(camOn, [], 'camera off leaves no live camera track');
      // Audio still flows both ways meanwhile.
      await assertMediaFlows([a, b], { video: false, label: 'audio with the camera off' });

      // B hangs up: both end, every track either side created has ended, both conversations log the call.
      await b.getByTestId('call-hangup').click();
      await waitCallState(b, 'ended', { reason: 'hangup' });
      await waitCallState(a, 'ended', { reason: 'remote-hangup' });
      await assertTracksReleased(a, 'caller');
      await assertTracksReleased(b, 'callee');
      for (const p of [a, b]) await p.locator('[data-testid=system-message][data-kind=call-ended]').first().waitFor({ timeout: 10000 });
      assert.equal(await a.getByTestId('call-panel').isVisible(), false, 'the call panel closes');
      // The chat still works after the call (the connection the call rode on stays).
      await waitConnected(a);
      await waitConnected(b);
    });

    test('voice call: audio both ways, hang-up from the caller', { timeout: 90000 }, async () => {
      await a.evaluate((peer) => window.ponte.startCall(peer, { video: false }), idB);
      await waitCallState(b, 'incoming');
      assert.equal((await callState(b)).video, false);
      await b.evaluate(() => window.ponte.acceptCall());
      await waitCallState(a, 'active');
      await waitCallState(b, 'active');
      const stats = await assertMediaFlows([a, b], { video: false, label: `voice ${nat}/${nat}` });
      assert.equal(stats[0].path.kind, path);
      await a.evaluate(() => window.ponte.hangUp());
      await waitCallState(a, 'ended', { reason: 'hangup' });
      await waitCallState(b, 'ended', { reason: 'remote-hangup' });
      await assertTracksReleased(a, 'caller');
      await assertTracksReleased(b, 'callee');
    });

    if (nat === 'cone') {
      test('decline: the caller sees "declined", nobody keeps a microphone', { timeout: 60000 }, async () => {
        await a.evaluate((peer) => window.ponte.startCall(peer, { video: true }), idB);
        await waitCallState(b, 'incoming');
        await until(a, 'the caller hears it ringing', () => window.ponte.callState()?.ringing === true);
        await b.getByTestId('call-decline').click();
        await waitCallState(a, 'ended', { reason: 'declined' });
        await waitCallState(b, 'ended', { reason: 'rejected' });
        await a.locator('[data-testid=system-message][data-kind=call-declined]').first().waitFor({ timeout: 10000 });
        await assertTracksReleased(a, 'caller');
        // The callee never opened its devices for a call it declined.
        assert.deepEqual(await b.evaluate(() => window.ponte.callTracks().filter((t) => t.readyState === 'live')), []);
      });

      test('busy: a third person calling someone in a call gets "busy", the call goes on', { timeout: 120000 }, async () => {
        // C, in home 1's browser (its own context: another person), pairs with B.
        const c = await newPage(lab.browsers[0]);
        lab.pages.push(c);
        await allowMedia(c);
        const idC = await openApp(c, lab.url);
        await pair(c, b, idB);
        await waitConnected(c, 40000);
        await chatOpen(c, b, idC, idB);
        await a.evaluate((peer) => window.ponte.startCall(peer, { video: false }), idB);
        await waitCallState(b, 'incoming');
        await b.evaluate(() => window.ponte.acceptCall());
        await waitCallState(a, 'active');
        await c.evaluate((peer) => window.ponte.startCall(peer, { video: false }), idB);
        await waitCallState(c, 'ended', { reason: 'busy' });
        await c.locator('[data-testid=system-message][data-kind=call-busy]').first().waitFor({ timeout: 10000 });
        await assertTracksReleased(c, 'the busy caller');
        // B was told about the call it could not take (a missed-call line), and its own call is untouched.
        await until(b, 'a missed-call line', () => !!document.querySelector('[data-testid=system-message][data-kind=call-missed]'));
        assert.equal((await callState(b)).state, 'active');
        await assertMediaFlows([a, b], { video: false, label: 'the first call while C got busy' });
        await a.evaluate(() => window.ponte.hangUp());
        await waitCallState(b, 'ended', { reason: 'remote-hangup' });
        await assertTracksReleased(b, 'callee');
      });
    }
  });
}
