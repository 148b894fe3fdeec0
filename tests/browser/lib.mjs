// Shared helpers for the browser tests: find/launch Debian's Chromium through playwright-core, start ponte with a
// temporary config on free ports, take screenshots, and small page helpers.

import { spawn, execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import net from 'node:net';
import dgram from 'node:dgram';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.resolve(here, '../..');
export const WWW = path.join(ROOT, 'www');
export const SHOTS = path.join(ROOT, 'artifacts', 'screenshots');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
export const PONTE = process.env.PONTE_BIN || path.join(ROOT, 'target', 'debug', 'ponte');

export const CHROME_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-dev-shm-usage',
  '--no-first-run',
  '--no-default-browser-check',
  '--mute-audio',
  // No mDNS ".local" host candidates: they would need multicast, and in the lab the homes cannot resolve them anyway.
  '--disable-features=WebRtcHideLocalIpsWithMdns',
];

/** Whether the browser tests can run; in CI a missing Chromium or ponte binary is a failure, never a skip. */
export function requirements({ needPonte = true } = {}) {
  const missing = [];
  if (!existsSync(CHROMIUM)) missing.push(`${CHROMIUM} (apt-get install -y chromium)`);
  if (needPonte && !existsSync(PONTE)) missing.push(`${PONTE} (cargo build)`);
  if (missing.length && process.env.CI === 'true') {
    throw new Error(`browser tests cannot run, missing: ${missing.join(', ')}`);
  }
  return missing.length ? `missing ${missing.join(', ')}` : null;
}

export async function launch({ executablePath = CHROMIUM, extraArgs = [] } = {}) {
  return chromium.launch({
    executablePath,
    headless: true,
    args: [...CHROME_ARGS, ...extraArgs],
    timeout: 60000,
  });
}

/** A browser context that looks like a desktop or a phone, English unless told otherwise. */
export async function newPage(browser, { mobile = false, locale = 'en-US', colorScheme = 'light' } = {}) {
  const ctx = await browser.newContext({
    viewport: mobile ? { width: 360, height: 740 } : { width: 1280, height: 800 },
    deviceScaleFactor: 1,
    isMobile: mobile,
    hasTouch: mobile,
    locale,
    colorScheme,
    acceptDownloads: true,
  });
  const page = await ctx.newPage();
  page.errors = [];
  page.on('pageerror', (e) => page.errors.push(String(e)));
  page.on('console', (m) => {
    if (process.env.DEBUG_BROWSER) console.log(`[browser ${m.type()}] ${m.text()}`);
    if (m.type() === 'error') page.errors.push(m.text());
  });
  return page;
}

/**
 * A port that is free now and stays out of the kernel's ephemeral range (32768-60999 by default), so that a test
 * that stops ponte and starts it again on the same port does not find it taken meanwhile by some browser's or
 * client's ephemeral socket (Chromium's ICE sockets bind on 127.0.0.1 too).
 */
async function freePort(host, udp) {
  const tcpFree = (port) => new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen(port, host, () => s.close(() => resolve(true)));
  });
  const udpFree = (port) => new Promise((resolve) => {
    const u = dgram.createSocket(host.includes(':') ? 'udp6' : 'udp4');
    u.once('error', () => resolve(false));
    u.bind(port, host, () => u.close(() => resolve(true)));
  });
  for (let i = 0; i < 200; i++) {
    const port = 20000 + Math.floor(Math.random() * 12000);
    if (await tcpFree(port) && (!udp || await udpFree(port))) return port;
  }
  throw new Error(`no free ${udp ? 'UDP+TCP' : 'TCP'} port on ${host} between 20000 and 32000`);
}

export async function freeTcpPort(host = '127.0.0.1') {
  return freePort(host, false);
}

/** A port free on both UDP and TCP (TURN listens on both). */
export async function freeUdpTcpPort(host = '127.0.0.1') {
  return freePort(host, true);
}

/**
 * Start ponte. `toml` is the config text (without web_root, which is added: the tests always serve www/ from disk
 * so a change to the client needs no rebuild). `netns`: run inside that network namespace.
 * Resolves once the log says "HTTP listening on http://ADDR".
 */
export async function startPonte({ toml, netns, name = 'ponte' }) {
  const dir = mkdtempSync(path.join(tmpdir(), 'ponte-web-test-'));
  const cfg = path.join(dir, 'ponte.toml');
  const webRoot = `web_root = ${JSON.stringify(WWW)}`;
  const text = /\[http\]/.test(toml) ? toml.replace(/\[http\]/, `[http]\n${webRoot}`) : `[http]\n${webRoot}\n${toml}`;
  // Several pontes run at once in the tests: no shared metrics port.
  const full = /\[metrics\]/.test(text) ? text : `${text}\n[metrics]\nenabled = false\n`;
  writeFileSync(cfg, full);
  const cmd = netns ? 'ip' : PONTE;
  const args = netns ? ['netns', 'exec', netns, PONTE, '-c', cfg] : ['-c', cfg];
  const proc = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, RUST_LOG: process.env.PONTE_LOG || 'info', NO_COLOR: '1' } });
  let log = '';
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${name} did not start in 20 s:\n${log}`)), 20000);
    const onData = (d) => {
      log += d;
      const m = /HTTP listening on (http:\/\/\S+)/.exec(log);
      if (m) { clearTimeout(timer); resolve(m[1].replace(/[^\w:/.[\]-]+$/, '')); }
    };
    proc.stdout.on('data', onData);
    proc.stderr.on('data', onData);
    proc.once('exit', (code) => { clearTimeout(timer); reject(new Error(`${name} exited with ${code}:\n${log}`)); });
  });
  const handle = {
    url,
    proc,
    cfg,
    get log() { return log; },
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill('SIGTERM');
        await new Promise((r) => { const tm = setTimeout(() => { proc.kill('SIGKILL'); r(); }, 6000); proc.once('exit', () => { clearTimeout(tm); r(); }); });
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return handle;
}

/**
 * The config of a ponte on 127.0.0.1 for the loopback tests: HTTP on `port` (0: any), TURN on a free UDP+TCP port.
 * `http`: more lines for [http]; `more`: sections after [turn] (e.g. "[signaling]\nrequest_timeout_secs = 60").
 */
export async function loopbackToml({ port = 0, http = '', more = '' } = {}) {
  const turnPort = await freeUdpTcpPort();
  return `[http]
listen = "127.0.0.1:${port}"
${http ? `${http}\n` : ''}[turn]
listen_udp = ["127.0.0.1:${turnPort}"]
listen_tcp = ["127.0.0.1:${turnPort}"]
${more ? `${more}\n` : ''}`;
}

/**
 * The set-up of a loopback suite, for its before(): ponte on 127.0.0.1 (`loopbackToml({http, more})`) and one
 * Chromium whose pages connect over 127.0.0.1 host candidates (`chromeArgs`: more flags). `open(opts)` makes a
 * page (newPage's options; `permissions` granted to its context, e.g. camera and microphone) and keeps it;
 * `close()`, for after(), prints the kept pages' errors, closes the browser and stops ponte.
 */
export async function loopbackSetup({ http, more, chromeArgs = [], permissions = [] } = {}) {
  const server = await startPonte({ toml: await loopbackToml({ http, more }) });
  let browser;
  try {
    browser = await launch({ extraArgs: ['--allow-loopback-in-peer-connection', ...chromeArgs] });
  } catch (e) {
    await server.stop();
    throw e;
  }
  const pages = [];
  return {
    server,
    browser,
    pages,
    async open(opts) {
      const p = await newPage(browser, opts);
      if (permissions.length) await p.context().grantPermissions(permissions);
      pages.push(p);
      return p;
    },
    async close() {
      for (const p of pages) if (p.errors.length) console.log(`page errors: ${p.errors.join(' | ')}`);
      await browser.close().catch(() => {});
      await server.stop();
    },
  };
}

export async function screenshot(page, name, { fullPage = false } = {}) {
  mkdirSync(SHOTS, { recursive: true });
  await page.waitForTimeout(150); // let transitions settle
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage });
}

/** Open the app and wait for an ID. Returns the ID (canonical). */
export async function openApp(page, url) {
  await page.goto(url);
  try {
    await page.waitForFunction(() => window.ponte && window.ponte.id, null, { timeout: 15000 });
  } catch (e) {
    // One more try if the load itself was cut (e.g. net::ERR_NETWORK_CHANGED right after a lab came up).
    if (!page.errors.some((x) => /ERR_NETWORK_CHANGED|Failed to load/.test(x))) throw e;
    await page.reload();
    await page.waitForFunction(() => window.ponte && window.ponte.id, null, { timeout: 15000 });
  }
  return page.evaluate(() => window.ponte.id);
}

/** A requests B by typing B's ID; B accepts. Waits until both show "connected". */
export async function pair(a, b, bId, { typed } = {}) {
  await a.getByTestId('peer-id-input').fill(typed || bId);
  await a.getByTestId('connect').click();
  await b.getByTestId('accept').click();
}

export async function waitConnected(page, timeout = 30000) {
  await page.waitForSelector('[data-testid=connection-state][data-state=connected]', { timeout });
}

export async function sendMessage(page, text) {
  await page.getByTestId('message-input').fill(text);
  await page.getByTestId('message-input').press('Enter');
}

export async function waitForMessage(page, text, timeout = 15000) {
  await page.locator('[data-testid=message-list] [data-testid=message-text]', { hasText: text }).first().waitFor({ timeout });
}

export function which(cmd) {
  try { execFileSync('which', [cmd], { stdio: 'ignore' }); return true; } catch { return false; }
}
