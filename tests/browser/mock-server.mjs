// A small stand-in for ponte's HTTP + signaling (docs/protocol.md), for developing the web client before the real
// hub exists and for tests that need to script the server's side (e.g. a server restart). It serves www/ with the
// same CSP as ponte. It has no STUN/TURN: ICE servers are whatever the caller passes.
//
//   node mock-server.mjs [port]      (prints "HTTP listening on http://127.0.0.1:PORT")

import http from 'node:http';
import { readFile } from 'node:fs/promises';
import { randomBytes, createPublicKey, verify as cryptoVerify } from 'node:crypto';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { WebSocketServer } from 'ws';

const here = path.dirname(fileURLToPath(import.meta.url));
const WWW = path.resolve(here, '../../www');
const ALPHABET = '23456789abcdefghjkmnpqrstuvwxyz';
const CSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";
const TYPES = { html: 'text/html', js: 'text/javascript', css: 'text/css', svg: 'image/svg+xml', json: 'application/json', png: 'image/png' };

function newId() {
  const b = randomBytes(8);
  return [...b].map((x) => ALPHABET[x % ALPHABET.length]).join('');
}
const canon = (s) => String(s || '').toLowerCase().replace(/[^0-9a-z]/g, '');

/** The identity state a mock server keeps (share it between two mock servers to play a restart with state). */
export function newIdentities() {
  // nextId: tests only, the ID the next new key gets (to play a contact whose key changed under the same ID).
  return { byKey: new Map(), keyOf: new Map(), consent: new Map(), blocks: new Map(), nextId: null };
}

export function publicKey(key) {
  const raw = Buffer.from(key, 'base64url');
  if (raw.length !== 65 || raw[0] !== 4) return null;
  try {
    return createPublicKey({ key: { kty: 'EC', crv: 'P-256', x: raw.subarray(1, 33).toString('base64url'), y: raw.subarray(33).toString('base64url') }, format: 'jwk' });
  } catch { return null; }
}

export function verifyProof(key, challenge, signature) {
  const sig = Buffer.from(String(signature || ''), 'base64url');
  const pub = publicKey(key);
  if (!pub || sig.length !== 64) return false;
  return cryptoVerify('sha256', Buffer.from(`ponte-identity-v1:${challenge}`), { key: pub, dsaEncoding: 'ieee-p1363' }, sig);
}

export function startMockServer({ port = 0, iceServers = [], grace = 5000, identities = newIdentities(), refuseIdentities = false } = {}) {
  const clients = new Map(); // id → {ws, token, pairs:Set, graceTimer, key}
  const tokens = new Map(); // token → id
  const requests = new Map(); // "a>b" → timer
  // Identities (docs/protocol.md, "Identities, contacts and presence"); pass the same `identities` object to a new
  // mock server to play a server restart that kept its state directory.
  const ident = identities;
  const online = (id) => clients.has(id);
  const consents = (a, b) => !!ident.consent.get(a)?.has(b);
  const blocks = (a, b) => !!ident.blocks.get(a)?.has(b);
  const mutualOnline = (id) => [...(ident.consent.get(id) || [])].filter((p) => consents(p, id) && online(p));
  const edge = (map, a) => { if (!map.has(a)) map.set(a, new Set()); return map.get(a); };
  /** A newer tab proved the same identity: the older session ends at once (4002, no grace). */
  function takeOver(id) {
    const c = clients.get(id);
    if (c.ws) { try { c.ws.close(4002, 'identity opened in another tab'); } catch { /* ignore */ } }
    clearTimeout(c.graceTimer);
    endSession(id, c, false);
  }
  function endSession(id, c, presence = true) {
    for (const p of c.pairs) { clients.get(p)?.pairs.delete(id); send(p, { type: 'peer_left', peer: id, reason: 'disconnected' }); }
    for (const [k, tm] of requests) {
      if (k.startsWith(`${id}>`)) { clearTimeout(tm); requests.delete(k); send(k.split('>')[1], { type: 'incoming_cancelled', peer: id, reason: 'left' }); }
      if (k.endsWith(`>${id}`)) { clearTimeout(tm); requests.delete(k); send(k.split('>')[0], { type: 'peer_left', peer: id, reason: 'disconnected' }); }
    }
    c.ws = null;
    clients.delete(id);
    tokens.delete(c.token);
    if (presence && c.key) for (const p of mutualOnline(id)) send(p, { type: 'presence', peer: id, online: false });
  }

  const server = http.createServer(async (req, res) => {
    let p = decodeURIComponent(new URL(req.url, 'http://x').pathname);
    if (p.includes('..')) { res.writeHead(404).end(); return; }
    if (p.endsWith('/')) p += 'index.html';
    else if (!path.basename(p).includes('.')) p += '.html';
    try {
      const data = await readFile(path.join(WWW, p));
      res.writeHead(200, { 'content-type': `${TYPES[path.extname(p).slice(1)] || 'application/octet-stream'}; charset=utf-8`, 'content-security-policy': CSP, 'cache-control': 'no-cache' });
      res.end(data);
    } catch {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
    }
  });
  const wss = new WebSocketServer({ server, path: '/ws', handleProtocols: (ps) => (ps.has('ponte.v1') ? 'ponte.v1' : false) });

  const send = (id, msg) => {
    const c = clients.get(id);
    if (c && c.ws && c.ws.readyState === 1) c.ws.send(JSON.stringify(msg));
  };

  wss.on('connection', (ws) => {
    let me = null;
    let pendingProof = null;
    const resume = (id) => {
      me = id;
      const c = clients.get(me);
      clearTimeout(c.graceTimer);
      if (c.ws && c.ws !== ws) { try { c.ws.close(4001, 'session resumed elsewhere'); } catch { /* ignore */ } }
      c.ws = ws;
      for (const p of c.pairs) send(p, { type: 'peer_back', peer: me });
      return { resumed: true, restored: false };
    };
    const fresh = (id, key) => {
      const token = randomBytes(16).toString('hex');
      tokens.set(token, id);
      clients.set(id, { ws, token, pairs: new Set(), key });
      if (key) for (const p of mutualOnline(id)) send(p, { type: 'presence', peer: id, online: true });
    };
    const welcome = ({ resumed, restored }) => {
      const c = clients.get(me);
      const w = { type: 'welcome', v: 1, id: me, display_id: `${me.slice(0, 4)}-${me.slice(4)}`, token: c.token, resumed, restored, ice_servers: iceServers, ice_expires: Math.floor(Date.now() / 1000) + 86400, peers: [...c.pairs], limits: { max_message_bytes: 65536, messages_per_sec: 50, connect_requests_per_min: 20 } };
      if (c.key) {
        w.identity = { key: c.key };
        w.contacts = [...(ident.consent.get(me) || [])].map((p) => {
          const mutual = consents(p, me);
          return { peer: p, mutual, online: mutual && online(p) };
        });
        w.blocked = [...(ident.blocks.get(me) || [])];
      }
      ws.send(JSON.stringify(w));
    };
    ws.on('message', (raw) => {
      let m;
      try { m = JSON.parse(String(raw)); } catch { ws.send(JSON.stringify({ type: 'error', code: 'bad_json', message: 'bad json' })); return; }
      if (!me && pendingProof) {
        if (m.type !== 'identity_proof') { ws.send(JSON.stringify({ type: 'error', code: 'proof_required', message: 'identity_proof first', ref: m.type })); return; }
        const { key, challenge, hello } = pendingProof;
        pendingProof = null;
        if (!verifyProof(key, challenge, m.signature)) {
          ws.send(JSON.stringify({ type: 'error', code: 'bad_signature', message: 'the signature does not verify', ref: 'identity_proof' }));
          ws.close(1008, 'bad signature');
          return;
        }
        let id = ident.byKey.get(key);
        const known = !!id;
        if (!known && refuseIdentities) {
          ws.send(JSON.stringify({ type: 'error', code: 'too_many_identities', message: 'no new identities', ref: 'identity_proof' }));
          ws.close(1013, 'too many identities');
          return;
        }
        if (!id) { id = ident.nextId || newId(); ident.nextId = null; ident.byKey.set(key, id); ident.keyOf.set(id, key); }
        const c = clients.get(id);
        if (c && hello.token && c.token === hello.token) { welcome(resume(id)); return; }
        if (c) takeOver(id);
        me = id;
        fresh(id, key);
        welcome({ resumed: false, restored: known });
        return;
      }
      if (!me) {
        if (m.type !== 'hello') { ws.send(JSON.stringify({ type: 'error', code: 'hello_required', message: 'hello first' })); return; }
        if (m.identity) {
          const key = String(m.identity.key || '').replace(/=+$/, '');
          if (!publicKey(key)) {
            ws.send(JSON.stringify({ type: 'error', code: 'bad_key', message: 'identity.key is not a P-256 public key', ref: 'hello' }));
            ws.close(1008, 'bad key');
            return;
          }
          const challenge = randomBytes(32).toString('base64url');
          pendingProof = { key, challenge, hello: m };
          ws.send(JSON.stringify({ type: 'identity_challenge', challenge }));
          return;
        }
        if (m.token && tokens.has(m.token) && !ident.keyOf.has(tokens.get(m.token))) {
          welcome(resume(tokens.get(m.token)));
        } else {
          me = newId();
          fresh(me, null);
          welcome({ resumed: false, restored: false });
        }
        return;
      }
      const c = clients.get(me);
      const err = (code, extra) => ws.send(JSON.stringify({ type: 'error', code, message: code, ref: m.type, ...extra }));
      switch (m.type) {
        case 'connect': {
          const to = canon(m.to);
          if (to === me) return err('self_connect');
          if (!clients.has(to) || !clients.get(to).ws || blocks(to, me)) return err('unknown_peer', { peer: to });
          if (c.pairs.has(to)) return err('already_paired', { peer: to });
          if (requests.has(`${me}>${to}`) || requests.has(`${to}>${me}`)) return err('duplicate_request', { peer: to });
          requests.set(`${me}>${to}`, setTimeout(() => {
            requests.delete(`${me}>${to}`);
            send(me, { type: 'request_timeout', peer: to });
            send(to, { type: 'incoming_cancelled', peer: me, reason: 'timeout' });
          }, 60000));
          send(to, { type: 'incoming', peer: me, ...(c.key ? { peer_key: c.key } : {}) });
          send(me, { type: 'request_sent', peer: to });
          return;
        }
        case 'cancel': {
          const to = canon(m.to);
          const k = `${me}>${to}`;
          if (!requests.has(k)) return err('no_request');
          clearTimeout(requests.get(k));
          requests.delete(k);
          send(to, { type: 'incoming_cancelled', peer: me, reason: 'cancelled' });
          send(me, { type: 'request_cancelled', peer: to });
          return;
        }
        case 'accept':
        case 'decline': {
          const from = canon(m.from);
          const k = `${from}>${me}`;
          if (!requests.has(k)) return err('no_request');
          clearTimeout(requests.get(k));
          requests.delete(k);
          if (m.type === 'decline') { send(from, { type: 'declined', peer: me }); return; }
          c.pairs.add(from);
          clients.get(from).pairs.add(me);
          const fk = clients.get(from).key;
          send(from, { type: 'paired', peer: me, initiator: true, ...(c.key ? { peer_key: c.key } : {}) });
          send(me, { type: 'paired', peer: from, initiator: false, ...(fk ? { peer_key: fk } : {}) });
          return;
        }
        case 'signal': {
          const to = canon(m.to);
          if (!c.pairs.has(to)) return err('not_paired', { peer: to });
          send(to, { type: 'signal', from: me, data: m.data });
          return;
        }
        case 'bye': {
          const to = canon(m.to);
          if (!c.pairs.has(to)) return err('not_paired', { peer: to });
          c.pairs.delete(to);
          clients.get(to)?.pairs.delete(me);
          send(to, { type: 'peer_left', peer: me, reason: 'bye' });
          return;
        }
        case 'contact_add':
        case 'contact_remove':
        case 'block':
        case 'unblock': {
          if (!c.key) return err('identity_required');
          const id = canon(m.id);
          if ((m.type === 'contact_add' || m.type === 'block') && !ident.keyOf.has(id)) return err('not_identity', { peer: id });
          const wasMutual = consents(me, id) && consents(id, me);
          if (m.type === 'contact_add') {
            edge(ident.consent, me).add(id);
            ident.blocks.get(me)?.delete(id);
            const mutual = consents(id, me);
            if (mutual && !wasMutual && online(id)) send(id, { type: 'presence', peer: me, online: true });
            ws.send(JSON.stringify({ type: 'contact', peer: id, mutual, online: mutual && online(id) }));
            return;
          }
          if (m.type === 'unblock') { ident.blocks.get(me)?.delete(id); ws.send(JSON.stringify({ type: 'unblocked', peer: id })); return; }
          ident.consent.get(me)?.delete(id);
          if (wasMutual && online(id)) send(id, { type: 'presence', peer: me, online: false });
          if (m.type === 'block') { edge(ident.blocks, me).add(id); ws.send(JSON.stringify({ type: 'blocked', peer: id })); return; }
          ws.send(JSON.stringify({ type: 'contact_removed', peer: id }));
          return;
        }
        case 'ping': ws.send(JSON.stringify({ type: 'pong', t: m.t })); return;
        case 'refresh_ice': ws.send(JSON.stringify({ type: 'ice_servers', ice_servers: iceServers, ice_expires: 0 })); return;
        default: err('unknown_type');
      }
    });
    ws.on('close', () => {
      if (!me) return;
      const c = clients.get(me);
      if (!c || c.ws !== ws) return;
      c.ws = null;
      for (const p of c.pairs) send(p, { type: 'peer_away', peer: me });
      const id = me;
      c.graceTimer = setTimeout(() => {
        if (clients.get(id) === c) endSession(id, c);
      }, grace);
    });
  });

  return new Promise((resolve) => {
    server.listen(port, '127.0.0.1', () => {
      const addr = server.address();
      resolve({
        url: `http://127.0.0.1:${addr.port}`,
        port: addr.port,
        close: () => new Promise((r) => {
          for (const c of wss.clients) c.terminate();
          for (const tm of requests.values()) clearTimeout(tm);
          for (const c of clients.values()) clearTimeout(c.graceTimer);
          wss.close();
          server.close(() => r());
        }),
      });
    });
  });
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const s = await startMockServer({ port: Number(process.argv[2] || 0) });
  console.log(`HTTP listening on ${s.url}`);
}
