// Fast end-to-end tests of the web client against the real ponte binary on loopback: several browser contexts in
// one headless Chromium talk to each other through ponte's signaling. No NAT here (see lab.test.mjs for that).
//
//   cd tests/browser && node --test loopback.test.mjs     (needs target/debug/ponte and /usr/bin/chromium)

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  requirements, launch, newPage, startPonte, freeTcpPort, loopbackToml, loopbackSetup, openApp, pair, waitConnected,
  sendMessage, waitForMessage, screenshot, which,
} from './lib.mjs';
import { execFileSync } from 'node:child_process';

const missing = requirements();

describe('web client on loopback', { skip: missing || false }, () => {
  let setup;
  let server;
  const open = (opts) => setup.open(opts);

  before(async () => {
    setup = await loopbackSetup({ more: '[signaling]\nrequest_timeout_secs = 60' });
    ({ server } = setup);
  });

  after(async () => {
    if (setup) await setup.close();
  });

  test('start screen shows my ID, copy button and share link', async () => {
    const a = await open();
    const id = await openApp(a, server.url);
    assert.match(id, /^[23456789abcdefghjkmnpqrstuvwxyz]{8}$/);
    const shown = await a.getByTestId('my-id').textContent();
    assert.equal(shown.replace('-', ''), id);
    assert.equal(await a.getByTestId('share-link').inputValue(), `${server.url}/#${id}`);
    assert.equal(await a.getByTestId('copy-id').isEnabled(), true);
    await screenshot(a, 'start-desktop');
    const m = await open({ mobile: true });
    await openApp(m, server.url);
    await screenshot(m, 'start-360');
    // QR code of the share link; decoded with zbarimg when it is installed (apt-get install zbar-tools).
    await m.getByTestId('qr-toggle').click();
    await m.locator('[data-testid=qr] svg').waitFor();
    await screenshot(m, 'start-qr-360');
    if (which('zbarimg')) {
      const png = path.join(tmpdir(), `ponte-qr-${process.pid}.png`);
      await m.locator('[data-testid=qr] svg').screenshot({ path: png });
      const decoded = execFileSync('zbarimg', ['-q', '--raw', png], { encoding: 'utf8' }).trim();
      rmSync(png, { force: true });
      assert.equal(decoded, await m.getByTestId('share-link').inputValue());
    } else {
      console.log('# zbarimg not installed: the QR code is drawn but not decoded');
    }
    const dark = await open({ colorScheme: 'dark' });
    await openApp(dark, server.url);
    await screenshot(dark, 'start-desktop-dark');
    assert.deepEqual(a.errors, []);
  });

  test('request, accept, chat both ways with receipts, typing, no HTML injection, direct path, same security code', async () => {
    const a = await open();
    const b = await open({ mobile: true });
    await openApp(a, server.url);
    const idB = await openApp(b, server.url);

    // Forgiving input: capitals, a space and a dash.
    await a.getByTestId('peer-id-input').fill(` ${idB.slice(0, 4).toUpperCase()} - ${idB.slice(4)} `);
    await a.getByTestId('connect').click();
    await a.getByTestId('pending').waitFor();
    assert.match(await a.getByTestId('pending').textContent(), /waiting for/i);
    await b.getByTestId('incoming-request').waitFor();
    await screenshot(b, 'incoming-request-360');
    await screenshot(a, 'waiting-desktop');
    const bDesk = await open();
    const idBD = await openApp(bDesk, server.url);
    await a.getByTestId('peer-id-input').fill(idBD);
    await a.getByTestId('connect').click();
    await bDesk.getByTestId('incoming-request').waitFor();
    await screenshot(bDesk, 'incoming-request-desktop');
    await bDesk.getByTestId('decline').click();

    await b.getByTestId('accept').click();
    await waitConnected(a);
    await waitConnected(b);

    await sendMessage(a, 'olá <b>not bold</b> <img src=x onerror=alert(1)>');
    await waitForMessage(b, 'olá <b>not bold</b>');
    assert.equal(await b.locator('[data-testid=message-list] b').count(), 0, 'no HTML from messages');
    assert.equal(await b.locator('[data-testid=message-list] img').count(), 0, 'no HTML from messages');
    await a.waitForSelector('[data-testid=message-status][data-status=delivered]');

    // Typing indicator.
    await b.getByTestId('message-input').pressSequentially('typing…');
    await a.waitForFunction(() => /typing/.test(document.querySelector('[data-testid=typing]').textContent));
    await b.getByTestId('message-input').fill('and back from B');
    await b.getByTestId('send').click();
    await waitForMessage(a, 'and back from B');
    await b.waitForSelector('[data-testid=message-status][data-status=delivered]');
    const sender = await a.locator('[data-testid=message][data-from=peer] [data-testid=message-sender]').first().textContent();
    assert.equal(sender.replace('-', ''), idB);

    // Path and RTT from getStats.
    await a.waitForFunction(() => /direct/i.test(document.querySelector('[data-testid=path-label]').textContent), null, { timeout: 10000 });
    assert.match(await b.getByTestId('path-label').textContent(), /direct/i);
    assert.match(await a.getByTestId('connection-state').textContent(), /connected/i);

    // Security code: same on both sides.
    const codeA = await a.getByTestId('security-code').textContent();
    const codeB = await b.getByTestId('security-code').textContent();
    // Two lasting identities (loopback is a secure context): the stable code of both keys, 20 digits (verify.js);
    // without identities (an older server): this connection's DTLS code, 12 digits.
    const kind = await a.getByTestId('security-code').getAttribute('data-kind');
    assert.match(codeA, kind === 'identity' ? /^\d{4}( \d{4}){4}$/ : /^\d{4} \d{4} \d{4}$/);
    assert.equal(codeA, codeB);
    await a.getByTestId('details-toggle').click();
    await screenshot(a, 'chat-direct-desktop');
    await screenshot(b, 'chat-direct-360');

    // Ending the chat reaches the other side.
    await a.getByTestId('end-chat').click();
    await b.waitForSelector('[data-testid=connection-state][data-state=closed]');
  });

  test('decline, unknown ID, cancel, request timeout message', async () => {
    const a = await open();
    const b = await open();
    await openApp(a, server.url);
    const idB = await openApp(b, server.url);

    // Decline.
    await a.getByTestId('peer-id-input').fill(idB);
    await a.getByTestId('connect').click();
    await b.getByTestId('decline').click();
    await a.waitForFunction(() => /declined/i.test(document.querySelector('[data-testid=connect-message]').textContent));
    assert.equal(await a.getByTestId('pending').isVisible(), false);

    // Unknown ID (valid shape, nobody online).
    await a.getByTestId('peer-id-input').fill('zzzz-zzzz');
    await a.getByTestId('connect').click();
    await a.waitForFunction(() => /nobody/i.test(document.querySelector('[data-testid=connect-message]').textContent));
    assert.equal(await a.getByTestId('pending').isVisible(), false);

    // Invalid characters are explained before anything is sent.
    await a.getByTestId('peer-id-input').fill('k7m2-x9p0');
    await a.getByTestId('connect').click();
    assert.match(await a.getByTestId('connect-message').textContent(), /not used in IDs/);

    // Cancel: the receiver's prompt goes away.
    await a.getByTestId('peer-id-input').fill(idB);
    await a.getByTestId('connect').click();
    await b.getByTestId('incoming-request').waitFor();
    await a.getByTestId('cancel').click();
    await b.getByTestId('incoming-request').waitFor({ state: 'detached' });
    assert.equal(await a.getByTestId('pending').isVisible(), false);
    await screenshot(a, 'after-cancel-desktop');
  });

  test('a reload keeps the ID; a share link starts a request', async () => {
    const a = await open();
    const b = await open();
    const idA = await openApp(a, server.url);
    await a.reload();
    await a.waitForFunction(() => window.ponte && window.ponte.id);
    assert.equal(await a.evaluate(() => window.ponte.id), idA);
    assert.equal((await a.getByTestId('my-id').textContent()).replace('-', ''), idA);

    // A dropped WebSocket (network blip) reconnects with the token and gets the same ID back.
    await a.evaluate(() => window.ponte.signaling.ws.close());
    await a.waitForSelector('[data-testid=server-status]:not([data-state=open])');
    await a.waitForSelector('[data-testid=server-status][data-state=open]', { timeout: 15000 });
    assert.equal(await a.evaluate(() => window.ponte.id), idA);
    assert.equal(await a.evaluate(() => window.ponte.signaling.session.resumed), true);

    await b.goto(`${server.url}/#${idA.toUpperCase()}`);
    await a.getByTestId('incoming-request').waitFor();
    assert.equal(await a.getByTestId('incoming-request').getAttribute('data-peer'), await b.evaluate(() => window.ponte.id));
    assert.equal(await b.evaluate(() => location.hash), '');
    await a.getByTestId('accept').click();
    await waitConnected(a);
    await waitConnected(b);
  });

  test('several conversations at once with unread counts', async () => {
    const a = await open({ colorScheme: 'dark' });
    const b = await open();
    const c = await open();
    await openApp(a, server.url);
    const idB = await openApp(b, server.url);
    const idC = await openApp(c, server.url);
    await pair(a, b, idB);
    await waitConnected(a);
    await pair(a, c, idC);
    await waitConnected(a);
    await waitConnected(c);
    // A now looks at C; B writes.
    await sendMessage(b, 'one');
    await sendMessage(b, 'two');
    const badge = a.locator(`[data-testid=conversation][data-peer="${idB}"] [data-testid=unread]`);
    await a.waitForFunction((sel) => document.querySelector(sel)?.textContent === '2', `[data-testid=conversation][data-peer="${idB}"] [data-testid=unread]`);
    await screenshot(a, 'two-conversations-desktop-dark');
    await a.locator(`[data-testid=conversation][data-peer="${idB}"]`).click();
    await waitForMessage(a, 'two');
    assert.equal(await badge.isVisible(), false);
    await sendMessage(a, 'hello B, from the dark side');
    await a.waitForSelector('[data-testid=message-status][data-status=delivered]');
    await screenshot(a, 'chat-desktop-dark');
  });

  test('glare: both sides restart ICE at the same moment and perfect negotiation sorts it out', async () => {
    const a = await open();
    const b = await open();
    const idA = await openApp(a, server.url);
    const idB = await openApp(b, server.url);
    await pair(a, b, idB);
    await waitConnected(a);
    await waitConnected(b);
    const restart = (p, peer) => p.evaluate((id) => { window.ponte.conversation(id).link.restart(); }, peer);
    for (let round = 0; round < 3; round++) {
      await Promise.all([restart(a, idB), restart(b, idA)]);
      await a.waitForTimeout(300);
      await a.waitForFunction((id) => {
        const l = window.ponte.conversation(id).link;
        return l.pc.signalingState === 'stable' && l.pc.connectionState === 'connected';
      }, idB, { timeout: 15000 });
      await b.waitForFunction((id) => {
        const l = window.ponte.conversation(id).link;
        return l.pc.signalingState === 'stable' && l.pc.connectionState === 'connected';
      }, idA, { timeout: 15000 });
      await sendMessage(a, `glare round ${round}`);
      await waitForMessage(b, `glare round ${round}`);
    }
    assert.deepEqual(a.errors, []);
    assert.deepEqual(b.errors, []);
  });

  test('drop a file on the chat; the receiver declines one and accepts another; the list follows new messages', async () => {
    const a = await open();
    const b = await open();
    await openApp(a, server.url);
    const idB = await openApp(b, server.url);
    await pair(a, b, idB);
    await waitConnected(a);
    await waitConnected(b);
    const drop = async (name, text) => {
      const dt = await a.evaluateHandle(([n, tx]) => {
        const d = new DataTransfer();
        d.items.add(new File([tx], n, { type: 'text/plain' }));
        return d;
      }, [name, text]);
      await a.dispatchEvent('#chat', 'dragenter', { dataTransfer: dt });
      assert.equal(await a.locator('#dropzone').isVisible(), true);
      await a.dispatchEvent('#chat', 'drop', { dataTransfer: dt });
    };
    await drop('unwanted.txt', 'no thanks');
    await b.locator('[data-testid=file-transfer][data-state=incoming]').waitFor();
    await b.getByTestId('file-decline').click();
    await a.waitForSelector('[data-testid=file-transfer][data-state=declined]');
    await drop('notes.txt', 'olá, ponte');
    await b.locator('[data-testid=file-transfer][data-state=incoming] [data-testid=file-accept]').click();
    await b.waitForSelector('[data-testid=file-transfer][data-state=done] [data-testid=file-download]');
    await a.waitForSelector('[data-testid=file-transfer][data-state=done]');
    const [download] = await Promise.all([b.waitForEvent('download'), b.locator('[data-testid=file-download]').last().click()]);
    assert.equal(download.suggestedFilename(), 'notes.txt');
    const saved = await download.path();
    const { readFileSync } = await import('node:fs');
    assert.equal(readFileSync(saved, 'utf8'), 'olá, ponte');

    // Auto-scroll: after many messages the newest is in view on the receiving side.
    for (let i = 0; i < 40; i++) await sendMessage(a, `line ${i}`);
    await waitForMessage(b, 'line 39');
    await b.waitForFunction(() => {
      const l = document.querySelector('[data-testid=message-list]');
      return l.scrollHeight > l.clientHeight && l.scrollHeight - l.scrollTop - l.clientHeight < 4;
    });
  });

  test('a 100 MB file arrives intact, with progress on both sides', { timeout: 300000 }, async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'ponte-file-'));
    try {
      const file = path.join(dir, 'big-test-file.bin');
      const size = 100 * 1024 * 1024;
      const want = await writeRandomFile(file, size);
      const a = await open();
      const b = await open({ mobile: true });
      await openApp(a, server.url);
      const idB = await openApp(b, server.url);
      await pair(a, b, idB);
      await waitConnected(a);
      await waitConnected(b);

      await a.getByTestId('file-input').setInputFiles(file);
      await b.getByTestId('file-accept').click();
      // Progress is shown on both sides while it runs.
      await b.waitForFunction(() => Number(document.querySelector('[data-testid=progress]')?.dataset.percent) >= 3, null, { timeout: 60000 });
      await a.waitForFunction(() => Number(document.querySelector('[data-testid=progress]')?.dataset.percent) >= 3, null, { timeout: 60000 });
      await screenshot(a, 'file-progress-desktop');
      await screenshot(b, 'file-progress-360');
      await b.getByTestId('file-download').waitFor({ timeout: 240000 });
      await a.waitForSelector('[data-testid=file-transfer][data-state=done]', { timeout: 30000 });
      await screenshot(b, 'file-done-360');
      await screenshot(a, 'file-done-desktop');
      const [download] = await Promise.all([b.waitForEvent('download'), b.getByTestId('file-download').click()]);
      assert.equal(download.suggestedFilename(), 'big-test-file.bin');
      const saved = path.join(dir, 'received.bin');
      await download.saveAs(saved);
      assert.equal(await sha256File(saved), want);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('a direct chat keeps working while the signaling server restarts; the new ID is announced', { timeout: 120000 }, async () => {
    // A fixed port: the restarted ponte must be where the pages reconnect to.
    const toml = await loopbackToml({ port: await freeTcpPort() });
    let own = await startPonte({ toml, name: 'restartable ponte' });
    try {
      const a = await open();
      const b = await open();
      const idA = await openApp(a, own.url);
      const idB = await openApp(b, own.url);
      await pair(a, b, idB);
      await waitConnected(a);
      await waitConnected(b);
      await sendMessage(a, 'before the restart');
      await waitForMessage(b, 'before the restart');

      await own.stop();
      await a.waitForSelector('[data-testid=server-status]:not([data-state=open])');
      await b.waitForSelector('[data-testid=server-status]:not([data-state=open])');
      await sendMessage(a, 'while the server is down');
      await waitForMessage(b, 'while the server is down');
      await sendMessage(b, 'still here');
      await waitForMessage(a, 'still here');
      assert.equal(await a.getByTestId('connection-state').getAttribute('data-state'), 'connected');
      await screenshot(a, 'server-down-desktop');

      own = await startPonte({ toml, name: 'restarted ponte' });
      await a.waitForSelector('[data-testid=server-status][data-state=open]', { timeout: 30000 });
      const newA = await a.evaluate(() => window.ponte.id);
      assert.notEqual(newA, idA, 'IDs do not survive a server restart');
      assert.match(await a.getByTestId('banner').textContent(), /new ID/);
      assert.equal((await a.getByTestId('my-id').textContent()).replace('-', ''), newA);
      await sendMessage(a, 'after the restart');
      await waitForMessage(b, 'after the restart');
      // The two tell each other their new IDs over the chat channel and silently re-pair on the new server, so
      // ICE restarts can be signalled again.
      await b.waitForSelector('[data-testid=server-status][data-state=open]', { timeout: 30000 });
      const newB = await b.evaluate(() => window.ponte.id);
      await a.waitForFunction((id) => window.ponte.conversation(id)?.serverPaired === true, newB, { timeout: 20000 });
      await b.waitForFunction((id) => window.ponte.conversation(id)?.serverPaired === true, newA, { timeout: 20000 });
      assert.equal(await a.locator(`[data-testid=conversation][data-peer="${newB}"]`).count(), 1);
      assert.equal(await b.getByTestId('incoming-request').count(), 0, 'the re-pairing needs no click');
    } finally {
      await own.stop();
    }
  });

  test('a hidden tab gets a browser notification and a chime for a request and a message', async () => {
    const a = await open();
    const b = await open();
    await b.addInitScript(() => {
      // Record instead of showing; pretend the tab is in the background.
      window.shown = [];
      window.Notification = class {
        static permission = 'granted';
        static requestPermission() { return Promise.resolve('granted'); }
        constructor(title, opts) { window.shown.push({ title, body: opts && opts.body }); }
        close() {}
      };
      Object.defineProperty(document, 'hidden', { configurable: true, get: () => window.fakeHidden === true });
      window.chimes = 0;
      const orig = AudioContext.prototype.createOscillator;
      AudioContext.prototype.createOscillator = function (...args) { window.chimes += 1; return orig.apply(this, args); };
    });
    await openApp(a, server.url);
    const idB = await openApp(b, server.url);
    await b.getByTestId('my-id').click(); // a user gesture, so the page may play sound later
    await b.evaluate(() => { window.fakeHidden = true; });
    await a.getByTestId('peer-id-input').fill(idB);
    await a.getByTestId('connect').click();
    await b.waitForFunction(() => window.shown.length === 1);
    const [note] = await b.evaluate(() => window.shown);
    assert.match(note.title, /chat request/i);
    assert.match(note.body, /wants to chat/);
    assert.ok(await b.evaluate(() => window.chimes) > 0, 'a chime played');
    await b.getByTestId('accept').click();
    await waitConnected(a);
    await sendMessage(a, 'are you there?');
    await b.waitForFunction(() => window.shown.length === 2);
    assert.equal((await b.evaluate(() => window.shown))[1].body, 'are you there?');
  });

  test('UI language follows the browser and can be switched', async () => {
    const p = await open({ locale: 'pt-BR' });
    await openApp(p, server.url);
    assert.equal(await p.getByTestId('connect').textContent(), 'Conectar');
    await p.getByTestId('lang-select').selectOption('en');
    assert.equal(await p.getByTestId('connect').textContent(), 'Connect');
    await p.getByTestId('lang-select').selectOption('pt-BR');
    await screenshot(p, 'start-ptbr-desktop');
  });

  test('/diag reaches the signaling server', async () => {
    const p = await open();
    await p.goto(`${server.url}/diag`);
    await p.waitForSelector('[data-testid=diag-check][data-check=ws][data-result=ok]', { timeout: 15000 });
    await p.waitForSelector('body[data-done=true]', { timeout: 30000 });
    await screenshot(p, 'diag-loopback-desktop');
  });
});

describe('a refused session says why', { skip: missing || false }, () => {
  let server;
  let browser;
  before(async () => {
    // One session per source: the second tab from 127.0.0.1 is refused with too_many_sessions and a 1013 close.
    server = await startPonte({ toml: await loopbackToml({ more: '[signaling]\nmax_sessions_per_ip = 1' }) });
    browser = await launch();
  });
  after(async () => {
    if (browser) await browser.close();
    if (server) await server.stop();
  });

  test('too many sessions from one network is named, not shown as "offline"', async () => {
    const a = await newPage(browser);
    await openApp(a, server.url);
    const b = await newPage(browser);
    await b.goto(server.url);
    const status = b.getByTestId('server-status');
    await b.waitForFunction(() => /Too many connections from your network — retrying in \d+ s/
      .test(document.querySelector('.server-status-text').textContent), null, { timeout: 15000 });
    assert.equal(await status.getAttribute('data-state'), 'closed');
    // pt-BR says the same.
    const c = await newPage(browser, { locale: 'pt-BR' });
    await c.goto(server.url);
    await c.waitForFunction(() => /Conexões demais a partir da sua rede/
      .test(document.querySelector('.server-status-text').textContent), null, { timeout: 15000 });
  });
});

async function writeRandomFile(file, size) {
  const hash = createHash('sha256');
  const out = createWriteStream(file);
  const block = 4 * 1024 * 1024;
  for (let off = 0; off < size; off += block) {
    const buf = randomBytes(Math.min(block, size - off));
    hash.update(buf);
    if (!out.write(buf)) await new Promise((r) => out.once('drain', r));
  }
  await new Promise((r, j) => out.end((e) => (e ? j(e) : r())));
  return hash.digest('hex');
}

function sha256File(file) {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256');
    createReadStream(file).on('data', (d) => h.update(d)).on('end', () => resolve(h.digest('hex'))).on('error', reject);
  });
}
