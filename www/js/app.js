// The chat UI: wires signaling, one PeerLink + FileTransfers per conversation, and the DOM.
// All user-provided text goes through textContent; nothing from the network is ever parsed as HTML.

import { Signaling, parseId, displayId } from './signaling.js';
import { PeerLink } from './peer.js';
import { FileTransfers } from './files.js';
import { Chat } from './chat.js';
import { t, detectLanguage, setLanguage, fillLanguageSelect, language } from './i18n.js';
import { $, el, avatarColor } from './dom.js';
import { renderTransfer } from './filecard.js';
import { qrSvg } from './qr.js';

setLanguage(detectLanguage());
fillLanguageSelect($('#lang-select'));

const sig = new Signaling();
const convs = new Map(); // peer id → Conversation
const incoming = new Map(); // peer id → card element
const pendingOut = new Map(); // peer id → 'sending' | 'waiting'
let me = null;
let selected = null;
let autoConnect = null; // an ID from the share link, connected to once the server welcomes us
let everWelcomed = false;

// ---------------------------------------------------------------- server connection

sig.addEventListener('state', (ev) => renderServerStatus(ev.detail));
sig.addEventListener('retry', () => renderServerStatus({ state: 'closed' }));

let retryTick = 0;
function renderServerStatus(detail) {
  const box = $('.server-status');
  const text = $('.server-status-text');
  clearInterval(retryTick);
  box.dataset.state = detail.state;
  if (detail.state === 'open') text.textContent = t('server.online');
  else if (detail.state === 'connecting') text.textContent = everWelcomed ? t('server.retrying') : t('server.connecting');
  else if (detail.state === 'replaced') {
    text.textContent = t('server.replaced');
    showBanner(t('server.replaced'), t('server.new_id_button'), () => { hideBanner(); sig.renew(); });
  } else if (detail.fatal) {
    text.textContent = t('server.unsupported');
  } else {
    const tick = () => {
      const s = Math.max(0, Math.ceil((sig.nextRetryAt - Date.now()) / 1000));
      const live = [...convs.values()].some((c) => !c.closed && c.link.state === 'connected');
      text.textContent = t(live ? 'server.offline_chats' : 'server.offline', { s });
    };
    tick();
    retryTick = setInterval(tick, 1000);
  }
}

sig.addEventListener('welcome', (ev) => {
  const w = ev.detail;
  const changed = everWelcomed && me && me.id !== w.id;
  const prevTab = !everWelcomed && w.previousId && w.previousId !== w.id;
  me = { id: w.id, display: w.display_id || displayId(w.id) };
  everWelcomed = true;
  renderMe();
  if (changed || prevTab) showBanner(t('server.id_changed', { id: me.display }));
  const alive = new Set(w.peers || []);
  for (const peer of alive) {
    const c = convs.get(peer);
    if (!c || c.closed) sig.send({ type: 'bye', to: peer }); // a pairing this page no longer has (reload)
  }
  for (const c of convs.values()) {
    if (c.closed) continue;
    c.serverPaired = alive.has(c.peer);
    c.link.iceServers = w.ice_servers || [];
    if (c.serverPaired && c.link.state !== 'connected') c.link.retry(w.ice_servers);
  }
  // Requests in flight died with the old session.
  if (!w.resumed) {
    pendingOut.clear();
    renderPending();
    for (const peer of [...incoming.keys()]) removeIncoming(peer);
  }
  // After a server restart the pairings are gone. With my ID restored (the server kept its signing key), each
  // conversation is re-paired by presenting its ticket; both sides do, so neither needs a click, and the links then
  // restart ICE with the new ICE servers (a relayed path died with the server's TURN allocations).
  if (w.restored) {
    for (const c of convs.values()) {
      if (!c.closed && !c.serverPaired && c.ticket) sig.send({ type: 'rejoin', to: c.peer, ticket: c.ticket });
    }
  }
  // My ID changed (the server has no lasting key), but direct chats still run: tell each peer my new ID over the
  // chat channel so the pairing can be re-made (needed for ICE restarts later).
  if (!w.resumed && changed) {
    for (const c of convs.values()) {
      if (!c.closed && !c.serverPaired) c.link.send({ t: 'rejoin', id: me.id });
    }
  }
  for (const c of convs.values()) tryRejoin(c);
  if (autoConnect) {
    const id = autoConnect;
    autoConnect = null;
    if (id !== me.id) requestConnect(id);
  }
});

// TURN credentials expire (ice_expires): fetch fresh ones a minute before, for ICE restarts of open chats.
let iceRefreshTimer = 0;
function scheduleIceRefresh(expires) {
  clearTimeout(iceRefreshTimer);
  if (!Number.isFinite(expires) || expires <= 0) return;
  const ms = Math.max(10000, Math.min(expires * 1000 - Date.now() - 60000, 2 ** 31 - 1));
  iceRefreshTimer = setTimeout(() => sig.send({ type: 'refresh_ice' }), ms);
}
sig.addEventListener('welcome', (ev) => scheduleIceRefresh(ev.detail.ice_expires));
sig.addEventListener('ice_servers', (ev) => {
  if (sig.session) {
    sig.session.ice_servers = ev.detail.ice_servers;
    sig.session.ice_expires = ev.detail.ice_expires;
  }
  for (const c of convs.values()) if (!c.closed) c.link.iceServers = ev.detail.ice_servers || [];
  scheduleIceRefresh(ev.detail.ice_expires);
});

// ---------------------------------------------------------------- my ID, share link

function shareLink() {
  return me ? `${location.origin}/#${me.id}` : '';
}

function renderMe() {
  $('#my-id').textContent = me ? me.display : '····-····';
  $('#share-link').value = shareLink();
  $('#copy-id').disabled = !me;
  $('#qr-btn').disabled = !me;
  renderQr();
  $('#copy-link').disabled = !me;
  document.title = titleText();
}

async function copy(text, button) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    const input = $('#share-link');
    const old = input.value;
    input.value = text;
    input.select();
    try { document.execCommand('copy'); } catch { /* ignore */ }
    input.value = old;
  }
  const label = button.querySelector('span');
  const before = label.dataset.i18n;
  label.textContent = t('me.copied');
  button.classList.add('done');
  setTimeout(() => { label.textContent = t(before); button.classList.remove('done'); }, 1500);
}

function renderQr() {
  const box = $('#qr-box');
  if (box.hidden || !me) return;
  try {
    box.replaceChildren(qrSvg(shareLink(), { label: t('me.qr_label') }));
  } catch {
    box.replaceChildren();
  }
}
$('#qr-btn').addEventListener('click', () => {
  const box = $('#qr-box');
  box.hidden = !box.hidden;
  $('#qr-btn').setAttribute('aria-expanded', String(!box.hidden));
  renderQr();
});

$('#copy-id').addEventListener('click', (e) => me && copy(me.display, e.currentTarget));
$('#copy-link').addEventListener('click', (e) => me && copy(shareLink(), e.currentTarget));
$('#share-link').addEventListener('focus', (e) => e.target.select());
if (navigator.share) {
  const b = $('#share-link-btn');
  b.hidden = false;
  b.addEventListener('click', () => {
    if (me) navigator.share({ title: 'ponte', text: t('me.share_text', { link: shareLink() }), url: shareLink() }).catch(() => {});
  });
}

// ---------------------------------------------------------------- notifications and sound

let audio = null;
function unlockAudio() {
  if (!audio && window.AudioContext) {
    try { audio = new AudioContext(); } catch { audio = null; }
  }
  if (audio && audio.state === 'suspended') audio.resume().catch(() => {});
}
document.addEventListener('pointerdown', unlockAudio, { once: true });
document.addEventListener('keydown', unlockAudio, { once: true });

function chime() {
  if (!audio || audio.state !== 'running') return;
  const now = audio.currentTime;
  [660, 880].forEach((f, i) => {
    const o = audio.createOscillator();
    const g = audio.createGain();
    o.type = 'sine';
    o.frequency.value = f;
    g.gain.setValueAtTime(0.0001, now + i * 0.16);
    g.gain.exponentialRampToValueAtTime(0.2, now + i * 0.16 + 0.02);
    g.gain.exponentialRampToValueAtTime(0.0001, now + i * 0.16 + 0.3);
    o.connect(g).connect(audio.destination);
    o.start(now + i * 0.16);
    o.stop(now + i * 0.16 + 0.32);
  });
}

function renderNotifyButton() {
  const b = $('#notify-btn');
  // Notifications need a secure context (https or localhost); elsewhere the browser refuses them outright.
  if (!('Notification' in window) || !window.isSecureContext) { b.hidden = true; return; }
  b.hidden = false;
  const p = Notification.permission;
  b.disabled = p !== 'default';
  b.textContent = p === 'granted' ? t('me.notifications_on') : p === 'denied' ? t('me.notifications_blocked') : t('me.notifications');
}
$('#notify-btn').addEventListener('click', async () => {
  unlockAudio();
  try { await Notification.requestPermission(); } catch { /* ignore */ }
  renderNotifyButton();
});
renderNotifyButton();

function notify(title, body, tag) {
  if (!document.hidden) return;
  chime();
  if ('Notification' in window && Notification.permission === 'granted') {
    try {
      const n = new Notification(title, { body, tag, icon: '/favicon.svg' });
      n.onclick = () => { window.focus(); n.close(); };
    } catch { /* some platforms need a service worker for notifications */ }
  }
}

// ---------------------------------------------------------------- banner

function showBanner(text, actionLabel, action) {
  const b = $('#banner');
  b.querySelector('.banner-text').textContent = text;
  const btn = $('#banner-action');
  btn.hidden = !actionLabel;
  if (actionLabel) {
    btn.textContent = actionLabel;
    btn.onclick = action;
  }
  b.hidden = false;
}
function hideBanner() { $('#banner').hidden = true; }
$('#banner-close').addEventListener('click', hideBanner);

// ---------------------------------------------------------------- connecting to someone

const input = $('#peer-id');
const connectMsg = $('#connect-msg');

function setConnectMessage(text, kind = 'error') {
  connectMsg.textContent = text || '';
  connectMsg.dataset.kind = kind;
}

function validate(show) {
  const { id, reason, ch } = parseId(input.value);
  let msg = '';
  if (reason === 'chars') msg = t('connect.bad_chars', { ch });
  else if (reason === 'length' && show) msg = t('connect.bad_length');
  input.setAttribute('aria-invalid', msg ? 'true' : 'false');
  if (show || reason === 'chars') setConnectMessage(msg);
  else if (!msg && connectMsg.dataset.kind === 'error') setConnectMessage('');
  return id;
}

input.addEventListener('input', () => validate(false));
$('#connect-form').addEventListener('submit', (e) => {
  e.preventDefault();
  unlockAudio();
  const id = validate(true);
  if (!id) { input.focus(); return; }
  requestConnect(id);
});

let lastConnectTarget = null;
function requestConnect(id) {
  if (me && id === me.id) { setConnectMessage(t('connect.self')); return; }
  const c = convs.get(id);
  if (c && !c.closed) { setConnectMessage(t('connect.already', { id: displayId(id) })); select(id); return; }
  if (!sig.isOpen) { setConnectMessage(t('connect.offline')); return; }
  setConnectMessage('');
  lastConnectTarget = id;
  pendingOut.set(id, 'sending');
  sig.send({ type: 'connect', to: id });
  renderPending();
}

function renderPending() {
  const box = $('#pending');
  const mirror = $('#empty-pending');
  if (!pendingOut.size) { box.hidden = true; mirror.hidden = true; return; }
  const [peer, phase] = [...pendingOut.entries()].pop();
  box.hidden = false;
  box.dataset.peer = peer;
  const text = t(phase === 'waiting' ? 'connect.waiting' : 'connect.sending', { id: displayId(peer) });
  $('#pending-text').textContent = text;
  // The big empty pane says it too, where the eye is on a desktop.
  mirror.hidden = false;
  $('#empty-pending-text').textContent = text;
}

$('#cancel-btn').addEventListener('click', () => {
  const peer = $('#pending').dataset.peer;
  if (!peer) return;
  sig.send({ type: 'cancel', to: peer });
  pendingOut.delete(peer);
  renderPending();
  setConnectMessage(t('connect.cancelled', { id: displayId(peer) }), 'info');
});

function endPending(peer, messageKey) {
  pendingOut.delete(peer);
  renderPending();
  if (messageKey) setConnectMessage(t(messageKey, { id: displayId(peer) }), messageKey === 'connect.cancelled' ? 'info' : 'error');
}

sig.addEventListener('request_sent', (ev) => {
  const c = convs.get(ev.detail.peer);
  if (c && c.rejoinRequested) return; // a silent re-pairing, not the user's request
  pendingOut.set(ev.detail.peer, 'waiting');
  renderPending();
});
sig.addEventListener('request_cancelled', (ev) => endPending(ev.detail.peer, null));
sig.addEventListener('request_timeout', (ev) => endPending(ev.detail.peer, 'connect.timeout'));
sig.addEventListener('declined', (ev) => endPending(ev.detail.peer, 'connect.declined'));

sig.addEventListener('error', (ev) => {
  const e = ev.detail;
  if (e.ref === 'rejoin') {
    // A ticket that no longer works (too old): fall back to telling the peer over the chat channel, if it is
    // still open, so that the two re-pair the old way (the initiator asks, the other side accepts by itself).
    const c = e.peer && convs.get(e.peer);
    if (c && !c.closed && e.code === 'bad_ticket') {
      c.ticket = null;
      if (c.link.send({ t: 'rejoin', id: me.id })) { c.expectRejoin = true; tryRejoin(c); }
    }
    return;
  }
  const peer = e.peer || (e.ref === 'connect' ? lastConnectTarget : null);
  const keys = {
    unknown_peer: 'connect.unknown', self_connect: 'connect.self', already_paired: 'connect.already',
    duplicate_request: 'connect.duplicate', too_many_requests: 'connect.rate',
  };
  if (e.ref === 'connect' || keys[e.code] && e.ref !== 'signal') {
    if (peer) pendingOut.delete(peer);
    renderPending();
    if (keys[e.code]) setConnectMessage(t(keys[e.code], { id: displayId(peer || '') }));
    else if (e.message) setConnectMessage(e.message);
  } else {
    console.warn('ponte: server error', e);
  }
});

// Share links: https://host/#k7m2x9p4 pre-fills the ID and sends the request once we are online.
function takeHash() {
  const raw = decodeURIComponent(location.hash.slice(1));
  if (!raw) return;
  history.replaceState(null, '', location.pathname + location.search);
  const { id } = parseId(raw);
  input.value = id ? displayId(id) : raw;
  if (!id) { validate(true); return; }
  if (me) requestConnect(id); else autoConnect = id;
}
window.addEventListener('hashchange', takeHash);
takeHash();

// ---------------------------------------------------------------- incoming requests

sig.addEventListener('incoming', (ev) => {
  const peer = ev.detail.peer;
  const known = convs.get(peer);
  if (known && !known.closed && known.expectRejoin) { sig.send({ type: 'accept', from: peer }); return; }
  if (incoming.has(peer)) return;
  const d = displayId(peer);
  const accept = el('button', { class: 'btn primary', type: 'button', 'data-testid': 'accept' }, t('incoming.accept'));
  const decline = el('button', { class: 'btn', type: 'button', 'data-testid': 'decline' }, t('incoming.decline'));
  const card = el('div', { class: 'request-card', role: 'alertdialog', 'aria-labelledby': `req-${peer}`, 'data-testid': 'incoming-request', 'data-peer': peer },
    el('div', { class: 'avatar', style: null }, d.slice(0, 2).toUpperCase()),
    el('div', { class: 'request-body' },
      el('strong', { class: 'request-title' }, t('incoming.title')),
      el('span', { id: `req-${peer}` }, t('incoming.text', { id: d }))),
    el('div', { class: 'request-actions' }, decline, accept));
  card.querySelector('.avatar').style.setProperty('--avatar', avatarColor(peer));
  accept.addEventListener('click', () => { sig.send({ type: 'accept', from: peer }); removeIncoming(peer); });
  decline.addEventListener('click', () => { sig.send({ type: 'decline', from: peer }); removeIncoming(peer); });
  incoming.set(peer, card);
  $('#requests').append(card);
  accept.focus();
  notify(t('incoming.notify_title'), t('incoming.notify_body', { id: d }), `ponte-req-${peer}`);
  document.title = titleText();
});

function removeIncoming(peer) {
  const card = incoming.get(peer);
  if (card) card.remove();
  incoming.delete(peer);
  document.title = titleText();
}

sig.addEventListener('incoming_cancelled', (ev) => {
  const { peer, reason } = ev.detail;
  if (!incoming.has(peer)) return;
  removeIncoming(peer);
  const key = reason === 'timeout' ? 'incoming.timeout' : reason === 'left' ? 'incoming.left' : 'incoming.cancelled';
  setConnectMessage(t(key, { id: displayId(peer) }), 'info');
});

// ---------------------------------------------------------------- conversations

sig.addEventListener('paired', (ev) => {
  const { peer, initiator } = ev.detail;
  pendingOut.delete(peer);
  renderPending();
  removeIncoming(peer);
  setConnectMessage('');
  input.value = '';
  const old = convs.get(peer);
  if (old && !old.closed) {
    const restored = !old.serverPaired;
    old.serverPaired = true;
    old.expectRejoin = false;
    old.rejoinRequested = false;
    if (ev.detail.ticket) old.ticket = ev.detail.ticket;
    if (restored && old.link.state !== 'connected') old.system('chat.rejoined', { id: displayId(peer) });
    old.link.resume(sig.session && sig.session.ice_servers);
    chatHooks.changed(old);
    return;
  }
  if (old) {
    old.destroy();
    if (old.item) old.item.li.remove();
  }
  let conv = null;
  conv = new Chat({
    peer,
    link: new PeerLink({
      peer,
      initiator,
      iceServers: (sig.session && sig.session.ice_servers) || [],
      signal: (data) => sig.send({ type: 'signal', to: conv ? conv.peer : peer, data }),
      canSignal: () => sig.isOpen && (!conv || conv.serverPaired),
    }),
    hooks: chatHooks,
  });
  conv.ticket = ev.detail.ticket || null;
  conv.files = new FileTransfers(conv.link, (x) => conv.renderTransfer(x, renderTransfer));
  convs.set(peer, conv);
  addConvItem(conv);
  select(peer);
});

// Renewed token (kept by signaling.js) and tickets: what lets a long chat re-pair after a restart.
sig.addEventListener('tokens', (ev) => {
  for (const { peer, ticket } of ev.detail.tickets || []) {
    const c = convs.get(peer);
    if (c && !c.closed && typeof ticket === 'string') c.ticket = ticket;
  }
});

sig.addEventListener('signal', (ev) => {
  const c = convs.get(ev.detail.from);
  if (c && !c.closed) c.link.onSignal(ev.detail.data);
});

sig.addEventListener('peer_away', (ev) => {
  const c = convs.get(ev.detail.peer);
  if (c && !c.closed) c.system('chat.peer_away', { id: displayId(c.peer) });
});
sig.addEventListener('peer_back', (ev) => {
  const c = convs.get(ev.detail.peer);
  if (!c || c.closed) return;
  c.system('chat.peer_back', { id: displayId(c.peer) });
  // Signals sent while it was away were refused (error peer_away): restart ICE if the path is not up.
  if (c.link.state !== 'connected') c.link.retry(sig.session && sig.session.ice_servers);
});
sig.addEventListener('peer_left', (ev) => {
  // Also ends a pending request of mine when its target went away for good.
  if (pendingOut.has(ev.detail.peer)) endPending(ev.detail.peer, 'connect.left');
  const c = convs.get(ev.detail.peer);
  if (!c || c.closed) return;
  c.end(ev.detail.reason === 'bye' ? 'chat.peer_left' : 'chat.peer_disconnected', { id: displayId(c.peer) });
});

/** The peer told us (over the chat channel) its new ID after a server restart. */
function peerRejoined(c, newId) {
  const { id } = parseId(newId);
  if (!id || c.closed || (me && id === me.id)) return;
  if (id === c.peer && c.serverPaired) return; // already re-paired (by ticket)
  if (id !== c.peer) {
    const old = c.peer;
    convs.delete(old);
    c.ticket = null; // it names the old ID
    c.peer = id;
    c.link.peer = id;
    convs.set(id, c);
    if (c.item) {
      c.item.btn.dataset.peer = id;
      c.item.name.textContent = displayId(id);
    }
    if (selected === old) selected = id;
    c.system('chat.peer_new_id', { old: displayId(old), id: displayId(id) });
  }
  // The announcement itself says the old pairing is gone (our own welcome may simply not have arrived yet).
  c.serverPaired = false;
  c.expectRejoin = true;
  if (incoming.has(id)) { sig.send({ type: 'accept', from: id }); removeIncoming(id); }
  tryRejoin(c);
  chatHooks.changed(c);
}

/** The original initiator re-makes the pairing once it is online and knows the peer's new ID. */
function tryRejoin(c) {
  if (c.closed || c.serverPaired || !c.expectRejoin || c.rejoinRequested || !c.link.initiator || !sig.isOpen) return;
  c.rejoinRequested = true;
  sig.send({ type: 'connect', to: c.peer });
}

// Hooks the Chat objects call back into the page.
const chatHooks = {
  rejoin: peerRejoined,
  isVisible: (c) => selected === c.peer && !document.hidden,
  changed: (c) => {
    renderConvItem(c);
    if (selected === c.peer) renderChatHead(c);
    document.title = titleText();
  },
  messageArrived: (c, text) => {
    if (document.hidden || selected !== c.peer) notify(`ponte: ${displayId(c.peer)}`, text.slice(0, 140), `ponte-msg-${c.peer}`);
  },
  list: () => $('#messages'),
};

function titleText() {
  let unread = incoming.size;
  for (const c of convs.values()) unread += c.unread;
  const base = me ? `ponte · ${me.display}` : 'ponte';
  return unread ? `(${unread}) ${base}` : base;
}

function addConvItem(c) {
  const d = displayId(c.peer);
  const avatar = el('span', { class: 'avatar', 'aria-hidden': 'true' }, d.slice(0, 2).toUpperCase());
  avatar.style.setProperty('--avatar', avatarColor(c.peer));
  const badge = el('span', { class: 'badge', 'data-testid': 'unread', hidden: '' });
  const sub = el('span', { class: 'conv-sub muted small' });
  const btn = el('button', { type: 'button', class: 'conv-item', 'data-testid': 'conversation', 'data-peer': c.peer },
    avatar, el('span', { class: 'conv-text' }, el('span', { class: 'conv-name mono' }, d), sub), badge);
  btn.addEventListener('click', () => select(c.peer));
  c.item = { li: el('li', {}, btn), btn, badge, sub, name: btn.querySelector('.conv-name') };
  $('#conv-list').prepend(c.item.li);
  $('#convs-empty').hidden = true;
  document.body.classList.add('has-convs');
  renderConvItem(c);
}

function renderConvItem(c) {
  if (!c.item) return;
  const { btn, badge, sub } = c.item;
  btn.classList.toggle('active', selected === c.peer);
  btn.setAttribute('aria-current', selected === c.peer ? 'true' : 'false');
  badge.hidden = !c.unread;
  badge.textContent = c.unread > 99 ? '99+' : String(c.unread);
  badge.setAttribute('aria-label', t('convs.unread', { n: c.unread }));
  sub.textContent = c.typing ? t('chat.typing', { id: '' }).replace(/^\s+/, '') : c.preview || stateText(c);
  btn.dataset.state = c.closed ? 'closed' : c.link.state;
}

function stateText(c) {
  return c.closed ? t('conn.closed') : t(`conn.${c.link.state}`);
}

function select(peer) {
  const prev = selected;
  selected = peer;
  const c = peer ? convs.get(peer) : null;
  $('#empty-state').hidden = !!c;
  $('#chat').hidden = !c;
  document.body.dataset.view = c ? 'chat' : 'home';
  if (prev && convs.get(prev)) renderConvItem(convs.get(prev));
  if (!c) return;
  c.attach($('#messages'));
  c.markRead();
  renderConvItem(c);
  renderChatHead(c);
  $('#details').hidden = true;
  $('#details-btn').setAttribute('aria-expanded', 'false');
  $('#message-input').value = c.draft || '';
  autoGrow();
  if (!matchMedia('(pointer: coarse)').matches) $('#message-input').focus();
}

function renderChatHead(c) {
  const d = displayId(c.peer);
  $('#chat-peer').textContent = d;
  $('#messages').setAttribute('aria-label', t('chat.messages_label', { id: d }));
  const state = c.closed ? 'closed' : c.link.state;
  const badge = $('#conn-state');
  badge.dataset.state = state;
  badge.textContent = c.closed ? t('conn.closed') : t(`conn.${state}`);
  const path = pathText(c);
  const pathEl = $('#path-label');
  pathEl.textContent = path.text;
  pathEl.dataset.kind = path.kind;
  const rtt = c.link.stats && c.link.stats.rtt != null && state === 'connected' ? t('conn.rtt_ms', { ms: c.link.stats.rtt }) : '';
  $('#rtt-label').textContent = rtt;
  $('#d-state').textContent = badge.textContent;
  $('#d-path').textContent = path.text || t('conn.path_unknown');
  $('#d-rtt').textContent = rtt || t('conn.path_unknown');
  $('#security-code').textContent = c.link.securityCode || '—';
  $('#security-hint').textContent = t('conn.security_hint', { id: d });
  const fail = $('#failure');
  const showFail = !c.closed && state === 'failed';
  fail.hidden = !showFail;
  if (showFail) $('#failure-text').textContent = failureText(c);
  $('#retry-btn').hidden = !c.serverPaired;
  $('#end-btn .end-label').textContent = c.closed ? t('chat.remove') : t('chat.end');
  $('#end-btn').setAttribute('aria-label', c.closed ? t('chat.remove') : t('chat.end'));
  $('#end-btn').dataset.mode = c.closed ? 'remove' : 'end';
  $('#typing').textContent = c.typing ? t('chat.typing', { id: d }) : '';
  const composerOff = c.closed;
  $('#message-input').placeholder = c.closed ? t('chat.closed') : c.link.chatOpen ? t('chat.placeholder') : t('chat.placeholder_waiting');
  $('#message-input').disabled = composerOff;
  $('#send-btn').disabled = composerOff;
  $('#file-input').disabled = composerOff || !c.link.chatOpen;
  $('.attach').classList.toggle('disabled', composerOff || !c.link.chatOpen);
}

function pathText(c) {
  const s = c.link.stats;
  if (c.closed || !s || c.link.state !== 'connected') return { kind: 'none', text: '' };
  const p = s.path;
  if (p.kind === 'relay') {
    return {
      kind: 'relay',
      text: p.side === 'local' ? t('conn.relayed', { proto: p.proto }) : t('conn.relayed_remote', { proto: p.proto, id: displayId(c.peer) }),
    };
  }
  const kind = p.local === 'host' && p.remote === 'host' ? `${t('conn.direct_host')}, host` : `${t('conn.direct_srflx')}, ${p.local === 'host' ? p.remote : p.local}`;
  return { kind: 'direct', text: t('conn.direct', { kind }) };
}

function failureText(c) {
  const d = c.link.diagnosis || { reason: 'no_turn' };
  const urls = (d.failedTurnUrls && d.failedTurnUrls.length ? d.failedTurnUrls : d.turnUrls || []).map((u) => u.replace(/\?transport=/, ' ').replace(/^turns?:/, '')).join(', ');
  return t(`fail.${d.reason}`, { id: displayId(c.peer), urls });
}

$('#back-btn').addEventListener('click', () => select(null));
$('#details-btn').addEventListener('click', () => {
  const open = $('#details').hidden;
  $('#details').hidden = !open;
  $('#details-btn').setAttribute('aria-expanded', String(open));
});
$('#retry-btn').addEventListener('click', () => {
  const c = convs.get(selected);
  if (c && !c.closed) c.link.retry(sig.session && sig.session.ice_servers);
});
$('#end-btn').addEventListener('click', () => {
  const c = convs.get(selected);
  if (!c) return;
  if (!c.closed) {
    sig.send({ type: 'bye', to: c.peer });
    c.end('chat.closed');
    return;
  }
  c.destroy();
  convs.delete(c.peer);
  c.item.li.remove();
  $('#convs-empty').hidden = convs.size > 0;
  document.body.classList.toggle('has-convs', convs.size > 0);
  select(null);
});

// ---------------------------------------------------------------- composer

const msgInput = $('#message-input');
function autoGrow() {
  msgInput.style.height = 'auto';
  msgInput.style.height = `${Math.min(msgInput.scrollHeight, 160)}px`;
}
msgInput.addEventListener('input', () => {
  autoGrow();
  const c = convs.get(selected);
  if (c) { c.draft = msgInput.value; c.userTyping(); }
});
msgInput.addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    $('#composer').requestSubmit();
  }
});
$('#composer').addEventListener('submit', (e) => {
  e.preventDefault();
  const c = convs.get(selected);
  const text = msgInput.value.trim();
  if (!c || c.closed || !text) return;
  c.sendText(text);
  msgInput.value = '';
  c.draft = '';
  autoGrow();
  msgInput.focus();
});

$('#file-input').addEventListener('change', (e) => {
  const c = convs.get(selected);
  if (c && !c.closed) for (const f of e.target.files) c.files.offer(f);
  e.target.value = '';
});

// Drag and drop a file onto the conversation.
const chatEl = $('#chat');
let dragDepth = 0;
chatEl.addEventListener('dragenter', (e) => {
  if (!e.dataTransfer || ![...e.dataTransfer.types].includes('Files')) return;
  const c = convs.get(selected);
  if (!c || c.closed) return;
  dragDepth += 1;
  $('#drop-text').textContent = t('chat.drop', { id: displayId(c.peer) });
  $('#dropzone').hidden = false;
});
chatEl.addEventListener('dragover', (e) => { if (!$('#dropzone').hidden) e.preventDefault(); });
chatEl.addEventListener('dragleave', () => { dragDepth = Math.max(0, dragDepth - 1); if (!dragDepth) $('#dropzone').hidden = true; });
chatEl.addEventListener('drop', (e) => {
  e.preventDefault();
  dragDepth = 0;
  $('#dropzone').hidden = true;
  const c = convs.get(selected);
  if (c && !c.closed && e.dataTransfer) for (const f of e.dataTransfer.files) c.files.offer(f);
});

// ---------------------------------------------------------------- page-level

document.addEventListener('visibilitychange', () => {
  const c = convs.get(selected);
  if (!document.hidden && c) { c.markRead(); renderConvItem(c); document.title = titleText(); }
});

$('#theme-toggle').addEventListener('click', () => {
  const mode = window.ponteTheme ? window.ponteTheme.cycle() : 'auto';
  $('#theme-toggle').title = t(`theme.${mode}`);
});

document.addEventListener('languagechange', () => {
  renderMe();
  renderNotifyButton();
  renderPending();
  renderServerStatus({ state: sig.state });
  for (const c of convs.values()) { c.relabel(); renderConvItem(c); }
  const c = convs.get(selected);
  if (c) renderChatHead(c);
  for (const [peer, card] of incoming) {
    card.querySelector('.request-title').textContent = t('incoming.title');
    card.querySelector(`#req-${peer}`).textContent = t('incoming.text', { id: displayId(peer) });
    card.querySelector('[data-testid=accept]').textContent = t('incoming.accept');
    card.querySelector('[data-testid=decline]').textContent = t('incoming.decline');
  }
});

// Leaving the page: tell peers, so their side shows "ended" at once instead of waiting for a timeout.
window.addEventListener('pagehide', () => {
  for (const c of convs.values()) if (!c.closed) c.link.close();
});

// For tests and the curious: a read-only peek at the state.
window.ponte = {
  get id() { return me && me.id; },
  get language() { return language(); },
  conversation: (peer) => convs.get(peer),
  signaling: sig,
};

sig.start();
