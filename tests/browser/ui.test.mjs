// What a person sees, checked in Chromium on loopback: the newest message stays in view when the connection
// details open, and /diag's candidate table keeps its words whole on a 360 px phone. (Firefox: firefox.test.mjs.)
//
//   cd tests/browser && node --test ui.test.mjs     (needs target/debug/ponte and /usr/bin/chromium)

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  requirements, loopbackSetup, openApp, pair, waitConnected, sendMessage, waitForMessage,
} from './lib.mjs';

const missing = requirements();

/** How far the last message sticks out of the message list (px, 0 when it is fully inside). */
function lastMessageOverflow(page) {
  return page.evaluate(() => {
    const list = document.querySelector('[data-testid=message-list]');
    const items = list.querySelectorAll('[data-testid=message]');
    const last = items[items.length - 1].getBoundingClientRect();
    const box = list.getBoundingClientRect();
    return Math.max(0, box.top - last.top, last.bottom - box.bottom);
  });
}

/** Table cells whose text runs over more than one line: [text, lines]. */
function brokenCells(page, selector) {
  return page.evaluate((sel) => [...document.querySelectorAll(sel)].map((cell) => {
    const r = document.createRange();
    r.selectNodeContents(cell);
    const tops = new Set([...r.getClientRects()].filter((x) => x.width > 0).map((x) => Math.round(x.top)));
    return [cell.textContent, tops.size];
  }).filter(([, lines]) => lines > 1), selector);
}

describe('what the pages look like', { skip: missing || false }, () => {
  let setup;
  let server;
  const open = (opts) => setup.open(opts);

  before(async () => {
    setup = await loopbackSetup();
    ({ server } = setup);
  });

  after(async () => {
    if (setup) await setup.close();
  });

  test('opening the connection details keeps the newest message fully in view (360 px and desktop)', async () => {
    const a = await open();
    const b = await open({ mobile: true });
    await openApp(a, server.url);
    const idB = await openApp(b, server.url);
    await pair(a, b, idB);
    await waitConnected(a);
    await waitConnected(b);
    for (let i = 0; i < 25; i++) await sendMessage(a, `message ${i}`);
    await waitForMessage(b, 'message 24');
    for (const p of [a, b]) {
      await p.waitForFunction(() => {
        const l = document.querySelector('[data-testid=message-list]');
        return l.scrollHeight > l.clientHeight && l.scrollHeight - l.scrollTop - l.clientHeight < 4;
      });
      assert.equal(await lastMessageOverflow(p), 0, 'at the bottom before');
      await p.getByTestId('details-toggle').click();
      await p.locator('#details').waitFor();
      await p.waitForTimeout(200); // a frame or two for layout
      assert.equal(await lastMessageOverflow(p), 0, 'the newest message is fully visible with the details open');
      // A new message while the details are open is in view too.
      await p.getByTestId('details-toggle').click();
      await p.getByTestId('details-toggle').click();
      await p.waitForTimeout(200);
      assert.equal(await lastMessageOverflow(p), 0, 'after closing and opening again');
    }
    // Scrolled up on purpose: opening the details does not yank the list to the bottom.
    await b.getByTestId('details-toggle').click();
    await b.evaluate(() => { document.querySelector('[data-testid=message-list]').scrollTop = 0; });
    await b.getByTestId('details-toggle').click();
    await b.waitForTimeout(200);
    assert.equal(await b.evaluate(() => document.querySelector('[data-testid=message-list]').scrollTop), 0);
  });

  test('/diag at 360 px: the candidate table breaks no word in its headings, types and protocols', async () => {
    const p = await open({ mobile: true });
    await p.goto(`${server.url}/diag`);
    await p.waitForSelector('body[data-done=true]', { timeout: 30000 });
    await p.locator('[data-testid=diag-candidates] tbody tr[data-type=relay]').first().waitFor();
    assert.deepEqual(await brokenCells(p, '[data-testid=diag-candidates] th'), []);
    assert.deepEqual(await brokenCells(p, '[data-testid=diag-candidates] td:nth-child(1), [data-testid=diag-candidates] td:nth-child(2)'), []);
    // Addresses stay whole too (one candidate per block on a phone; only a long server URL may wrap).
    assert.deepEqual(await brokenCells(p, '[data-testid=diag-candidates] td:nth-child(3)'), []);
    // The page itself does not scroll sideways (a wide table scrolls inside its own box).
    assert.ok(await p.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth + 1), 'no sideways page scroll');
  });
});
