// The same client in Firefox (Debian's firefox-esr, driven by puppeteer-core over WebDriver BiDi; never a
// downloaded browser): two Firefox tabs pair through the real ponte on loopback, send a file, and the finished
// transfer's bar is painted in the "done" colour (Firefox paints it with ::-moz-progress-bar, which the CSS once
// forgot: the bar stayed the accent colour); the newest message stays in view when the details open.
//
//   cd tests/browser && node --test firefox.test.mjs     (needs target/debug/ponte and /usr/bin/firefox-esr)

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import puppeteer from 'puppeteer-core';
import { requirements, startPonte, loopbackToml } from './lib.mjs';

export const FIREFOX = process.env.FIREFOX || '/usr/bin/firefox-esr';

function missingFirefox() {
  const base = requirements({ needPonte: true }) || '';
  if (existsSync(FIREFOX)) return base || null;
  if (process.env.CI === 'true') throw new Error(`Firefox tests cannot run, missing ${FIREFOX} (apt-get install -y firefox-esr)`);
  return `${base ? `${base}, ` : ''}missing ${FIREFOX} (apt-get install -y firefox-esr)`;
}

export async function launchFirefox() {
  return puppeteer.launch({
    browser: 'firefox',
    executablePath: FIREFOX,
    headless: true,
    timeout: 60000,
    extraPrefsFirefox: {
      // The two tabs talk over loopback, with plain host candidates (no mDNS names nobody here can resolve).
      'media.peerconnection.ice.loopback': true,
      'media.peerconnection.ice.obfuscate_host_addresses': false,
    },
  });
}

/** The colour of the middle pixel of `selector`, as painted (a screenshot decoded through a canvas in the page). */
async function paintedColour(page, selector) {
  const el = await page.$(selector);
  const png = await el.screenshot({ encoding: 'base64' });
  return page.evaluate(async (data) => {
    const img = new Image();
    img.src = `data:image/png;base64,${data}`;
    await img.decode();
    const c = document.createElement('canvas');
    c.width = img.naturalWidth;
    c.height = img.naturalHeight;
    const g = c.getContext('2d');
    g.drawImage(img, 0, 0);
    return [...g.getImageData(Math.floor(c.width / 2), Math.floor(c.height / 2), 1, 1).data.slice(0, 3)];
  }, png);
}

/** A CSS colour variable of the page as [r, g, b]. */
function cssColour(page, name) {
  return page.evaluate((n) => {
    const probe = document.createElement('span');
    probe.style.color = `var(${n})`;
    document.body.append(probe);
    const m = getComputedStyle(probe).color.match(/\d+/g).slice(0, 3).map(Number);
    probe.remove();
    return m;
  }, name);
}

const near = (a, b) => a.every((v, i) => Math.abs(v - b[i]) <= 12);

describe('web client in Firefox', { skip: missingFirefox() || false }, () => {
  let server;
  let browser;

  before(async () => {
    server = await startPonte({ toml: await loopbackToml() });
    browser = await launchFirefox();
  });

  after(async () => {
    if (browser) await browser.close();
    if (server) await server.stop();
  });

  async function openApp(width = 1280) {
    // Each page in its own browser context: two tabs of one profile share the lasting identity, and the newer one
    // takes the ID over (docs/protocol.md, "Several tabs"); these are two people.
    const ctx = await browser.createBrowserContext();
    const p = await ctx.newPage();
    p.errors = [];
    p.on('pageerror', (e) => p.errors.push(String(e)));
    await p.setViewport({ width, height: width > 400 ? 800 : 740 });
    await p.goto(server.url);
    await p.waitForFunction(() => window.ponte && window.ponte.id, { timeout: 20000 });
    return p;
  }

  test('pair, chat, send a file: the finished bar is the "done" colour, not the accent; details keep the newest message in view', { timeout: 120000 }, async () => {
    const a = await openApp();
    const b = await openApp(360);
    const idB = await b.evaluate(() => window.ponte.id);
    await a.type('[data-testid=peer-id-input]', idB);
    await a.click('[data-testid=connect]');
    await b.waitForSelector('[data-testid=accept]');
    await b.click('[data-testid=accept]');
    for (const p of [a, b]) await p.waitForSelector('[data-testid=connection-state][data-state=connected]', { timeout: 40000 });
    await a.evaluate((peer) => window.ponte.conversation(peer).files.offer(new File(['x'.repeat(300000)], 'firefox.txt', { type: 'text/plain' })), idB);
    await b.waitForSelector('[data-testid=file-transfer][data-state=incoming] [data-testid=file-accept]');
    await b.click('[data-testid=file-accept]');
    for (const p of [a, b]) {
      await p.waitForSelector('[data-testid=file-transfer][data-state=done]', { timeout: 30000 });
      const bar = '[data-testid=file-transfer][data-state=done] [data-testid=progress]';
      const [painted, ok, accent] = [await paintedColour(p, bar), await cssColour(p, '--ok'), await cssColour(p, '--accent')];
      assert.ok(near(painted, ok), `finished bar painted ${painted}, want --ok ${ok} (accent is ${accent})`);
    }
    // Opening the connection details keeps the newest item fully in view here too. (The tab in front: Firefox
    // runs no ResizeObserver in a background tab until it is shown, as in real life.)
    for (let i = 0; i < 20; i++) await a.evaluate((n) => { const x = document.querySelector('[data-testid=message-input]'); x.value = `line ${n}`; document.querySelector('#composer').requestSubmit(); }, i);
    await b.waitForFunction(() => [...document.querySelectorAll('[data-testid=message-text]')].some((x) => x.textContent === 'line 19'));
    for (const p of [a, b]) {
      await p.bringToFront();
      await p.waitForFunction(() => { const l = document.querySelector('[data-testid=message-list]'); return l.scrollHeight > l.clientHeight && l.scrollHeight - l.scrollTop - l.clientHeight < 4; });
      await p.click('[data-testid=details-toggle]');
      await new Promise((r) => setTimeout(r, 300));
      const overflow = await p.evaluate(() => {
        const list = document.querySelector('[data-testid=message-list]');
        const last = list.lastElementChild.getBoundingClientRect();
        const box = list.getBoundingClientRect();
        return Math.max(0, box.top - last.top, last.bottom - box.bottom);
      });
      assert.equal(overflow, 0, 'the newest message is fully visible with the details open');
      assert.deepEqual(p.errors, []);
    }
  });
});
