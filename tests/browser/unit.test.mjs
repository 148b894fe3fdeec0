// Unit tests of the web client's pure modules, run in Node (no browser): SHA-256 fallback, QR encoder, ID parsing,
// translations complete in every language, the module layering (network code imports no UI, no import cycles, no
// HTML from strings), the path label and the pairing state.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { writeFileSync, rmSync, readFileSync, readdirSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Sha256 } from '../../www/js/sha256.js';
import { qrMatrix } from '../../www/js/qr.js';
import { parseId, displayId } from '../../www/js/signaling.js';
import { LANGUAGES } from '../../www/js/i18n.js';
import { pathLabel } from '../../www/js/pathlabel.js';
import { describePath } from '../../www/js/peer.js';
import { Pairing } from '../../www/js/pairing.js';
import { which, WWW } from './lib.mjs';

test('SHA-256 fallback matches Node for sizes around block boundaries, fed in pieces', () => {
  for (const n of [0, 1, 55, 56, 57, 63, 64, 65, 119, 120, 1000, 65536, 100003]) {
    const data = randomBytes(n);
    const h = new Sha256();
    for (let i = 0; i < n;) {
      const k = Math.min(n - i, 1 + ((i * 7919) % 300));
      h.update(data.subarray(i, i + k));
      i += k;
    }
    assert.equal(Buffer.from(h.digest()).toString('hex'), createHash('sha256').update(data).digest('hex'), `n=${n}`);
  }
});

test('ID input is forgiving', () => {
  assert.equal(parseId('K7M2-X9P4').id, 'k7m2x9p4');
  assert.equal(parseId('  k7m2 x9p4 ').id, 'k7m2x9p4');
  assert.equal(parseId('k7m2.x9p4').id, 'k7m2x9p4');
  assert.equal(parseId('https://chat.example.org/#k7m2-x9p4').id, 'k7m2x9p4');
  assert.equal(parseId('k7m2-x9p0').reason, 'chars');
  assert.equal(parseId('k7m2-x9p0').ch, '0');
  assert.equal(parseId('k7m2').reason, 'length');
  assert.equal(parseId('').reason, 'empty');
  assert.equal(displayId('k7m2x9p4'), 'k7m2-x9p4');
});

test('every language has every string, with the same placeholders', () => {
  const en = LANGUAGES.en.strings;
  const vars = (s) => [...s.matchAll(/\{(\w+)\}/g)].map((m) => m[1]).sort().join(',');
  for (const [code, { strings }] of Object.entries(LANGUAGES)) {
    for (const k of Object.keys(en)) {
      assert.ok(k in strings, `${code} lacks ${k}`);
      assert.equal(vars(strings[k]), vars(en[k]), `${code} ${k} placeholders`);
    }
    for (const k of Object.keys(strings)) assert.ok(k in en, `${code} has unknown key ${k}`);
  }
});

test('QR codes have the right size and decode to the text (when zbarimg is installed)', (t) => {
  const texts = ['http://198.51.100.10:8080/#k7m2x9p4', 'https://a-rather-long-hostname.example.com.br:8443/#k7m2x9p4', 'z'.repeat(150), 'w'.repeat(213)];
  const sizes = texts.map((s) => qrMatrix(s).length);
  assert.deepEqual(sizes, [29, 33, 49, 57]); // versions 3, 4, 8, 10
  assert.throws(() => qrMatrix('x'.repeat(214)));
  if (!which('zbarimg')) {
    t.diagnostic('zbarimg not installed (apt-get install zbar-tools): sizes checked, decoding not');
    return;
  }
  const file = path.join(tmpdir(), `ponte-qr-unit-${process.pid}.pgm`);
  try {
    for (const text of texts) {
      const m = qrMatrix(text);
      const n = m.length;
      const scale = 6;
      const w = (n + 8) * scale;
      const px = Buffer.alloc(w * w, 255);
      for (let y = 0; y < n; y++) {
        for (let x = 0; x < n; x++) {
          if (!m[y][x]) continue;
          for (let dy = 0; dy < scale; dy++) px.fill(0, ((y + 4) * scale + dy) * w + (x + 4) * scale, ((y + 4) * scale + dy) * w + (x + 5) * scale);
        }
      }
      writeFileSync(file, Buffer.concat([Buffer.from(`P5 ${w} ${w} 255\n`), px]));
      assert.equal(execFileSync('zbarimg', ['-q', '--raw', file], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim(), text);
    }
  } finally {
    rmSync(file, { force: true });
  }
});

// ---------------------------------------------------------------- module layering

// The network side: sockets, WebRTC, file transport, the pairing state and the bus they may talk through. None of
// them may import a UI module (anything else in www/js), so the network code runs and is tested without a page.
const NETWORK = new Set(['signaling.js', 'peer.js', 'call.js', 'files.js', 'pairing.js', 'sha256.js', 'bus.js', 'identity.js', 'store.js', 'contactbook.js', 'history.js']); // verify.js and contacts.js are UI
const JS = path.join(WWW, 'js');

/** module file → the www/js modules it imports (static `import … from`, bare `import '…'`, dynamic `import()`). */
function importGraph(dir = JS) {
  const graph = new Map();
  for (const f of readdirSync(dir).filter((x) => x.endsWith('.js')).sort()) {
    // Comments out first: JSDoc types like {import('./chat.js').Chat} are not imports.
    const src = readFileSync(path.join(dir, f), 'utf8').replace(/\/\*[\s\S]*?\*\//g, '').replace(/^\s*\/\/.*$/gm, '');
    const deps = new Set();
    for (const m of src.matchAll(/^\s*import\s+(?:[\s\S]*?\sfrom\s+)?['"]([^'"]+)['"]/gm)) deps.add(m[1]);
    for (const m of src.matchAll(/\bimport\(\s*['"]([^'"]+)['"]\s*\)/g)) deps.add(m[1]);
    graph.set(f, [...deps].map((d) => {
      assert.match(d, /^\.\/[\w-]+\.js$/, `${f} imports ${d}: only sibling modules (no build step, no packages)`);
      return d.slice(2);
    }));
  }
  return graph;
}

/** The first import cycle found, as a list of modules, or null. */
function findCycle(graph) {
  const state = new Map(); // module → 1 visiting, 2 done
  const stack = [];
  const visit = (m) => {
    if (state.get(m) === 2) return null;
    if (state.get(m) === 1) return [...stack.slice(stack.indexOf(m)), m];
    state.set(m, 1);
    stack.push(m);
    for (const d of graph.get(m) || []) {
      const c = visit(d);
      if (c) return c;
    }
    stack.pop();
    state.set(m, 2);
    return null;
  };
  for (const m of graph.keys()) {
    const c = visit(m);
    if (c) return c;
  }
  return null;
}

test('network modules import no UI module, every import exists, and there is no import cycle', () => {
  const graph = importGraph();
  for (const n of NETWORK) assert.ok(graph.has(n), `${n} is missing: update NETWORK in this test`);
  for (const [m, deps] of graph) {
    for (const d of deps) {
      assert.ok(existsSync(path.join(JS, d)), `${m} imports ${d}, which does not exist`);
      if (NETWORK.has(m)) assert.ok(NETWORK.has(d), `network module ${m} imports UI module ${d}: send an event instead (bus.js)`);
    }
  }
  assert.equal(findCycle(graph), null, 'import cycle');
  // The check itself catches what it is meant to catch.
  assert.deepEqual(findCycle(new Map([['a.js', ['b.js']], ['b.js', ['c.js']], ['c.js', ['a.js']]])), ['a.js', 'b.js', 'c.js', 'a.js']);
  assert.equal(findCycle(new Map([['a.js', ['b.js', 'c.js']], ['b.js', ['c.js']], ['c.js', []]])), null);
});

test('no module builds HTML from strings (text goes through textContent)', () => {
  for (const f of readdirSync(JS).filter((x) => x.endsWith('.js'))) {
    const src = readFileSync(path.join(JS, f), 'utf8');
    assert.doesNotMatch(src, /\.(innerHTML|outerHTML)\s*[+]?=|insertAdjacentHTML|document\.write|createContextualFragment/, f);
  }
});

// ---------------------------------------------------------------- path label

test('the path label names the other side\'s real transport from its `path` message, and never guesses one', () => {
  const turnHosts = new Set(['198.51.100.10']);
  const mine = { candidateType: 'srflx', relayProtocol: undefined };
  const theirRelay = { candidateType: 'relay', address: '198.51.100.10' };
  // The other browser relays over TCP (its network blocks UDP); its `path` message says so.
  let p = describePath(mine, theirRelay, { type: 'relay', relayProtocol: 'tcp' }, turnHosts);
  assert.deepEqual(p, { kind: 'relay', side: 'remote', proto: 'tcp' });
  assert.equal(pathLabel(p, 'k7m2-x9p4').text, 'Relayed through this server (TURN tcp, on k7m2-x9p4’s side)');
  // TLS and UDP too, whatever the case.
  assert.equal(describePath(mine, theirRelay, { type: 'relay', relayProtocol: 'TLS' }, turnHosts).proto, 'tls');
  assert.equal(describePath(mine, theirRelay, { type: 'relay', relayProtocol: 'udp' }, turnHosts).proto, 'udp');
  // Before its `path` message arrives we know it relays (a relay candidate, or the TURN server's address on a
  // peer-reflexive one) but not how: no transport in the label, not a made-up "udp".
  for (const r of [theirRelay, { candidateType: 'prflx', address: '198.51.100.10' }]) {
    p = describePath(mine, r, null, turnHosts);
    assert.deepEqual(p, { kind: 'relay', side: 'remote', proto: null });
    const { kind, text } = pathLabel(p, 'k7m2-x9p4');
    assert.equal(kind, 'relay');
    assert.equal(text, 'Relayed through this server (on k7m2-x9p4’s side)');
    assert.doesNotMatch(text, /udp|tcp/i);
  }
  // Its message alone is enough (a relay address the TURN list does not name).
  assert.equal(describePath(mine, { candidateType: 'prflx', address: '203.0.113.5' }, { type: 'relay', relayProtocol: 'tcp' }, turnHosts).proto, 'tcp');
  // A stale message does not outvote the candidate: their end is now a plain srflx/host one, so it is direct.
  assert.equal(describePath(mine, { candidateType: 'srflx', address: '203.0.113.5' }, { type: 'relay', relayProtocol: 'tcp' }, turnHosts).kind, 'direct');
  // My own relay: my own stats know the transport.
  p = describePath({ candidateType: 'relay', relayProtocol: 'tcp' }, theirRelay, { type: 'relay', relayProtocol: 'udp' }, turnHosts);
  assert.deepEqual(p, { kind: 'relay', side: 'local', proto: 'tcp' });
  assert.equal(pathLabel(p, 'k7m2-x9p4').text, 'Relayed through this server (TURN tcp)');
  // Direct paths.
  assert.equal(pathLabel(describePath({ candidateType: 'host' }, { candidateType: 'host' }, null, turnHosts), 'x').text, 'Direct (local network, host)');
  assert.equal(pathLabel(describePath({ candidateType: 'srflx' }, { candidateType: 'prflx', address: '203.0.113.5' }, { type: 'srflx', relayProtocol: '' }, turnHosts), 'x').text, 'Direct (through your routers, srflx)');
  assert.deepEqual(pathLabel(null, 'x'), { kind: 'none', text: '' });
});

// ---------------------------------------------------------------- pairing state

test('a conversation\'s pairing: tickets after a restart, re-pairing by request, nothing after the end', () => {
  const p = new Pairing({ initiator: true, ticket: 't1' });
  assert.equal(p.serverPaired, true);
  assert.equal(p.ticketToPresent(), null, 'paired: no rejoin');
  p.setTicket('t2');
  p.welcomed(false); // the server restarted and lost the pairing
  assert.equal(p.ticketToPresent(), 't2');
  assert.equal(p.paired('t3'), true, 'a restored pairing says so');
  assert.equal(p.paired(undefined), false);
  assert.equal(p.ticket, 't3');
  // The ticket is refused: re-pair the old way; only the initiator asks, once, and only while signaling is up.
  p.welcomed(false);
  p.dropTicket();
  assert.equal(p.ticketToPresent(), null);
  assert.equal(p.shouldRequest(true), false, 'not before the peer was told');
  p.expectRejoinByRequest();
  assert.equal(p.shouldRequest(false), false);
  assert.equal(p.shouldRequest(true), true);
  p.requested();
  assert.equal(p.shouldRequest(true), false, 'one request in flight');
  assert.equal(p.autoAccepts(), true);
  p.paired('t4');
  assert.equal(p.autoAccepts(), false);
  const polite = new Pairing({ initiator: false });
  polite.expectRejoinByRequest();
  assert.equal(polite.shouldRequest(true), false, 'the other side waits for the request and accepts it');
  assert.equal(polite.autoAccepts(), true);
  // Ended: never re-paired.
  p.end();
  p.welcomed(false);
  p.setTicket('t5');
  assert.equal(p.ticketToPresent(), null);
  p.expectRejoinByRequest();
  assert.equal(p.shouldRequest(true), false);
  assert.equal(p.autoAccepts(), false);
});
