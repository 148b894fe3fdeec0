// Helpers for the call tests (lab-call.test.mjs, firefox-call.test.mjs): drive a call through the web client's
// `window.ponte` call hooks (docs/web-client.md, "Calls") and check that media really flow, from getStats.
// Written against page.evaluate only, so the same helpers drive Playwright (Chromium) and Puppeteer (Firefox) pages.

import assert from 'node:assert/strict';

/** Chromium flags for calls with fake devices: a test-pattern camera and a beeping microphone, no permission prompt. */
export const FAKE_MEDIA_ARGS = ['--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream'];

/** Firefox prefs for the same: fake streams, no permission prompt. */
export const FIREFOX_FAKE_MEDIA_PREFS = {
  'media.navigator.streams.fake': true,
  'media.navigator.permission.disabled': true,
};

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Poll `fn` (evaluated in the page with `arg`) until it returns something truthy; returns it. */
export async function until(page, what, fn, arg, timeout = 20000) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    last = await page.evaluate(fn, arg);
    if (last) return last;
    if (Date.now() > deadline) {
      const st = await page.evaluate(() => window.ponte.callState()).catch((e) => `callState threw ${e}`);
      throw new Error(`timed out after ${timeout} ms waiting for ${what}; call state: ${JSON.stringify(st)}`);
    }
    await sleep(200);
  }
}

export const callState = (page) => page.evaluate(() => window.ponte.callState());

/** Wait until the page's current (or last) call is in `state` (and, for 'ended', has `reason` if given). */
export async function waitCallState(page, state, { reason, timeout = 30000 } = {}) {
  return until(page, `call state ${state}${reason ? ` (${reason})` : ''}`, ([s, r]) => {
    const c = window.ponte.callState();
    return c && c.state === s && (!r || c.reason === r) ? c : null;
  }, [state, reason || null], timeout);
}

/** getStats of the current call, through the client's own summary (`ponte.callStats`). */
export const callStats = (page) => page.evaluate(() => window.ponte.callStats());

/**
 * Over `ms`, both pages receive audio packets and decode video frames (when `video`): the counters of inbound-rtp
 * grow on each side. Returns the last stats of each page.
 */
export async function assertMediaFlows(pages, { video = true, ms = 3000, label = '' } = {}) {
  const before = await Promise.all(pages.map(callStats));
  // Media may need a moment after "active" (DTLS-SRTP, first keyframe): wait until they grow, within a bound.
  const deadline = Date.now() + ms + 15000;
  let after;
  for (;;) {
    await sleep(ms);
    after = await Promise.all(pages.map(callStats));
    // A counter the browser does not report yet (no inbound video before the first frame) counts as 0.
    const n = (s, kind, key) => s?.inbound?.[kind]?.[key] ?? 0;
    const ok = after.every((s, i) =>
      n(s, 'audio', 'packetsReceived') > n(before[i], 'audio', 'packetsReceived') + 10 &&
      (!video || n(s, 'video', 'framesDecoded') > n(before[i], 'video', 'framesDecoded') + 5));
    if (ok) return after;
    if (Date.now() > deadline) {
      assert.fail(`${label} media do not flow both ways: before ${JSON.stringify(before)} after ${JSON.stringify(after)}`);
    }
  }
}

/** Every local track the call created has ended (no camera or microphone left on). */
export async function assertTracksReleased(page, who) {
  const tracks = await until(page, `${who}: every call track ended`, () => {
    const t = window.ponte.callTracks();
    return t.length && t.every((x) => x.readyState === 'ended') ? t : null;
  }, null, 10000);
  assert.ok(tracks.length >= 1, `${who} had call tracks`);
}
