// The NAT lab for browser tests: tests/lab/netlab.sh namespaces, ponte in PREFIX-srv, one Chromium per home.

import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { ROOT, CHROMIUM, requirements, launch, newPage, startPonte, openApp, pair, which } from './lib.mjs';

const NETLAB = path.join(ROOT, 'tests', 'lab', 'netlab.sh');
export const SRV_IP = '198.51.100.10';
const HTTP_PORT = 8080;
/** The web client's origin in the lab (plain http: not a secure context unless the browser is told to treat it so). */
export const LAB_URL = `http://${SRV_IP}:${HTTP_PORT}`;

export function labMissing() {
  const base = requirements();
  if (base) return base;
  const why = [];
  if (process.getuid && process.getuid() !== 0) why.push('root (network namespaces)');
  if (!which('ip')) why.push('ip (apt-get install iproute2)');
  if (!which('iptables')) why.push('iptables');
  if (!which('ping')) why.push('ping (apt-get install iputils-ping)');
  if (why.length && process.env.CI === 'true') throw new Error(`lab tests cannot run, missing: ${why.join(', ')}`);
  return why.length ? `lab needs ${why.join(', ')}` : null;
}

let labCounter = 0;
/**
 * Bring up a lab, ponte in it, and one Chromium per home. Namespaces are named `$LAB_PREFIX<pid><n>-*` (`pw` by
 * default; give runs that may overlap on one machine different prefixes) unless `prefix` names them. `extraToml` is
 * appended to ponte's config right after its `[signaling]` section (so it may add `[[signaling.ice_servers]]`).
 * `chromeArgs`: more Chromium flags for both browsers (e.g. fake media devices; see LAB_URL for the page's origin).
 */
export async function startLab({ nat1, nat2, turn = true, prefix, extraToml = '', chromeArgs = [] }) {
  if (!prefix) {
    const base = (process.env.LAB_PREFIX || 'pw').replace(/[^a-z]/g, '').slice(0, 3) || 'pw';
    prefix = `${base}${process.pid % 10000}${labCounter++}`;
  }
  execFileSync('bash', [NETLAB, 'up', prefix, nat1, nat2], { stdio: 'inherit' });
  await settle(prefix);
  const dir = mkdtempSync(path.join(tmpdir(), 'ponte-lab-'));
  const lab = { prefix, dir, browsers: [], pages: [] };
  try {
    lab.ponteOptions = {
      netns: `${prefix}-srv`,
      toml: `[http]
listen = "${SRV_IP}:${HTTP_PORT}"
[turn]
enabled = ${turn}
listen_udp = ["${SRV_IP}:3478"]
listen_tcp = ["${SRV_IP}:3478"]
external_ip = "${SRV_IP}"
relay_ip = "${SRV_IP}"
allow_peers = ["198.51.100.0/24"]
secret = "lab-secret-not-for-production"
[signaling]
state_dir = "${path.join(dir, 'state')}"
${extraToml}`,
    };
    lab.server = await startPonte(lab.ponteOptions);
    lab.url = `http://${SRV_IP}:${HTTP_PORT}`;
    for (const home of ['h1', 'h2']) {
      const wrapper = path.join(dir, `chromium-${home}.sh`);
      writeFileSync(wrapper, `#!/bin/sh\nexec ip netns exec ${prefix}-${home} ${CHROMIUM} "$@"\n`);
      chmodSync(wrapper, 0o755);
      lab.browsers.push(await launch({ executablePath: wrapper, extraArgs: chromeArgs }));
    }
  } catch (e) {
    await stopLab(lab);
    throw e;
  }
  return lab;
}

/**
 * Wait until the lab's addresses are final (IPv6 duplicate-address detection done) and each home reaches the
 * server. Otherwise Chromium, started in the middle of it, sees a "network change" and aborts the page's loads
 * (net::ERR_NETWORK_CHANGED).
 */
async function settle(prefix) {
  const deadline = Date.now() + 15000;
  for (const node of ['srv', 'h1', 'h2', 'nat1', 'nat2']) {
    while (execFileSync('ip', ['-n', `${prefix}-${node}`, 'addr', 'show', 'tentative'], { encoding: 'utf8' }).trim()) {
      if (Date.now() > deadline) throw new Error(`${prefix}-${node}: addresses still tentative`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }
  for (const home of ['h1', 'h2']) {
    for (;;) {
      try {
        execFileSync('ip', ['netns', 'exec', `${prefix}-${home}`, 'ping', '-c', '1', '-W', '1', SRV_IP], { stdio: 'ignore' });
        break;
      } catch {
        if (Date.now() > deadline) throw new Error(`${prefix}-${home} cannot reach ${SRV_IP}`);
      }
    }
  }
}

/** Start ponte again in the lab with the same config (same addresses and ports, TURN secret and state dir). */
export async function restartServer(lab) {
  if (lab.server) await lab.server.stop();
  lab.server = null;
  lab.server = await startPonte({ ...lab.ponteOptions, name: 'restarted ponte' });
  return lab.server;
}

export async function stopLab(lab) {
  if (!lab) return;
  for (const p of lab.pages) if (p.errors && p.errors.length) console.log(`[${lab.prefix}] page errors: ${p.errors.join(' | ')}`);
  for (const b of lab.browsers) await b.close().catch(() => {});
  if (lab.server) await lab.server.stop().catch(() => {});
  try { execFileSync('bash', [NETLAB, 'down', lab.prefix], { stdio: 'inherit' }); } catch { /* best effort */ }
  rmSync(lab.dir, { recursive: true, force: true });
}

/** Desktop page in home 1, 360 px page in home 2, paired (A requests, B accepts). */
export async function twoPeers(lab) {
  const a = await newPage(lab.browsers[0]);
  const b = await newPage(lab.browsers[1], { mobile: true });
  lab.pages.push(a, b);
  await openApp(a, lab.url);
  const idB = await openApp(b, lab.url);
  await pair(a, b, idB);
  return { a, b, idB };
}


// ---------------------------------------------------------------- ponte at home (tests/lab/homelab.sh)

const HOMELAB = path.join(ROOT, 'tests', 'lab', 'homelab.sh');
export const HOME_SRV_IP = '10.77.1.10';
export const HOME_PUBLIC_IP = '198.51.100.21';

/**
 * ponte on a home server behind router 1 (`loopback`: whether that router does NAT loopback), a laptop (h1) and
 * a second laptop (h3) on its LAN, a phone (h2) behind router 2 (`phone`: cone | symmetric). Namespaces are
 * `$LAB_PREFIX`-based like startLab's but with an `hm` prefix so they never collide with netlab.sh's. ponte is
 * configured the way a new user would: wildcard listeners, `turn.external_ip` = the router's public address,
 * the router forwarding the ports. `lab.lanUrl` and `lab.publicUrl` are the two ways to open the page.
 */
export async function startHomeLab({ loopback, phone, extraTurnToml = '' }) {
  const prefix = `hm${process.pid % 10000}${labCounter++}`;
  const lab = { prefix, browsers: [], pages: [], home: true };
  lab.dir = mkdtempSync(path.join(tmpdir(), 'ponte-homelab-'));
  try {
    execFileSync('bash', [HOMELAB, 'up', prefix, loopback ? 'loopback' : 'noloopback', phone], { stdio: 'inherit' });
    await settleHome(prefix);
    lab.ponteOptions = {
      netns: `${prefix}-srv`,
      toml: `[http]
listen = "0.0.0.0:${HTTP_PORT}"
[turn]
listen_udp = ["0.0.0.0:3478"]
listen_tcp = ["0.0.0.0:3478"]
external_ip = "${HOME_PUBLIC_IP}"
relay_port_min = 49160
relay_port_max = 49200
stun_alt_listen = "0.0.0.0:3479"
allow_peers = ["198.51.100.0/24"]
secret = "lab-secret-not-for-production"
${extraTurnToml}
[signaling]
state_dir = "${path.join(lab.dir, 'state')}"
`,
    };
    lab.server = await startPonte(lab.ponteOptions);
    lab.lanUrl = `http://${HOME_SRV_IP}:${HTTP_PORT}`;
    lab.publicUrl = `http://${HOME_PUBLIC_IP}:${HTTP_PORT}`;
    // browsers[0] = laptop (h1), [1] = phone (h2), [2] = second laptop (h3)
    for (const node of ['h1', 'h2', 'h3']) {
      const wrapper = path.join(lab.dir, `chromium-${node}.sh`);
      writeFileSync(wrapper, `#!/bin/sh\nexec ip netns exec ${prefix}-${node} ${CHROMIUM} "$@"\n`);
      chmodSync(wrapper, 0o755);
      lab.browsers.push(await launch({ executablePath: wrapper }));
    }
  } catch (e) {
    await stopHomeLab(lab);
    throw e;
  }
  return lab;
}

async function settleHome(prefix) {
  const deadline = Date.now() + 15000;
  for (const node of ['srv', 'h1', 'h2', 'h3', 'r1', 'r2']) {
    while (execFileSync('ip', ['-n', `${prefix}-${node}`, 'addr', 'show', 'tentative'], { encoding: 'utf8' }).trim()) {
      if (Date.now() > deadline) throw new Error(`${prefix}-${node}: addresses still tentative`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }
  for (const [node, target] of [['h1', HOME_SRV_IP], ['h3', HOME_SRV_IP], ['srv', '10.77.1.1'], ['h2', '10.77.2.1']]) {
    for (;;) {
      try {
        execFileSync('ip', ['netns', 'exec', `${prefix}-${node}`, 'ping', '-c', '1', '-W', '1', target], { stdio: 'ignore' });
        break;
      } catch {
        if (Date.now() > deadline) throw new Error(`${prefix}-${node} cannot reach ${target}`);
      }
    }
  }
}

export async function stopHomeLab(lab) {
  if (!lab) return;
  for (const p of lab.pages) if (p.errors && p.errors.length) console.log(`[${lab.prefix}] page errors: ${p.errors.join(' | ')}`);
  for (const b of lab.browsers) await b.close().catch(() => {});
  if (lab.server) await lab.server.stop().catch(() => {});
  try { execFileSync('bash', [HOMELAB, 'down', lab.prefix], { stdio: 'inherit' }); } catch { /* best effort */ }
  if (lab.dir) rmSync(lab.dir, { recursive: true, force: true });
}

/** Run a command inside one of the lab's namespaces (e.g. `ponte doctor` on the server). */
export function inNode(lab, node, cmd, args, opts = {}) {
  return execFileSync('ip', ['netns', 'exec', `${lab.prefix}-${node}`, cmd, ...args], { encoding: 'utf8', ...opts });
}

/**
 * Two pages paired in the home lab: `a` in browser `from` opening `urlA`, `b` in browser `to` opening `urlB`
 * (a requests, b accepts).
 */
export async function homePair(lab, { from = 0, urlA, to = 1, urlB, mobileB = true }) {
  const a = await newPage(lab.browsers[from]);
  const b = await newPage(lab.browsers[to], { mobile: mobileB });
  lab.pages.push(a, b);
  await openApp(a, urlA);
  const idB = await openApp(b, urlB);
  await pair(a, b, idB);
  return { a, b, idB };
}
