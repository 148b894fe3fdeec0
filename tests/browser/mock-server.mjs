// A small stand-in for ponte's HTTP + signaling (docs/protocol.md), for developing the web client before the real
// hub exists and for tests that need to script the server's side (e.g. a server restart). It serves www/ with the
// same CSP as ponte. It has no STUN/TURN: ICE servers are whatever the caller passes.
//
//   node mock-server.mjs [port]      (prints "HTTP listening on http://127.0.0.1:PORT")

import http from 'node:http';
import { readFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
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

export function startMockServer({ port = 0, iceServers = [], grace = 5000 } = {}) {
  const clients = new Map(); // id → {ws, token, pairs:Set, graceTimer}
  const tokens = new Map(); // token → id
  const requests = new Map(); // "a>b" → timer

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
    ws.on('message', (raw) => {
      let m;
      try { m = JSON.parse(String(raw)); } catch { ws.send(JSON.stringify({ type: 'error', code: 'bad_json', message: 'bad json' })); return; }
      if (!me) {
        if (m.type !== 'hello') { ws.send(JSON.stringify({ type: 'error', code: 'hello_required', message: 'hello first' })); return; }
        let resumed = false;
        if (m.token && tokens.has(m.token)) {
          me = tokens.get(m.token);
          const c = clients.get(me);
          clearTimeout(c.graceTimer);
          if (c.ws && c.ws !== ws) { try { c.ws.close(4001, 'session resumed elsewhere'); } catch { /* ignore */ } }
          c.ws = ws;
          resumed = true;
          for (const p of c.pairs) send(p, { type: 'peer_back', peer: me });
        } else {
          me = newId();
          const token = randomBytes(16).toString('hex');
          tokens.set(token, me);
          clients.set(me, { ws, token, pairs: new Set() });
        }
        const c = clients.get(me);
        ws.send(JSON.stringify({ type: 'welcome', v: 1, id: me, display_id: `${me.slice(0, 4)}-${me.slice(4)}`, token: c.token, resumed, ice_servers: iceServers, ice_expires: Math.floor(Date.now() / 1000) + 86400, peers: [...c.pairs], limits: { max_message_bytes: 65536, messages_per_sec: 50, connect_requests_per_min: 20 } }));
        return;
      }
      const c = clients.get(me);
      const err = (code, extra) => ws.send(JSON.stringify({ type: 'error', code, message: code, ref: m.type, ...extra }));
      switch (m.type) {
        case 'connect': {
          const to = canon(m.to);
          if (to === me) return err('self_connect');
          if (!clients.has(to) || !clients.get(to).ws) return err('unknown_peer', { peer: to });
          if (c.pairs.has(to)) return err('already_paired', { peer: to });
          if (requests.has(`${me}>${to}`) || requests.has(`${to}>${me}`)) return err('duplicate_request', { peer: to });
          requests.set(`${me}>${to}`, setTimeout(() => {
            requests.delete(`${me}>${to}`);
            send(me, { type: 'request_timeout', peer: to });
            send(to, { type: 'incoming_cancelled', peer: me, reason: 'timeout' });
          }, 60000));
          send(to, { type: 'incoming', peer: me });
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
          send(from, { type: 'paired', peer: me, initiator: true });
          send(me, { type: 'paired', peer: from, initiator: false });
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
        for (const p of c.pairs) { clients.get(p)?.pairs.delete(id); send(p, { type: 'peer_left', peer: id, reason: 'disconnected' }); }
        for (const [k, tm] of requests) {
          if (k.startsWith(`${id}>`)) { clearTimeout(tm); requests.delete(k); send(k.split('>')[1], { type: 'incoming_cancelled', peer: id, reason: 'left' }); }
        }
        clients.delete(id);
        tokens.delete(c.token);
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
