// Benchmark (a command, not a test): browser time-to-connected in the NAT lab. For each scenario it builds the
// lab (tests/lab/netlab.sh, namespaces named pbN-*), opens two Chromiums in two homes, and R times: A enters B's ID
// and clicks Connect, B clicks Accept, and the chat's data channel opens on both sides. Prints median / p90 for
//   direct   cone/cone NAT: hole punching with ponte's STUN;
//   relayed  symmetric/symmetric NAT: through ponte's TURN;
//   coturn   symmetric/symmetric NAT: the same, through coturn's turnserver (Debian `coturn`) instead, handed to
//            the browsers as signaling.ice_servers with ponte's TURN off: the one fair peer for this figure.
// Needs root, Chromium, coturn and a built ponte (PONTE_BIN, default target/debug/ponte).
//
//   cargo build --release && cd tests/browser && PONTE_BIN=../../target/release/ponte node bench-connect.mjs --rounds 10
//   node bench-connect.mjs --rounds 1 --only direct,relayed   (any subset of direct,relayed,coturn)

import { spawn } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { readFileSync, writeFileSync } from 'node:fs';
import { newPage, openApp, which } from './lib.mjs';
import { labMissing, startLab, stopLab, SRV_IP } from './labkit.mjs';

const COTURN_PORT = 3479;
const COTURN_SECRET = 'lab-coturn-secret-not-for-production';

function parseArgs(argv) {
  const o = { rounds: 5, only: ['direct', 'relayed', 'coturn'] };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--rounds') o.rounds = Math.min(Math.max(parseInt(argv[++i], 10) || 1, 1), 100);
    else if (argv[i] === '--only') o.only = argv[++i].split(',');
    else throw new Error(`unknown option ${argv[i]}; use --rounds N, --only direct,relayed,coturn`);
  }
  return o;
}

const SCENARIOS = {
  direct: { label: 'direct (cone/cone, ponte STUN)', nat: 'cone', expect: 'direct' },
  relayed: { label: 'relayed (symmetric, ponte TURN)', nat: 'symmetric', expect: 'relay' },
  coturn: { label: 'relayed (symmetric, coturn TURN)', nat: 'symmetric', expect: 'relay', coturn: true },
};

/** coturn in the lab's server namespace, next to ponte (whose own TURN is off for this scenario). */
async function startCoturn(lab) {
  const proc = spawn('ip', ['netns', 'exec', `${lab.prefix}-srv`, 'turnserver', '-n', '--no-cli', '--no-tls', '--no-dtls',
    '--no-rfc5780', '--log-file', 'stdout', '--simple-log', '--pidfile', `${lab.dir}/turnserver.pid`,
    '--listening-ip', SRV_IP, '--listening-port', String(COTURN_PORT), '--relay-ip', SRV_IP,
    '--min-port', '49152', '--max-port', '65535', '--use-auth-secret', `--static-auth-secret=${COTURN_SECRET}`,
    '--realm=ponte', ...(process.env.BENCH_DEBUG ? ['-V'] : [])], { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  proc.stdout.on('data', (d) => { log += d; });
  proc.stderr.on('data', (d) => { log += d; });
  const deadline = Date.now() + 10000;
  // coturn logs this once its listener and relay threads are up.
  while (!/Total (UDP|General) servers/i.test(log)) {
    if (proc.exitCode !== null) throw new Error(`turnserver exited:\n${log}`);
    if (Date.now() > deadline) break; // log format differs between versions: go on, the round will tell
    await sleep(100);
  }
  return {
    get log() { return log; },
    stop: () => new Promise((r) => { if (proc.exitCode !== null) return r(); proc.once('exit', r); proc.kill('SIGTERM'); }),
  };
}

// Appended after labkit's [signaling] section.
const coturnToml = `
[[signaling.ice_servers]]
urls = ["stun:${SRV_IP}:${COTURN_PORT}"]
[[signaling.ice_servers]]
urls = ["turn:${SRV_IP}:${COTURN_PORT}?transport=udp", "turn:${SRV_IP}:${COTURN_PORT}?transport=tcp"]
secret = "${COTURN_SECRET}"
`;

/** Resolves to Date.now() in the page when the chat's data channel with `peer` is open; rejects if it fails. */
async function openAt(page, peer) {
  const h = await page.waitForFunction((p) => {
    const c = window.ponte.conversation(p);
    if (c && c.link.chatOpen) return Date.now();
    return c && c.link.state === 'failed' ? -1 : false;
  }, peer, { polling: 5, timeout: 60000 });
  const t = await h.jsonValue();
  if (t < 0) {
    const why = await page.evaluate(async (p) => {
      const c = window.ponte.conversation(p);
      const out = { diagnosis: c.link.diagnosis, candidates: [] };
      const stats = await c.link.pc.getStats();
      stats.forEach((r) => {
        if (r.type === 'local-candidate' || r.type === 'remote-candidate') out.candidates.push(`${r.type} ${r.candidateType} ${r.address}:${r.port} ${r.protocol}`);
        if (r.type === 'candidate-pair') out.candidates.push(`pair ${r.state} nominated=${r.nominated}`);
      });
      return out;
    }, peer).catch((e) => String(e));
    throw new Error(`the connection failed (the page shows its failure screen): ${JSON.stringify(why)}`);
  }
  return t;
}

async function pathKind(page, peer) {
  const h = await page.waitForFunction((p) => {
    const s = window.ponte.conversation(p)?.link.stats;
    return s && s.path ? s.path.kind : false;
  }, peer, { timeout: 15000 }).catch(() => null);
  return h ? h.jsonValue() : 'unknown';
}

/** One round on fresh pages: ms from Connect to both channels open, and from Accept to both open. */
async function round(lab) {
  const a = await newPage(lab.browsers[0]);
  const b = await newPage(lab.browsers[1]);
  try {
    const idA = await openApp(a, lab.url);
    const idB = await openApp(b, lab.url);
    await a.getByTestId('peer-id-input').fill(idB);
    const tConnect = Date.now();
    await a.getByTestId('connect').click();
    const accept = b.getByTestId('accept');
    await accept.waitFor({ timeout: 15000 });
    const opened = Promise.all([openAt(a, idB), openAt(b, idA)]);
    // Accept is clicked from inside the page and stamped there: Playwright's own click first waits for the
    // card's entrance animation to settle over several (throttled) animation frames, about 0.9 s here, which a
    // person's click does not, so measuring from it put a fixed ~1 s step into every round.
    const tAccept = await b.evaluate(() => {
      const t = Date.now();
      document.querySelector('[data-testid=accept]').click();
      return t;
    });
    const done = Math.max(...(await opened));
    const path = await pathKind(a, idB);
    const timeline = (page, peer) => page.evaluate((p) => window.ponte.conversation(p).link.timeline, peer);
    const made = (page, peer) => page.evaluate((p) => window.ponte.conversation(p).link.createdAt, peer);
    const steps = { A: await timeline(a, idB), B: await timeline(b, idA) };
    // From Accept to the pairing: the accept message through the server and `paired` back to both.
    steps.A['link-made-after-accept'] = (await made(a, idB)) - tAccept;
    steps.B['link-made-after-accept'] = (await made(b, idA)) - tAccept;
    return { total: done - tConnect, afterAccept: done - tAccept, path, steps };
  } finally {
    await a.context().close().catch(() => {});
    await b.context().close().catch(() => {});
  }
}

/** Percentile of sorted values, linearly interpolated (the median of two rounds is their mean). */
function pct(sorted, p) {
  const x = (sorted.length - 1) * p;
  const lo = Math.floor(x);
  const hi = Math.min(lo + 1, sorted.length - 1);
  return Math.round(sorted[lo] + (sorted[hi] - sorted[lo]) * (x - lo));
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  const missing = labMissing();
  if (missing) throw new Error(`cannot run the lab: ${missing}`);
  if (o.only.includes('coturn') && !which('turnserver')) throw new Error('coturn scenario needs turnserver (apt-get install coturn)');
  const load = readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
  console.log(`bench-connect: ${o.rounds} round(s) per scenario, load average ${load}`);
  const results = [];
  let n = 0;
  for (const key of o.only) {
    const sc = SCENARIOS[key];
    if (!sc) throw new Error(`unknown scenario ${key}`);
    const lab = await startLab({
      nat1: sc.nat, nat2: sc.nat, turn: !sc.coturn, prefix: `pb${n++}`, extraToml: sc.coturn ? coturnToml : '',
    });
    let coturn = null;
    try {
      if (sc.coturn) coturn = await startCoturn(lab);
      const rs = [];
      const failed = [];
      for (let i = 0; i < o.rounds; i++) {
        let r;
        try {
          r = await round(lab);
        } catch (e) {
          // A round that does not connect is a result too: counted and shown, and the next round goes on.
          console.log(`${key} round ${i + 1}: FAILED: ${e.message}`);
          if (coturn && process.env.BENCH_DEBUG) writeFileSync(process.env.BENCH_DEBUG, coturn.log);
          failed.push(e.message);
          continue;
        }
        console.log(`${key} round ${i + 1}: connect→open ${r.total} ms, accept→open ${r.afterAccept} ms, path ${r.path}`);
        if (r.path !== sc.expect) throw new Error(`${key}: expected a ${sc.expect} path, got ${r.path}`);
        rs.push(r);
      }
      results.push({ key, sc, rs, failed });
    } finally {
      if (coturn) await coturn.stop();
      await stopLab(lab);
    }
  }
  console.log('\nbrowser time-to-connected (data channel open on both sides), ms');
  console.log(`${'scenario'.padEnd(36)}${'accept→open p50'.padStart(17)}${'p90'.padStart(8)}${'connect→open p50'.padStart(18)}${'p90'.padStart(8)}${'connected'.padStart(11)}`);
  const med = {};
  let broken = [];
  for (const { key, sc, rs, failed } of results) {
    if (!rs.length) {
      console.log(`${sc.label.padEnd(36)}  no round connected (${failed.length} failed)`);
      broken.push(key);
      continue;
    }
    const acc = rs.map((r) => r.afterAccept).sort((x, y) => x - y);
    const tot = rs.map((r) => r.total).sort((x, y) => x - y);
    med[key] = pct(acc, 0.5);
    console.log(`${sc.label.padEnd(36)}${String(pct(acc, 0.5)).padStart(17)}${String(pct(acc, 0.9)).padStart(8)}${String(pct(tot, 0.5)).padStart(18)}${String(pct(tot, 0.9)).padStart(8)}${`${rs.length}/${rs.length + failed.length}`.padStart(11)}`);
  }
  // Where the time goes: each side's setup steps (ms after its link was made, i.e. after the pairing), median.
  console.log('\nsetup steps, median ms after the pairing (A = initiator/offerer, B = answerer)');
  for (const { sc, rs } of results) {
    if (!rs.length) continue;
    for (const side of ['A', 'B']) {
      const names = [...new Set(rs.flatMap((r) => Object.keys(r.steps[side] || {})))];
      const medOf = (k) => pct(rs.map((r) => r.steps[side]?.[k]).filter((v) => v !== undefined).sort((x, y) => x - y), 0.5);
      const line = names.map((k) => [k, medOf(k)]).sort((x, y) => x[1] - y[1]).map(([k, v]) => `${k} ${v}`).join(', ');
      console.log(`${sc.label} ${side}: ${line}`);
    }
  }
  if (med.relayed && med.coturn) {
    console.log(`relayed through ponte vs coturn (accept→open medians): coturn/ponte = ${(med.coturn / med.relayed).toFixed(2)} (above 1 favours ponte)`);
  } else {
    console.log('(no side-by-side: that needs both the relayed and the coturn scenario)');
  }
  if (broken.length) throw new Error(`no round connected in: ${broken.join(', ')}`);
}

main().catch((e) => { console.error(e); process.exit(1); });
