// Unit tests of the call state machine (www/js/call.js) in Node, no browser: ring, accept, decline, busy, missed,
// hang-up from either side, glare (both call at once), the peer going away, stale messages, the ring timeout, media
// refused, and the quality level. Two `Calls` talk to each other through fake links that deliver the chat channel's
// messages; the media part is a fake that records what it was asked to do.
//
//   cd tests/browser && node --test call-unit.test.mjs

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Calls, qualityLevel, RING_MS, RING_GRACE_MS } from '../../www/js/call.js';

/** Timers run by hand: `tick(ms)` fires what is due. */
function clock() {
  let now = 0;
  let seq = 0;
  const timers = new Map();
  return {
    set: (fn, ms) => { const id = ++seq; timers.set(id, { at: now + ms, fn }); return id; },
    clear: (id) => { timers.delete(id); },
    tick(ms) {
      now += ms;
      for (const [id, x] of [...timers].sort((a, b) => a[1].at - b[1].at)) {
        if (x.at <= now && timers.has(id)) { timers.delete(id); x.fn(); }
      }
    },
    get pending() { return timers.size; },
  };
}

class FakeMedia {
  constructor({ failOpen = null } = {}) {
    this.log = [];
    this.failOpen = failOpen;
  }

  async open(call) {
    this.log.push(['open', call.id]);
    if (this.failOpen) throw Object.assign(new Error('denied'), { name: this.failOpen });
    const mk = (kind) => ({ kind, readyState: 'live', enabled: true, stop() { this.readyState = 'ended'; } });
    call.local.audio = mk('audio');
    call.tracks.push(call.local.audio);
    if (call.video) { call.local.video = mk('video'); call.tracks.push(call.local.video); }
  }

  async addTransceivers(call) { this.log.push(['transceivers', call.id]); }
  async setMuted(call, on) { this.log.push(['mute', on]); }
  async setCamera(call, on) { this.log.push(['camera', on]); }
  async switchCamera(call, facing) { this.log.push(['switch', facing]); }
  close(call, { stopTransceivers }) {
    this.log.push(['close', call.id, stopTransceivers]);
    for (const t of call.tracks) t.stop();
  }
}

/** A link from `me` to `peer`; `wire(a, b)` delivers each side's messages to the other side's Calls. */
class FakeLink extends EventTarget {
  constructor(peer) {
    super();
    this.peer = peer;
    this.sent = [];
    this.open = true;
    this.deliver = null;
    this.pc = null;
  }

  send(msg) {
    if (!this.open) return false;
    this.sent.push(msg);
    if (this.deliver) queueMicrotask(() => this.deliver(structuredClone(msg)));
    return true;
  }

  fail() {
    this.dispatchEvent(new CustomEvent('state', { detail: { state: 'failed' } }));
  }

  close() {
    this.open = false;
    this.dispatchEvent(new CustomEvent('closed'));
  }
}

let ids = 0;
function side(name, { failOpen, clk = clock(), idPrefix = name } = {}) {
  const media = new FakeMedia({ failOpen });
  const calls = new Calls({ media, newId: () => `${idPrefix}${++ids}`, setTimer: clk.set, clearTimer: clk.clear });
  const ended = [];
  calls.addEventListener('ended', (ev) => ended.push(ev.detail.call.reason));
  const busy = [];
  calls.addEventListener('busy-missed', (ev) => busy.push(ev.detail.id));
  return { name, calls, media, clk, ended, busy };
}

/** Links between two sides: a.links[b.name] and b.links[a.name]. */
function wire(a, b) {
  const ab = new FakeLink(b.name);
  const ba = new FakeLink(a.name);
  ab.deliver = (m) => b.calls.receive(ba, m);
  ba.deliver = (m) => a.calls.receive(ab, m);
  return { ab, ba };
}

const settle = () => new Promise((r) => setTimeout(r, 0));

test('a call rings, is accepted, media flows, and hang-up from the callee ends both and stops every track', async () => {
  const a = side('a');
  const b = side('b');
  const { ab, ba } = wire(a, b);
  const call = await a.calls.start(ab, { video: true });
  assert.equal(call.state, 'outgoing');
  assert.deepEqual(ab.sent[0], { t: 'call', id: call.id, video: true });
  await settle();
  const inc = b.calls.call;
  assert.equal(inc.state, 'incoming');
  assert.equal(inc.video, true);
  assert.equal(inc.dir, 'in');
  assert.deepEqual(ba.sent[0], { t: 'call-ringing', id: call.id });
  assert.equal(call.ringing, true, 'the caller knows it rings');
  await b.calls.accept();
  assert.deepEqual(b.media.log.map((x) => x[0]), ['open', 'transceivers'], 'callee: media first, then the transceivers (offer)');
  assert.equal(inc.state, 'connecting');
  await settle();
  assert.equal(call.state, 'connecting');
  a.calls.mediaFlowing(call);
  b.calls.mediaFlowing(inc);
  assert.equal(call.state, 'active');
  assert.equal(inc.state, 'active');
  assert.ok(call.startedAt > 0);
  // Mute and camera state reach the other side (it shows the avatar, not a frozen frame).
  await a.calls.setMuted(true);
  await a.calls.setCameraOff(true);
  await settle();
  assert.equal(inc.remoteMuted, true);
  assert.equal(inc.remoteCameraOff, true);
  await a.calls.setCameraOff(false);
  await settle();
  assert.equal(inc.remoteCameraOff, false);
  b.calls.receive(ba, { t: 'call-media', id: 'stale', muted: false });
  assert.equal(inc.remoteMuted, true, 'a stale id changes nothing');
  b.calls.hangup();
  assert.equal(inc.state, 'ended');
  assert.equal(inc.reason, 'hangup');
  assert.deepEqual(b.media.log.at(-1), ['close', call.id, true], 'the side that hangs up stops the transceivers');
  await settle();
  assert.equal(call.state, 'ended');
  assert.equal(call.reason, 'remote-hangup');
  assert.deepEqual(a.media.log.at(-1), ['close', call.id, false], 'the other side only stops its tracks');
  for (const t of [...call.tracks, ...inc.tracks]) assert.equal(t.readyState, 'ended');
  assert.equal(a.calls.call, null);
  assert.equal(b.calls.call, null);
  assert.equal(a.clk.pending + b.clk.pending, 0, 'no timer left');
});

test('decline: the caller hears "declined", the callee logs that it declined; a voice call opens no camera', async () => {
  const a = side('a');
  const b = side('b');
  const { ab } = wire(a, b);
  const call = await a.calls.start(ab, { video: false });
  assert.equal(call.local.video, null);
  assert.equal(call.cameraOff, true);
  await settle();
  b.calls.decline();
  assert.deepEqual(b.ended, ['rejected']);
  await settle();
  assert.deepEqual(a.ended, ['declined']);
  assert.equal(b.media.log.filter((x) => x[0] === 'open').length, 0, 'declining never opens the camera or microphone');
});

test('busy: an invite during a call is answered busy, the busy side logs a missed call, its call goes on', async () => {
  const a = side('a');
  const b = side('b');
  const c = side('c');
  const { ab } = wire(a, b);
  const { ab: cb } = wire(c, b); // c → b
  const first = await a.calls.start(ab);
  await settle();
  await b.calls.accept();
  await settle();
  const second = await c.calls.start(cb);
  await settle();
  assert.equal(second.state, 'ended');
  assert.equal(second.reason, 'busy');
  assert.deepEqual(b.busy, [second.id]);
  assert.equal(b.calls.call.id, first.id, 'the running call is untouched');
  assert.equal(first.state, 'connecting');
});

test('missed: the caller cancels, or nobody answers in time; the callee stops ringing either way', async () => {
  const a = side('a');
  const b = side('b');
  let { ab } = wire(a, b);
  await a.calls.start(ab);
  await settle();
  assert.equal(b.calls.call.state, 'incoming');
  a.calls.hangup();
  assert.deepEqual(a.ended, ['cancelled']);
  assert.equal(ab.sent.at(-1).t, 'call-end');
  await settle();
  assert.deepEqual(b.ended, ['missed']);

  // Nobody answers: the caller gives up after RING_MS and says so; the callee logs a missed call.
  const clk = clock();
  const x = side('x', { clk });
  const y = side('y', { clk });
  ({ ab } = wire(x, y));
  const call = await x.calls.start(ab);
  await settle();
  clk.tick(RING_MS - 1);
  assert.equal(call.state, 'outgoing');
  clk.tick(1);
  assert.equal(call.reason, 'unanswered');
  assert.deepEqual(ab.sent.at(-1), { t: 'call-end', id: call.id, reason: 'timeout' });
  await settle();
  assert.deepEqual(y.ended, ['missed']);

  // The caller's `call-end` is lost: the callee stops ringing by itself a little later.
  const clk2 = clock();
  const p = side('p', { clk: clk2 });
  const q = side('q', { clk: clk2 });
  const l = wire(p, q);
  await p.calls.start(l.ab);
  await settle();
  l.ab.deliver = null; // the chat channel drops everything from now on
  clk2.tick(RING_MS);
  assert.deepEqual(p.ended, ['unanswered']);
  assert.equal(q.calls.call.state, 'incoming');
  clk2.tick(RING_GRACE_MS);
  assert.deepEqual(q.ended, ['missed']);
});

test('glare: both call each other at once; one call survives, accepted on the side whose id lost', async () => {
  const a = side('a', { idPrefix: 'k' }); // "k…" > "c…": a's call wins
  const b = side('b', { idPrefix: 'c' });
  const { ab, ba } = wire(a, b);
  ab.deliver = null;
  ba.deliver = null;
  const ca = await a.calls.start(ab, { video: true });
  const cb = await b.calls.start(ba, { video: false });
  // Both invites cross on the wire.
  b.calls.receive(ba, structuredClone(ab.sent[0]));
  a.calls.receive(ab, structuredClone(ba.sent[0]));
  await settle();
  assert.equal(a.calls.call, ca, 'the winner keeps its call');
  assert.equal(ca.state, 'outgoing');
  assert.equal(b.calls.call, cb, 'the loser keeps its Call object (and its media) …');
  assert.equal(cb.id, ca.id, '… under the winning id');
  assert.equal(cb.dir, 'in');
  assert.equal(cb.state, 'connecting', 'and accepts it by itself');
  assert.equal(cb.video, true);
  // No busy, no ringing: the accept, and (b had chosen voice, a video) that b's camera is off.
  assert.deepEqual(ba.sent.map((m) => m.t), ['call', 'call-accept', 'call-media']);
  assert.deepEqual(ba.sent[2], { t: 'call-media', id: ca.id, muted: false, cameraOff: true });
  assert.deepEqual(ab.sent.map((m) => m.t), ['call'], 'the winner ignores the losing invite');
  a.calls.receive(ab, structuredClone(ba.sent[1]));
  assert.equal(ca.state, 'connecting');
  assert.deepEqual(a.ended, []);
  assert.deepEqual(b.ended, []);
});

test('the peer going away ends the call: link failed, chat channel closed, conversation closed', async () => {
  for (const how of ['fail', 'close', 'chat-close']) {
    const a = side('a');
    const b = side('b');
    const { ab, ba } = wire(a, b);
    const call = await a.calls.start(ab);
    await settle();
    await b.calls.accept();
    await settle();
    a.calls.mediaFlowing(call);
    if (how === 'fail') ab.fail();
    else if (how === 'close') ab.close();
    else ab.dispatchEvent(new CustomEvent('chat-close'));
    assert.equal(call.state, 'ended', how);
    assert.equal(call.reason, 'gone', how);
    assert.ok(call.tracks.every((t) => t.readyState === 'ended'), how);
    assert.equal(a.calls.call, null);
    // A reconnecting link does not end it.
    ba.dispatchEvent(new CustomEvent('state', { detail: { state: 'reconnecting' } }));
    assert.equal(b.calls.call.state, 'connecting', how);
  }
});

test('stale and malformed messages are ignored; a new call after the last works', async () => {
  const a = side('a');
  const b = side('b');
  const { ab, ba } = wire(a, b);
  const first = await a.calls.start(ab);
  await settle();
  b.calls.decline();
  await settle();
  const second = await a.calls.start(ab);
  await settle();
  assert.equal(b.calls.call.id, second.id);
  // Messages of the first call, or with junk ids, change nothing.
  for (const m of [{ t: 'call-accept', id: first.id }, { t: 'call-end', id: first.id }, { t: 'call-decline', id: first.id },
    { t: 'call-busy' }, { t: 'call-accept', id: 42 }, { t: 'call-end', id: 'x'.repeat(100) }, { t: 'call-end', id: 'a b' }, null, {}]) {
    a.calls.receive(ab, m);
    b.calls.receive(ba, m);
  }
  assert.equal(second.state, 'outgoing');
  assert.equal(b.calls.call.state, 'incoming');
  // A duplicate invite is not "busy".
  b.calls.receive(ba, { t: 'call', id: second.id, video: true });
  assert.equal(ba.sent.filter((m) => m.t === 'call-busy').length, 0);
  // Messages of the right id from another peer's link are not this call's.
  const other = new FakeLink('z');
  a.calls.receive(other, { t: 'call-accept', id: second.id });
  assert.equal(second.state, 'outgoing');
  await b.calls.accept();
  await settle();
  assert.equal(second.state, 'connecting');
});

test('media refused: the caller never sends the invite; the callee tells the caller', async () => {
  const a = side('a', { failOpen: 'NotAllowedError' });
  const b = side('b');
  const { ab } = wire(a, b);
  const call = await a.calls.start(ab);
  assert.equal(call.reason, 'media-error');
  assert.equal(call.error, 'NotAllowedError');
  assert.equal(ab.sent.length, 0);

  const c = side('c');
  const d = side('d', { failOpen: 'NotFoundError' });
  const { ab: cd } = wire(c, d);
  const call2 = await c.calls.start(cd);
  await settle();
  await d.calls.accept();
  assert.deepEqual(d.ended, ['media-error']);
  await settle();
  assert.equal(call2.reason, 'failed');
});

test('the chat channel being closed when calling ends the call at once as gone', async () => {
  const a = side('a');
  const { ab } = wire(a, side('b'));
  ab.open = false;
  const call = await a.calls.start(ab);
  assert.equal(call.reason, 'gone');
  ab.open = true;
  await a.calls.start(ab);
  await assert.rejects(a.calls.start(ab), /already in a call/, 'the page allows one call at a time');
});

test('controls: mute and camera go to the media; switching camera flips facing', async () => {
  const a = side('a');
  const b = side('b');
  const { ab } = wire(a, b);
  const call = await a.calls.start(ab, { video: true });
  await a.calls.setMuted(true);
  assert.equal(call.muted, true);
  await a.calls.setCameraOff(true);
  assert.equal(call.cameraOff, true);
  await a.calls.setCameraOff(false);
  await a.calls.switchCamera();
  assert.equal(call.facing, 'environment');
  assert.deepEqual(a.media.log.slice(1).map((x) => x.join(':')), ['mute:true', 'camera:false', 'camera:true', 'switch:environment']);
});

test('quality level from round trip and loss', () => {
  assert.equal(qualityLevel({ rtt: null, loss: null }), 'unknown');
  assert.equal(qualityLevel({ rtt: 20, loss: 0 }), 'good');
  assert.equal(qualityLevel({ rtt: 300, loss: 0 }), 'fair');
  assert.equal(qualityLevel({ rtt: 20, loss: 0.05 }), 'fair');
  assert.equal(qualityLevel({ rtt: 20, loss: 0.2 }), 'poor');
  assert.equal(qualityLevel({ rtt: 900, loss: null }), 'poor');
});
