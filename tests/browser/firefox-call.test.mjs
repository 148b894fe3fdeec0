// Calls between Firefox (Debian's firefox-esr with fake media streams, driven by puppeteer-core over WebDriver
// BiDi) and Chromium (fake camera and microphone, playwright-core), through the real ponte on loopback: Firefox calls
// Chromium and the reverse, and media flow both ways each time (inbound-rtp audio packets and decoded video frames
// grow on both sides); hang-up releases every track.
//
//   cd tests/browser && node --test firefox-call.test.mjs   (needs target/debug/ponte, firefox-esr, chromium)

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import puppeteer from 'puppeteer-core';
import { requirements, loopbackSetup, openApp as openChromium } from './lib.mjs';
import {
  FAKE_MEDIA_ARGS, FIREFOX_FAKE_MEDIA_PREFS, until, waitCallState, assertMediaFlows, assertTracksReleased,
} from './callkit.mjs';

// Not imported from firefox.test.mjs: importing a test file would run its tests here too.
const FIREFOX = process.env.FIREFOX || '/usr/bin/firefox-esr';

function missing() {
  const base = requirements({ needPonte: true });
  if (existsSync(FIREFOX)) return base || null;
  if (process.env.CI === 'true') throw new Error(`Firefox tests cannot run, missing ${FIREFOX} (apt-get install -y firefox-esr)`);
  return `${base ? `${base}, ` : ''}missing ${FIREFOX} (apt-get install -y firefox-esr)`;
}

describe('calls between Firefox and Chromium', { skip: missing() || false, concurrency: 1 }, () => {
  let setup;
  let server;
  let firefox;
  let f;
  let c;
  let idF;
  let idC;

  before(async () => {
    // ponte on 127.0.0.1 and the Chromium side, as in the other loopback tests (lib.mjs).
    setup = await loopbackSetup({ chromeArgs: ['--autoplay-policy=no-user-gesture-required', ...FAKE_MEDIA_ARGS], permissions: ['camera', 'microphone'] });
    ({ server } = setup);
    firefox = await puppeteer.launch({
      browser: 'firefox',
      executablePath: FIREFOX,
      headless: true,
      timeout: 60000,
      extraPrefsFirefox: {
        // Loopback candidates, no mDNS names (as firefox.test.mjs), and fake camera and microphone.
        'media.peerconnection.ice.loopback': true,
        'media.peerconnection.ice.obfuscate_host_addresses': false,
        ...FIREFOX_FAKE_MEDIA_PREFS,
      },
    });
    // 127.0.0.1 is a secure context in both browsers, so getUserMedia is allowed on plain http there.
    const ctx = await firefox.createBrowserContext();
    f = await ctx.newPage();
    f.errors = [];
    f.on('pageerror', (e) => f.errors.push(String(e)));
    await f.setViewport({ width: 1280, height: 800 });
    await f.goto(server.url);
    await f.waitForFunction(() => window.ponte && window.ponte.id, { timeout: 20000 });
    idF = await f.evaluate(() => window.ponte.id);
    c = await setup.open({ mobile: true });
    idC = await openChromium(c, server.url);
    // Firefox requests, Chromium accepts.
    await f.type('[data-testid=peer-id-input]', idC);
    await f.click('[data-testid=connect]');
    await c.getByTestId('accept').click();
    await f.waitForSelector('[data-testid=connection-state][data-state=connected]', { timeout: 40000 });
    await c.waitForSelector('[data-testid=connection-state][data-state=connected]', { timeout: 40000 });
    // Calls ride the chat's data channel.
    await until(f, 'the chat channel open in Firefox', (peer) => window.ponte.conversation(peer).link.chatOpen, idC);
    await until(c, 'the chat channel open in Chromium', (peer) => window.ponte.conversation(peer).link.chatOpen, idF);
  });

  after(async () => {
    if (firefox) await firefox.close().catch(() => {});
    if (setup) await setup.close();
  });

  test('Firefox calls Chromium (video): media both ways, Chromium hangs up, every track released', { timeout: 90000 }, async () => {
    await f.click('[data-testid=call-video]');
    await waitCallState(c, 'incoming');
    await c.getByTestId('call-accept').click();
    await waitCallState(f, 'active');
    await waitCallState(c, 'active');
    await assertMediaFlows([f, c], { video: true, label: 'Firefox → Chromium' });
    await c.getByTestId('call-hangup').click();
    await waitCallState(c, 'ended', { reason: 'hangup' });
    await waitCallState(f, 'ended', { reason: 'remote-hangup' });
    await assertTracksReleased(f, 'Firefox');
    await assertTracksReleased(c, 'Chromium');
  });

  test('Chromium calls Firefox (video): media both ways, Firefox hangs up, every track released', { timeout: 90000 }, async () => {
    await c.getByTestId('call-video').click();
    await waitCallState(f, 'incoming');
    await f.click('[data-testid=call-accept]');
    await waitCallState(c, 'active');
    await waitCallState(f, 'active');
    await assertMediaFlows([f, c], { video: true, label: 'Chromium → Firefox' });
    await f.click('[data-testid=call-hangup]');
    await waitCallState(f, 'ended', { reason: 'hangup' });
    await waitCallState(c, 'ended', { reason: 'remote-hangup' });
    await assertTracksReleased(f, 'Firefox');
    await assertTracksReleased(c, 'Chromium');
    await until(f, 'Firefox logs the call', () => !!document.querySelector('[data-testid=system-message][data-kind=call-ended]'));
    assert.deepEqual(f.errors, []);
  });
});
