// WebSocket client for ponte's signaling protocol v1 (docs/protocol.md).
//
// Sends `hello` (with the reconnect token kept in sessionStorage, so a reload keeps the ID; the server signs it, so
// it also brings the ID back after a server restart), reconnects with
// exponential backoff plus jitter, and re-emits every server message as an event named after its `type`.
// Extra events: `state` (detail: "connecting" | "open" | "closed" | "replaced" | "taken"), `session` (the welcome),
// `identity-refused` {code} (the server refused the identity: the page goes on anonymously).
//
// With `identity` set ({key, sign}, from identity.js) the hello names the public key and the `identity_challenge`
// is answered with `identity_proof` before anything else; close code 4002 (the identity was opened in another
// tab) stops reconnecting until `reconnectNow()` ("use here"), so two tabs never take the ID from each other
// forever.

import { proofBytes } from './identity.js';

const TOKEN_KEY = 'ponte.token';
// Errors before the welcome after which the server closes the connection and the identity cannot work here.
const IDENTITY_FATAL = new Set(['bad_key', 'bad_signature', 'too_many_identities']);
// Refusals of a new session that end in a 1013 close: the whole server is full, or this network (source address)
// holds its share of sessions already. The page says which; both retry with the slower backoff.
const FULL_CODES = new Set(['server_full', 'too_many_sessions']);
const ID_KEY = 'ponte.id';
const PING_EVERY_MS = 25000;
const PONG_TIMEOUT_MS = 10000;

export class Signaling extends EventTarget {
  constructor(url) {
    super();
    this.url = url || Signaling.defaultUrl();
    this.ws = null;
    this.state = 'closed';
    this.session = null; // last welcome
    this.attempt = 0;
    this.retryTimer = 0;
    this.pingTimer = 0;
    this.pongTimer = 0;
    this.stopped = false;
    this.nextRetryAt = 0;
    this.outbox = []; // messages sent while disconnected, flushed after welcome
    this.identity = null; // {key, sign(bytes)} when this profile has a lasting identity
    this.identityUnavailable = null; // why there is no identity (identity.js reason), for the page to say
    this.identityRefused = null; // error code when the server refused it (bad_key, bad_signature, too_many_identities)
  }

  /** Whether the next hello will carry the identity. */
  get usesIdentity() {
    return !!this.identity && !this.identityRefused;
  }

  static defaultUrl() {
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    return `${proto}//${location.host}/ws`;
  }

  get token() {
    try { return sessionStorage.getItem(TOKEN_KEY) || undefined; } catch { return undefined; }
  }

  set token(v) {
    try {
      if (v) sessionStorage.setItem(TOKEN_KEY, v); else sessionStorage.removeItem(TOKEN_KEY);
    } catch { /* storage disabled: the ID just won't survive a reload */ }
  }

  /** The ID this tab had before (for telling the user it changed). */
  get previousId() {
    try { return sessionStorage.getItem(ID_KEY) || undefined; } catch { return undefined; }
  }

  start() {
    this.stopped = false;
    this.open();
  }

  /** Forget the token and connect again: a new ID. */
  renew() {
    this.token = undefined;
    try { sessionStorage.removeItem(ID_KEY); } catch { /* ignore */ }
    this.reconnectNow();
  }

  reconnectNow() {
    clearTimeout(this.retryTimer);
    this.attempt = 0;
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      try { ws.close(1000); } catch { /* ignore */ }
    }
    this.stopped = false;
    this.open();
  }

  setState(s, extra) {
    this.state = s;
    this.dispatchEvent(new CustomEvent('state', { detail: { state: s, ...extra } }));
  }

  open() {
    clearTimeout(this.retryTimer);
    this.setState('connecting', { attempt: this.attempt });
    let ws;
    try {
      ws = new WebSocket(this.url, ['ponte.v1']);
    } catch (e) {
      this.scheduleRetry();
      return;
    }
    this.ws = ws;
    let welcomed = false;
    let refusal = null; // server_full or too_many_sessions, sent just before a 1013 close
    ws.onopen = () => {
      if (this.ws !== ws) return;
      const hello = { type: 'hello', v: 1, token: this.token };
      if (this.usesIdentity) hello.identity = { key: this.identity.key };
      ws.send(JSON.stringify(hello));
    };
    ws.onmessage = (ev) => {
      if (this.ws !== ws) return;
      let msg;
      try { msg = JSON.parse(ev.data); } catch { return; }
      if (!msg || typeof msg.type !== 'string') return;
      if (msg.type === 'identity_challenge') {
        if (!this.usesIdentity || typeof msg.challenge !== 'string') return;
        this.identity.sign(proofBytes(msg.challenge)).then((signature) => {
          if (this.ws === ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: 'identity_proof', signature }));
        }, (e) => { console.warn('ponte: cannot sign', e); this.refuseIdentity('sign_failed'); ws.close(1000); });
        return;
      }
      if (msg.type === 'error' && !welcomed && FULL_CODES.has(msg.code)) {
        // The server will close with 1013: remember why, so the status line can say it rather than "offline".
        refusal = msg.code;
      }
      if (msg.type === 'error' && !welcomed && IDENTITY_FATAL.has(msg.code) && this.usesIdentity) {
        // The server will close this connection: the next one goes without the identity (the anonymous flow).
        this.refuseIdentity(msg.code);
      }
      if (msg.type === 'welcome') {
        welcomed = true;
        this.attempt = 0;
        const prev = this.session;
        this.session = msg;
        this.token = msg.token;
        const before = this.previousId;
        try { sessionStorage.setItem(ID_KEY, msg.id); } catch { /* ignore */ }
        msg.previousId = prev ? prev.id : before;
        this.setState('open');
        this.startPing();
        const queued = this.outbox;
        this.outbox = [];
        for (const m of queued) this.send(m);
      } else if (msg.type === 'tokens') {
        // The server renews the token now and then, so that it is still young enough after a restart.
        if (typeof msg.token === 'string') this.token = msg.token;
      } else if (msg.type === 'pong') {
        clearTimeout(this.pongTimer);
      }
      this.dispatchEvent(new CustomEvent(msg.type, { detail: msg }));
      this.dispatchEvent(new CustomEvent('message', { detail: msg }));
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.stopPing();
      if (ev.code === 4002) {
        // This identity was opened in another tab, which now has the ID: never take it back by ourselves.
        this.stopped = true;
        this.setState('taken', { code: ev.code });
        return;
      }
      if (ev.code === 4001) {
        // Another tab (a duplicated one shares sessionStorage) took over this ID: do not fight over it.
        this.stopped = true;
        this.setState('replaced', { code: ev.code });
        return;
      }
      if (ev.code === 1002) {
        this.stopped = true;
        this.setState('closed', { code: ev.code, fatal: true });
        return;
      }
      this.setState('closed', { code: ev.code, welcomed, refusal: ev.code === 1013 ? refusal : null });
      this.scheduleRetry(ev.code === 1013);
    };
    ws.onerror = () => { /* onclose follows */ };
  }

  refuseIdentity(code) {
    this.identityRefused = code;
    this.dispatchEvent(new CustomEvent('identity-refused', { detail: { code } }));
  }

  scheduleRetry(slow) {
    if (this.stopped) return;
    this.attempt += 1;
    // 0.5 s, 1 s, 2 s, 4 s ... capped at 15 s (30 s when the server said it is full), with ±30 % jitter.
    const cap = slow ? 30000 : 15000;
    const base = Math.min(cap, 500 * 2 ** Math.min(this.attempt - 1, 6));
    const delay = Math.round(base * (0.7 + Math.random() * 0.6));
    this.nextRetryAt = Date.now() + delay;
    this.dispatchEvent(new CustomEvent('retry', { detail: { delay, attempt: this.attempt } }));
    this.retryTimer = setTimeout(() => this.open(), delay);
  }

  startPing() {
    this.stopPing();
    this.pingTimer = setInterval(() => {
      if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return;
      this.ws.send(JSON.stringify({ type: 'ping', t: Date.now() }));
      clearTimeout(this.pongTimer);
      this.pongTimer = setTimeout(() => {
        // The connection is silently dead (laptop sleep, NAT timeout): drop it and reconnect.
        if (this.ws) {
          const ws = this.ws;
          ws.onclose({ code: 1006 });
          try { ws.close(); } catch { /* ignore */ }
        }
      }, PONG_TIMEOUT_MS);
    }, PING_EVERY_MS);
  }

  stopPing() {
    clearInterval(this.pingTimer);
    clearTimeout(this.pongTimer);
  }

  get isOpen() {
    return this.state === 'open' && this.ws && this.ws.readyState === WebSocket.OPEN;
  }

  /** Send a message now, or (queue=true) after the next welcome if the socket is down. Returns whether it went out. */
  send(msg, queue = false) {
    if (this.isOpen) {
      this.ws.send(JSON.stringify(msg));
      return true;
    }
    if (queue) this.outbox.push(msg);
    return false;
  }
}

/** The ID alphabet (no 0 o 1 l i). */
export const ID_ALPHABET = '23456789abcdefghjkmnpqrstuvwxyz';

/**
 * Forgiving ID input: accepts `K7M2-X9P4`, ` k7m2 x9p4 `, a full share link `https://host/#k7m2x9p4`.
 * Returns the canonical 8-character ID, or null with a reason.
 */
export function parseId(input) {
  let s = String(input || '').trim();
  const hash = s.lastIndexOf('#');
  if (hash >= 0) s = s.slice(hash + 1);
  s = s.toLowerCase().replace(/[^0-9a-z]/g, '');
  if (!s) return { id: null, reason: 'empty' };
  for (const ch of s) {
    if (!ID_ALPHABET.includes(ch)) return { id: null, reason: 'chars', ch };
  }
  if (s.length !== 8) return { id: null, reason: 'length' };
  return { id: s, reason: null };
}

export function displayId(id) {
  return id && id.length === 8 ? `${id.slice(0, 4)}-${id.slice(4)}` : id || '';
}
