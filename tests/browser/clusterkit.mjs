// The cluster lab for browser tests: tests/lab/clusterlab.sh namespaces, Debian's redis-server on the private
// network, two ponte nodes sharing it (each with its own public address and STUN/TURN), Debian's haproxy in front,
// one Chromium per home.
//
// HAProxy listens on three ports of 198.51.100.10 (the one address people open):
//   8080  the production setup of deploy/haproxy.cfg: roundrobin over both nodes, health checks on /healthz
//   8081  the same nodes, n1 preferred and n2 a backup: a browser opening this port lands on n1 while n1 is up
//   8082  n2 preferred, n1 a backup
// so a test decides which node each browser lands on, and a node's death sends its browsers to the other one
// through HAProxy, as in production.

import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync, readFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { ROOT, startPonte } from './lib.mjs';
import { labMissing, labPrefix, labScript, settleLab, launchIn, teardownLab } from './labkit.mjs';

export const LB_IP = '198.51.100.10';
export const REDIS_IP = '10.78.0.5';
/** Each node: its public address (TURN, relay) and its address on the private network (HTTP for HAProxy). */
export const NODES = {
  n1: { wan: '198.51.100.11', dc: '10.78.0.11' },
  n2: { wan: '198.51.100.12', dc: '10.78.0.12' },
};
const HTTP_PORT = 8080;
const TURN_SECRET = 'cluster-lab-secret-not-for-production';

export function clusterMissing() {
  return labMissing({ what: 'cluster lab', tools: [['redis-server', 'redis-server'], ['redis-cli', 'redis-server'], ['haproxy', 'haproxy']] });
}

/**
 * The HAProxy config of the lab: deploy/haproxy.cfg's settings (read from that file, so the example is the one
 * tested), with the lab's addresses, plus the two pinned frontends.
 */
export function haproxyConfig(dir) {
  const example = readFileSync(path.join(ROOT, 'deploy', 'haproxy.cfg'), 'utf8');
  const section = (name) => {
    const m = new RegExp(`^${name}\\b[^\\n]*\\n((?:[ \\t]+[^\\n]*\\n|[ \\t]*\\n)*)`, 'm').exec(example);
    if (!m) throw new Error(`deploy/haproxy.cfg has no '${name}' section`);
    return m[1].split('\n').filter((l) => l.trim() && !l.trim().startsWith('#')).join('\n');
  };
  // The backend's settings without its server lines (the lab has its own addresses).
  const backendSettings = section('backend ponte').split('\n').filter((l) => !/^\s*server\s/.test(l)).join('\n');
  const servers = (prefer) => Object.entries(NODES)
    .map(([name, a]) => `    server ${name} ${a.dc}:${HTTP_PORT} check${prefer && prefer !== name ? ' backup' : ''}`)
    .join('\n');
  // The lab: no syslog, no user switch, a socket for the test to read the servers' states, fewer connections (the
  // example's maxconn needs a higher open-files limit than a test shell has).
  return `global
    stats socket ${path.join(dir, 'haproxy.sock')} mode 600 level admin
    maxconn 1000
${section('global').split('\n').filter((l) => !/^\s*(log|user|group|daemon|chroot|stats socket|maxconn)\b/.test(l)).join('\n')}

defaults
${section('defaults').split('\n').filter((l) => !/^\s*(log|option\s+(httplog|dontlognull))\b/.test(l)).join('\n')}

frontend web
    bind ${LB_IP}:${HTTP_PORT}
    default_backend ponte

frontend pin_n1
    bind ${LB_IP}:8081
    default_backend ponte_n1

frontend pin_n2
    bind ${LB_IP}:8082
    default_backend ponte_n2

backend ponte
${backendSettings}
${servers(null)}

backend ponte_n1
${backendSettings}
${servers('n1')}

backend ponte_n2
${backendSettings}
${servers('n2')}
`;
}

/**
 * Bring up the lab: namespaces, Redis, both nodes, HAProxy (waits until it sees both nodes up), one Chromium per
 * home. `lab.url` is the balanced entry, `lab.urlFor.n1` / `.n2` the pinned ones.
 */
export async function startCluster({ nat1, nat2, prefix }) {
  prefix = prefix || labPrefix('cl');
  labScript('clusterlab.sh', 'up', prefix, nat1, nat2);
  const dir = mkdtempSync(path.join(tmpdir(), 'ponte-cluster-'));
  const lab = { prefix, dir, browsers: [], pages: [], nodes: {}, redis: null, haproxy: null };
  try {
    await settleLab(prefix, ['lb', 'n1', 'n2', 'db', 'h1', 'h2', 'nat1', 'nat2'],
      [['h1', LB_IP], ['h2', LB_IP], ['h1', NODES.n2.wan], ['h2', NODES.n1.wan], ['lb', NODES.n1.dc], ['n2', REDIS_IP]]);
    await startRedis(lab);
    for (const name of Object.keys(NODES)) await startNode(lab, name);
    const cfg = path.join(dir, 'haproxy.cfg');
    writeFileSync(cfg, haproxyConfig(dir));
    lab.haproxy = spawnLogged(lab, 'haproxy', 'lb', 'haproxy', ['-db', '-f', cfg]);
    await waitFor(async () => {
      if (lab.haproxy.exitCode !== null) throw new Error('haproxy exited');
      const st = await haproxyServers(lab);
      return ['n1', 'n2'].every((n) => st[`ponte/${n}`] === 'UP');
    }, 20000, 'HAProxy sees both nodes up').catch(async (e) => {
      const st = await haproxyServers(lab).catch((x) => String(x));
      throw new Error(`${e.message}: ${JSON.stringify(st)}\nhaproxy: ${lab.haproxy.logText}\nn1: ${lab.nodes.n1.log.slice(-2000)}`);
    });
    lab.url = `http://${LB_IP}:${HTTP_PORT}`;
    lab.urlFor = { n1: `http://${LB_IP}:8081`, n2: `http://${LB_IP}:8082` };
    for (const home of ['h1', 'h2']) lab.browsers.push(await launchIn(lab, home));
  } catch (e) {
    await stopCluster(lab);
    throw e;
  }
  return lab;
}

/** A process in one of the lab's namespaces whose output is kept (printed when the lab stops after a failure). */
function spawnLogged(lab, name, node, cmd, args) {
  const proc = spawn('ip', ['netns', 'exec', `${lab.prefix}-${node}`, cmd, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  proc.logText = '';
  const keep = (d) => { proc.logText = (proc.logText + d).slice(-20000); };
  proc.stdout.on('data', keep);
  proc.stderr.on('data', keep);
  proc.exited = new Promise((r) => proc.once('exit', (code, signal) => r({ code, signal })));
  proc.label = name;
  return proc;
}

async function waitFor(check, ms, what) {
  const deadline = Date.now() + ms;
  for (;;) {
    try { if (await check()) return; } catch { /* not yet */ }
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** redis-cli against the lab's Redis (from the database host's namespace). */
export function redisCli(lab, ...args) {
  return execFileSync('ip', ['netns', 'exec', `${lab.prefix}-db`, 'redis-cli', '-h', REDIS_IP, '-p', '6379', ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
}

/**
 * Start Redis on the private network, no persistence: a restart comes back empty, the hardest case for the
 * nodes (they must re-announce themselves and their browsers).
 */
export async function startRedis(lab) {
  lab.redis = spawnLogged(lab, 'redis-server', 'db', 'redis-server', [
    '--bind', REDIS_IP, '--port', '6379', '--protected-mode', 'no', '--save', '', '--appendonly', 'no',
    '--dir', lab.dir, '--daemonize', 'no',
  ]);
  await waitFor(() => redisCli(lab, 'ping') === 'PONG', 10000, 'redis-server answers PING');
}

/** kill -9 Redis (what a crash or an OOM kill does) and wait until it is gone. */
export async function killRedis(lab) {
  const r = lab.redis;
  lab.redis = null;
  if (!r || r.exitCode !== null) return;
  r.kill('SIGKILL');
  await r.exited;
}

/** The config of one node: its own addresses and ports, the cluster's shared Redis and secrets. */
export function nodeToml(lab, name) {
  const a = NODES[name];
  return `[http]
listen = "${a.dc}:${HTTP_PORT}"
trusted_proxies = ["10.78.0.10/32"]
max_connections_per_ip = 256
[turn]
listen_udp = ["${a.wan}:3478"]
listen_tcp = ["${a.wan}:3478"]
external_ip = "${a.wan}"
relay_ip = "${a.wan}"
# The homes' routers only: the other node's relay address gets through by the cluster's own rule, not by this.
allow_peers = ["198.51.100.16/28"]
secret = "${TURN_SECRET}"
[signaling]
max_connections_per_ip = 64
[cluster]
redis_url = "redis://${REDIS_IP}:6379/0"
node_name = "${name}"
public_addresses = ["${a.wan}"]
presence_ttl_secs = 6
`;
}

/** Start (or start again) node `name` in its namespace. */
export async function startNode(lab, name) {
  const old = lab.nodes[name];
  if (old) await old.stop().catch(() => {});
  lab.nodes[name] = await startPonte({ toml: nodeToml(lab, name), netns: `${lab.prefix}-${name}`, name: `ponte ${name}` });
  return lab.nodes[name];
}

/** kill -9 node `name` (the ponte process itself, not a wrapper); resolves when it is gone. */
export async function killNode(lab, name) {
  const { proc } = lab.nodes[name];
  if (readFileSync(`/proc/${proc.pid}/comm`, 'utf8').trim() !== 'ponte') throw new Error('the handle is not the ponte process');
  const exited = new Promise((r) => proc.once('exit', (code, signal) => r({ code, signal })));
  proc.kill('SIGKILL');
  return exited;
}

/** HAProxy's view of its servers, from its stats socket: {'ponte/n1': 'UP', 'ponte_n1/n2': 'DOWN', …}. */
export async function haproxyServers(lab) {
  const st = await haproxyStats(lab);
  return Object.fromEntries(Object.entries(st).map(([k, v]) => [k, v.status]));
}

/** Every server line of HAProxy's `show stat`: {'ponte/n1': {status, sessions}, …} (sessions: total so far). */
export async function haproxyStats(lab) {
  const csv = await new Promise((resolve, reject) => {
    let out = '';
    const s = net.connect(path.join(lab.dir, 'haproxy.sock'), () => s.write('show stat\n'));
    s.on('data', (d) => { out += d; });
    s.on('end', () => resolve(out));
    s.on('error', reject);
  });
  const states = {};
  for (const line of csv.split('\n')) {
    const f = line.split(',');
    if (f.length > 17 && !line.startsWith('#') && f[1] !== 'FRONTEND' && f[1] !== 'BACKEND') states[`${f[0]}/${f[1]}`] = { status: f[17], sessions: Number(f[7]) };
  }
  return states;
}

/** Wait until HAProxy's health checks mark `node` with `state` (e.g. 'DOWN' after a kill) in every backend. */
export async function waitHaproxy(lab, node, state, ms = 15000) {
  await waitFor(async () => {
    const st = await haproxyServers(lab);
    const mine = Object.entries(st).filter(([k]) => k.endsWith(`/${node}`));
    return mine.length > 0 && mine.every(([, v]) => v.startsWith(state));
  }, ms, `HAProxy marks ${node} ${state}`);
}

/**
 * Which node a page's signaling session is on: the node whose public address its STUN/TURN URLs name (each node
 * hands out its own). Throws if the URLs name no node or both.
 */
export async function nodeOf(page) {
  const urls = await page.evaluate(() => JSON.stringify((window.ponte.signaling.session || {}).ice_servers || []));
  const hit = Object.entries(NODES).filter(([, a]) => urls.includes(`:${a.wan}:`) || urls.includes(`${a.wan}:3478`)).map(([n]) => n);
  if (hit.length !== 1) throw new Error(`the page's ICE servers name ${hit.length} nodes: ${urls}`);
  return hit[0];
}

/**
 * The candidate pair the page's connection to `peer` uses now: {local: {type, address, port}, remote: {…}}
 * (a relay candidate's address is the relay's public address, i.e. which node relays).
 */
export async function selectedPath(page, peer) {
  return page.evaluate(async (peer) => {
    const pc = window.ponte.conversation(peer).link.pc;
    const stats = await pc.getStats();
    let pair = null;
    stats.forEach((s) => {
      if (s.type === 'transport' && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId);
    });
    if (!pair) stats.forEach((s) => { if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pair = s; });
    if (!pair) return null;
    const c = (id) => {
      const x = stats.get(id) || {};
      return { type: x.candidateType, address: x.address, port: x.port, protocol: x.protocol };
    };
    return { local: c(pair.localCandidateId), remote: c(pair.remoteCandidateId) };
  }, peer);
}

/** `/healthz` of the node a pinned URL leads to, fetched by a page in a home (through HAProxy). */
export async function healthz(page, url) {
  return page.evaluate(async (u) => {
    const r = await fetch(`${u}/healthz`, { cache: 'no-store' });
    return { status: r.status, body: await r.json() };
  }, url);
}

export async function stopCluster(lab) {
  await teardownLab(lab, 'clusterlab.sh', async () => {
    for (const n of Object.values(lab.nodes)) await n.stop().catch(() => {});
    for (const p of [lab.haproxy, lab.redis]) {
      if (p && p.exitCode === null && p.signalCode === null) { p.kill('SIGTERM'); await p.exited; }
    }
    if (process.env.DEBUG_CLUSTER) {
      for (const [n, h] of Object.entries(lab.nodes)) console.log(`--- ${n} log ---\n${h.log.slice(-5000)}`);
      if (lab.haproxy) console.log(`--- haproxy ---\n${lab.haproxy.logText}`);
    }
  });
}
