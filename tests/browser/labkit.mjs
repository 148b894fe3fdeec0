// The NAT lab for browser tests: tests/lab/netlab.sh namespaces, ponte in PREFIX-srv, one Chromium per home; ponte
// at home (tests/lab/homelab.sh); and the steps every lab shares (what it needs, its prefix, waiting until its
// addresses settle, a Chromium inside a namespace, the teardown), which clusterkit.mjs uses too.

import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { ROOT, CHROMIUM, requirements, launch, newPage, startPonte, openApp, pair, which } from './lib.mjs';

export const SRV_IP = '198.51.100.10';
const HTTP_PORT = 8080;
/** The web client's origin in the lab (plain http: not a secure context unless the browser is told to treat it so). */
export const LAB_URL = `http://${SRV_IP}:${HTTP_PORT}`;

/**
 * Why the lab tests cannot run here (null: they can): root, ip, iptables, ping, and `tools` ([command, apt
 * package]) for a lab that needs more. With CI=true a missing piece throws instead. `what` names the lab.
 */
export function labMissing({ tools = [], what = 'lab' } = {}) {
  const base = requirements();
  if (base) return base;
  const why = [];
  if (process.getuid && process.getuid() !== 0) why.push('root (network namespaces)');
  for (const [cmd, pkg] of [['ip', 'iproute2'], ['iptables', 'iptables'], ['ping', 'iputils-ping'], ...tools]) {
    if (!which(cmd)) why.push(`${cmd} (apt-get install ${pkg})`);
  }
  if (why.length && process.env.CI === 'true') throw new Error(`${what} tests cannot run, missing: ${why.join(', ')}`);
  return why.length ? `${what} needs ${why.join(', ')}` : null;
}

// ---------------------------------------------------------------- steps every lab shares (netlab, homelab, clusterlab)

let labCounter = 0;

/**
 * A fresh namespace prefix for this process: `$LAB_PREFIX` (else `fallback`; only `fallback` with `env: false`),
 * the pid and a counter.
 */
export function labPrefix(fallback, { env = true } = {}) {
  const base = ((env && process.env.LAB_PREFIX) || fallback).replace(/[^a-z]/g, '').slice(0, 3) || fallback;
  return `${base}${process.pid % 10000}${labCounter++}`;
}

/** Run a script of tests/lab (`up PREFIX …` or `down PREFIX`). */
export function labScript(script, ...args) {
  execFileSync('bash', [path.join(ROOT, 'tests', 'lab', script), ...args], { stdio: 'inherit' });
}

/**
 * Wait until the addresses of `nodes` are final (IPv6 duplicate-address detection done) and each [node, target] of
 * `reach` pings. Otherwise Chromium, started in the middle of it, sees a "network change" and aborts the page's
 * loads (net::ERR_NETWORK_CHANGED).
 */
export async function settleLab(prefix, nodes, reach) {
  const deadline = Date.now() + 15000;
  for (const node of nodes) {
    while (execFileSync('ip', ['-n', `${prefix}-${node}`, 'addr', 'show', 'tentative'], { encoding: 'utf8' }).trim()) {
      if (Date.now() > deadline) throw new Error(`${prefix}-${node}: addresses still tentative`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }
  for (const [node, target] of reach) {
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

/** A Chromium inside the lab's namespace `node` (a wrapper in lab.dir runs it under `ip netns exec`); `extraArgs` as launch's. */
export async function launchIn(lab, node, extraArgs = []) {
  const wrapper = path.join(lab.dir, `chromium-${node}.sh`);
  writeFileSync(wrapper, `#!/bin/sh\nexec ip netns exec ${lab.prefix}-${node} ${CHROMIUM} "$@"\n`);
  chmodSync(wrapper, 0o755);
  return launch({ executablePath: wrapper, extraArgs });
}

/**
 * The end every lab shares, after `stopServices` (the lab's own servers): the pages' errors printed, the browsers
 * closed, the namespaces taken down by `script`, the directory removed. Best effort: a failed start ends here too.
 */
export async function teardownLab(lab, script, stopServices) {
  if (!lab) return;
  for (const p of lab.pages) if (p.errors && p.errors.length) console.log(`[${lab.prefix}] page errors: ${p.errors.join(' | ')}`);
  for (const b of Object.values(lab.browsers)) await b.close().catch(() => {}); // an array, or by node
  await stopServices();
  try { labScript(script, 'down', lab.prefix); } catch { /* best effort */ }
  if (lab.dir) rmSync(lab.dir, { recursive: true, force: true });
}

// ---------------------------------------------------------------- the NAT lab (tests/lab/netlab.sh)

/**
 * Bring up a lab, ponte in it, and one Chromium per home. Namespaces are named `$LAB_PREFIX<pid><n>-*` (`pw` by
 * default; give runs that may overlap on one machine different prefixes) unless `prefix` names them. `extraToml` is
 * appended to ponte's config right after its `[signaling]` section (so it may add `[[signaling.ice_servers]]`).
 * `chromeArgs`: more Chromium flags for both browsers (e.g. fake media devices; see LAB_URL for the page's origin).
 */
export async function startLab({ nat1, nat2, turn = true, prefix, extraToml = '', chromeArgs = [] }) {
  prefix = prefix || labPrefix('pw');
  labScript('netlab.sh', 'up', prefix, nat1, nat2);
  await settleLab(prefix, ['srv', 'h1', 'h2', 'nat1', 'nat2'], [['h1', SRV_IP], ['h2', SRV_IP]]);
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
    for (const home of ['h1', 'h2']) lab.browsers.push(await launchIn(lab, home, chromeArgs));
  } catch (e) {
    await stopLab(lab);
    throw e;
  }
  return lab;
}

/** Start ponte again in the lab with the same config (same addresses and ports, TURN secret and state dir). */
export async function restartServer(lab) {
  if (lab.server) await lab.server.stop();
  lab.server = null;
  lab.server = await startPonte({ ...lab.ponteOptions, name: 'restarted ponte' });
  return lab.server;
}

export async function stopLab(lab) {
  await teardownLab(lab, 'netlab.sh', async () => { if (lab.server) await lab.server.stop().catch(() => {}); });
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
  const prefix = labPrefix('hm', { env: false });
  const lab = { prefix, browsers: [], pages: [], home: true };
  lab.dir = mkdtempSync(path.join(tmpdir(), 'ponte-homelab-'));
  try {
    labScript('homelab.sh', 'up', prefix, loopback ? 'loopback' : 'noloopback', phone);
    await settleLab(prefix, ['srv', 'h1', 'h2', 'h3', 'r1', 'r2'], [['h1', HOME_SRV_IP], ['h3', HOME_SRV_IP], ['srv', '10.77.1.1'], ['h2', '10.77.2.1']]);
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
    for (const node of ['h1', 'h2', 'h3']) lab.browsers.push(await launchIn(lab, node));
  } catch (e) {
    await stopHomeLab(lab);
    throw e;
  }
  return lab;
}

export async function stopHomeLab(lab) {
  await teardownLab(lab, 'homelab.sh', async () => { if (lab.server) await lab.server.stop().catch(() => {}); });
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
