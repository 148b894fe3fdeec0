// One conversation: its messages (kept as DOM nodes, attached to the visible list when selected), delivery
// receipts, typing indicator, unread count, the messages of the chat data channel, its file transfers and its
// pairing state (pairing.js). Everything that changes a conversation goes through its methods; what the rest of
// the page needs to know goes out on the bus (bus.js): `conversation-changed` {conv}, `message-arrived` {conv,
// text}, `peer-rejoin` {conv, id}, `conversation-renamed` {conv, old}.
//
// Chat channel messages (JSON): {t:"msg", id, text, ts} → {t:"ack", id}; {t:"typing", on}; {t:"path", type,
// relayProtocol} (my end of the selected candidate pair, so the other side can tell a relay on my side);
// call* (see call.js); file-* (see files.js). Unacknowledged messages are re-sent when the channel reopens; the receiver drops duplicates.

import { el, timeText } from './dom.js';
import { t, language } from './i18n.js';
import { displayId } from './signaling.js';
import { FileTransfers } from './files.js';
import { Pairing } from './pairing.js';
import { renderTransfer } from './filecard.js';
import { emit } from './bus.js';

const TYPING_SEND_EVERY_MS = 2500;
const TYPING_SHOW_MS = 5000;
const MAX_TEXT = 20000;

let counter = 0;
function msgId() {
  const r = crypto.getRandomValues(new Uint8Array(4));
  return `${Date.now().toString(36)}-${(counter++).toString(36)}-${[...r].map((b) => b.toString(16).padStart(2, '0')).join('')}`;
}

function sizeText(n) {
  if (!Number.isFinite(n)) return '';
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

export class Conversation {
  /**
   * @param {object} o
   * @param {string} o.peer
   * @param {import('./peer.js').PeerLink} o.link
   * @param {string|null} [o.ticket]  from `paired`
   */
  constructor({ peer, link, ticket }) {
    this.peer = peer;
    this.link = link;
    this.pairing = new Pairing({ initiator: link.initiator, ticket });
    this.nodes = [];
    this.list = null;
    this.unread = 0;
    this.closed = false;
    this.shown = false; // the selected conversation (visible when the tab is too)
    this.unacked = new Map(); // id → message object
    this.statusEls = new Map(); // id → status element
    this.seen = new Set();
    this.labels = []; // [node, key, vars] for re-translation
    this.transferNodes = new Map();
    this.typing = false;
    this.typingTimer = 0;
    this.lastTypingSent = 0;
    this.preview = '';
    this.lastSender = null;
    this.draft = '';
    this.sentPath = '';
    this.welcomed = false;
    this.records = new Map(); // mid → what history.js may keep: {peer, mid, from, text|file, ts, status}
    this.peerKey = null; // the peer's identity key as the server stated it in `paired` (contacts.js sets it)
    this.binding = null; // verify.js: 'ok' (the peer signed this connection's fingerprints) | 'mismatch' | null
    this.safetyCode = null; // verify.js: the code of the two identity keys (stable), when both have one
    this.offlineQueue = false; // a saved contact: messages may be written while it is offline (sent when it is back)

    link.addEventListener('state', (ev) => {
      const { state, diagnosis } = ev.detail;
      if (diagnosis) link.diagnosis = diagnosis;
      if (state === 'connected' && !this.welcomed) {
        this.welcomed = true;
        this.system('chat.started');
      }
      this.changed();
    });
    link.addEventListener('chat-open', () => {
      for (const m of this.unacked.values()) {
        if (link.send(m)) this.setStatus(m.id, 'sent');
      }
      this.sentPath = '';
      link.pollStats(); // tell the other side our end of the path now, not at the next poll
      emit('chat-opened', { conv: this }); // verify.js binds the DTLS fingerprints to the identity keys
      this.changed();
    });
    link.addEventListener('chat-close', () => this.changed());
    link.addEventListener('chat-message', (ev) => this.onMessage(ev.detail.msg));
    link.addEventListener('stats', (ev) => {
      const l = ev.detail.local;
      const key = `${l.type}/${l.relayProtocol || ''}`;
      if (key !== this.sentPath && link.send({ t: 'path', type: l.type, relayProtocol: l.relayProtocol || '' })) this.sentPath = key;
      this.changed();
    });
    link.addEventListener('security', () => this.changed());
    this.files = new FileTransfers(link, (x) => this.renderTransfer(x, renderTransfer));
  }

  /** Whether the server pairs the two IDs right now (tests read it too). */
  get serverPaired() {
    return this.pairing.serverPaired;
  }

  get visible() {
    return this.shown && !document.hidden;
  }

  changed() {
    emit('conversation-changed', { conv: this });
  }

  /** The peer came back under a new ID (server restart without a lasting key). */
  renamePeer(id) {
    const old = this.peer;
    if (id === old) return;
    this.peer = id;
    this.link.peer = id;
    this.pairing.dropTicket(); // it names the old ID
    emit('conversation-renamed', { conv: this, old });
    this.system('chat.peer_new_id', { old: displayId(old), id: displayId(id) });
  }

  attach(list) {
    this.list = list;
    list.ponteChat = this;
    list.replaceChildren(...this.nodes);
    list.scrollTop = list.scrollHeight;
  }

  isAttached() {
    return !!this.list && this.list.ponteChat === this;
  }

  append(node, forceScroll) {
    this.nodes.push(node);
    if (!this.isAttached()) return;
    const l = this.list;
    const nearBottom = l.scrollHeight - l.scrollTop - l.clientHeight < 120;
    l.append(node);
    if (nearBottom || forceScroll) l.scrollTop = l.scrollHeight;
  }

  /** A centred line of text ("Connected", "X left"). `key` is an i18n key, or plain text. */
  /** A line from the page itself; kind 'warning' makes it loud (key changes, failed identity checks). */
  system(key, vars, kind = '') {
    const node = el('li', { class: kind ? `sys ${kind}` : 'sys', 'data-testid': 'system-message', 'data-kind': kind || 'info' }, t(key, vars));
    this.labels.push([node, key, vars]);
    this.lastSender = null;
    this.append(node);
  }

  relabel() {
    for (const [node, key, vars] of this.labels) node.textContent = t(key, vars);
    for (const [id, s] of this.statusEls) this.setStatus(id, s.dataset.status);
    for (const [, n] of this.transferNodes) if (n.rerender) n.rerender();
  }

  messageNode({ id, text, ts, mine }) {
    const sender = mine ? t('chat.you') : displayId(this.peer);
    const showSender = this.lastSender !== (mine ? 'me' : 'peer');
    this.lastSender = mine ? 'me' : 'peer';
    const meta = el('div', { class: 'meta' }, el('time', { datetime: new Date(ts).toISOString() }, timeText(ts, language())));
    let status = null;
    if (mine) {
      status = el('span', { class: 'status', 'data-testid': 'message-status' });
      meta.append(status);
    }
    const li = el('li', { class: `msg ${mine ? 'mine' : 'theirs'}`, 'data-testid': 'message', 'data-id': id, 'data-from': mine ? 'me' : 'peer' },
      el('div', { class: 'bubble' },
        showSender ? el('div', { class: 'sender', 'data-testid': 'message-sender' }, sender) : el('span', { class: 'sr-only' }, `${sender}: `),
        el('p', { class: 'text', 'data-testid': 'message-text' }, text),
        meta));
    if (!showSender) li.classList.add('cont');
    if (status) {
      this.statusEls.set(id, status);
    }
    return li;
  }

  /** Keep (or update) a message's record and tell history.js about it (it stores it for saved contacts). */
  record(rec) {
    const r = { peer: this.peer, ...this.records.get(rec.mid), ...rec };
    this.records.set(r.mid, r);
    emit('history', { rec: r });
  }

  /**
   * Show stored messages above the live ones (oldest first). My messages that never got a receipt are sent again
   * (the receiver drops duplicates by id): that is how messages written while the contact was offline get delivered.
   */
  loadHistory(recs) {
    const nodes = [];
    const saveNodes = this.nodes;
    this.nodes = nodes;
    const saveSender = this.lastSender;
    this.lastSender = null;
    const list = this.list;
    this.list = null; // build detached, then put them in front
    for (const r of recs) {
      if (this.seen.has(r.mid) || this.records.has(r.mid)) continue;
      this.seen.add(r.mid);
      this.records.set(r.mid, { ...r, peer: this.peer });
      if (r.file) {
        this.lastSender = null;
        this.append(el('li', { class: 'sys file-history', 'data-testid': 'history-file' }, t('history.file', { name: r.file.name, size: sizeText(r.file.size) })));
        continue;
      }
      const mine = r.from === 'me';
      this.append(this.messageNode({ id: r.mid, text: r.text, ts: r.ts, mine }));
      if (mine) {
        this.setStatus(r.mid, r.status || 'sent');
        if (r.status !== 'delivered') {
          const m = { t: 'msg', id: r.mid, text: r.text, ts: r.ts };
          this.unacked.set(r.mid, m);
          if (!this.closed && this.link.send(m)) this.setStatus(r.mid, 'sent');
        }
      }
    }
    if (nodes.length) nodes.push(el('li', { class: 'sys history-sep', 'data-testid': 'history-end' }, t('history.earlier')));
    this.nodes = [...nodes, ...saveNodes];
    this.lastSender = saveSender;
    this.list = list;
    if (this.isAttached()) this.attach(this.list);
    this.changed();
  }

  /** verify.js: the stable code of the two identity keys. */
  setSafetyCode(code) {
    this.safetyCode = code || null;
    this.changed();
  }

  /** verify.js: whether the peer's identity key signed this connection's DTLS fingerprints. */
  setBinding(result) {
    this.binding = result;
    this.changed();
  }

  /** Allow writing while closed (the peer is a saved contact); the messages wait on the device. */
  setOfflineQueue(on) {
    if (this.offlineQueue === !!on) return;
    this.offlineQueue = !!on;
    this.changed();
  }

  /** Whether the composer may send: a live chat, or a saved contact's ended one (queued for later). */
  get writable() {
    return !this.closed || this.offlineQueue;
  }

  setStatus(id, s) {
    const rec = this.records.get(id);
    if (rec && rec.from === 'me' && rec.status !== s && s !== 'queued') this.record({ mid: id, status: s });
    const node = this.statusEls.get(id);
    if (!node) return;
    node.dataset.status = s;
    node.textContent = s === 'delivered' ? '✓✓' : s === 'sent' ? '✓' : '○';
    node.title = t(`status.${s}`);
    node.setAttribute('aria-label', t(`status.${s}`));
  }

  sendText(text) {
    text = text.slice(0, MAX_TEXT);
    const m = { t: 'msg', id: msgId(), text, ts: Date.now() };
    this.unacked.set(m.id, m);
    this.append(this.messageNode({ ...m, mine: true }), true);
    this.record({ mid: m.id, from: 'me', text, ts: m.ts, status: 'queued' });
    this.setStatus(m.id, 'queued');
    if (!this.closed && this.link.send(m)) this.setStatus(m.id, 'sent');
    this.lastTypingSent = 0;
    this.preview = `${t('chat.you')}: ${text}`;
    this.changed();
  }

  userTyping() {
    const now = Date.now();
    if (now - this.lastTypingSent > TYPING_SEND_EVERY_MS && this.draft) {
      this.lastTypingSent = now;
      this.link.send({ t: 'typing', on: true });
    } else if (!this.draft && this.lastTypingSent) {
      this.lastTypingSent = 0;
      this.link.send({ t: 'typing', on: false });
    }
  }

  setTyping(on) {
    clearTimeout(this.typingTimer);
    this.typing = on;
    if (on) this.typingTimer = setTimeout(() => this.setTyping(false), TYPING_SHOW_MS);
    this.changed();
  }

  onMessage(msg) {
    switch (msg.t) {
      case 'msg': {
        const id = String(msg.id || '');
        if (!id) return;
        this.link.send({ t: 'ack', id });
        if (this.seen.has(id)) return;
        this.seen.add(id);
        const text = String(msg.text ?? '').slice(0, MAX_TEXT);
        const ts = Number.isFinite(msg.ts) ? Math.min(msg.ts, Date.now()) : Date.now();
        this.append(this.messageNode({ id, text, ts, mine: false }));
        this.record({ mid: id, from: 'peer', text, ts });
        this.preview = text;
        if (!this.visible) this.unread += 1;
        this.setTyping(false);
        emit('message-arrived', { conv: this, text });
        break;
      }
      case 'ack': {
        const id = String(msg.id || '');
        if (this.unacked.delete(id)) this.setStatus(id, 'delivered');
        break;
      }
      case 'typing':
        this.setTyping(!!msg.on);
        break;
      case 'path':
        this.link.setRemotePath(msg);
        break;
      case 'rejoin':
        emit('peer-rejoin', { conv: this, id: String(msg.id || '') });
        break;
      case 'id-bind':
        emit('peer-binding', { conv: this, msg });
        break;
      case 'call':
      case 'call-ringing':
      case 'call-accept':
      case 'call-decline':
      case 'call-busy':
      case 'call-end':
      case 'call-media':
        emit('call-message', { conv: this, msg }); // callview.js hands it to call.js
        break;
      default:
        this.files.handle(msg);
    }
  }

  markRead() {
    this.unread = 0;
  }

  /** Render a file transfer card (created on first call, updated afterwards). */
  renderTransfer(x, render) {
    let n = this.transferNodes.get(x.id);
    const fresh = !n;
    if (fresh) {
      n = render(x, null, this);
      this.transferNodes.set(x.id, n);
      this.lastSender = null;
      this.append(n.li, x.dir === 'out');
      // The card's metadata only (never the file): name, size, type.
      this.record({ mid: x.id, from: x.dir === 'out' ? 'me' : 'peer', ts: Date.now(), file: { name: x.name, size: x.size, mime: x.mime || '' } });
      if (x.dir === 'in') {
        if (!this.visible) this.unread += 1;
        emit('message-arrived', { conv: this, text: x.name });
        this.preview = t('chat.file_preview', { name: x.name });
      } else this.preview = `${t('chat.you')}: ${t('chat.file_preview', { name: x.name })}`;
      this.changed();
    } else {
      render(x, n, this);
    }
  }

  end(key, vars) {
    if (this.closed) return;
    this.closed = true;
    this.pairing.end();
    this.system(key, vars);
    this.files.abortAll();
    this.link.close();
    this.setTyping(false);
    this.changed();
  }

  destroy() {
    this.closed = true;
    this.pairing.end();
    this.link.close();
    for (const [id, n] of this.transferNodes) {
      if (n.url) URL.revokeObjectURL(n.url);
      this.transferNodes.delete(id);
    }
  }
}
