// Requests: asking someone to talk (the connect form, the pending line, the answers and errors, share links that
// pre-fill an ID) and being asked (the incoming cards with Accept/Decline).
//
// Bus: listens to `me`, `rejoin-expected` {peer} (accept that peer's request by itself); emits `open-conversation`
// {peer}, `attention` {source:'requests', count}, `notify`.

import { $, el, avatarColor } from './dom.js';
import { t } from './i18n.js';
import { parseId, displayId } from './signaling.js';
import { emit, on } from './bus.js';
import { unlockAudio } from './notify.js';

/**
 * @param {import('./signaling.js').Signaling} sig
 * @param {{conversation: (peer:string) => import('./chat.js').Conversation|undefined,
 *   autoAccepts?: (peer:string, key?:string) => boolean, isBlocked?: (peer:string) => boolean,
 *   contactName?: (peer:string) => string|null}} o  an open conversation; the contact book's answers
 */
export function initRequests(sig, { conversation, autoAccepts = () => false, isBlocked = () => false, contactName = () => null }) {
  const incoming = new Map(); // peer id → card element
  const pendingOut = new Map(); // peer id → 'sending' | 'waiting'
  let me = null;
  let autoConnect = null; // an ID from the share link, connected to once the server welcomes us
  let lastConnectTarget = null;
  const input = $('#peer-id');
  const connectMsg = $('#connect-msg');
  const openConv = (peer) => { const c = conversation(peer); return c && !c.closed ? c : null; };

  on('me', (m) => { me = m; });
  on('connect-to', ({ peer }) => requestConnect(peer));

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

  function requestConnect(id) {
    if (me && id === me.id) { setConnectMessage(t('connect.self')); return; }
    if (openConv(id)) { setConnectMessage(t('connect.already', { id: displayId(id) })); emit('open-conversation', { peer: id }); return; }
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
    const c = openConv(ev.detail.peer);
    if (c && c.pairing.rejoinRequested) return; // a silent re-pairing, not the user's request
    pendingOut.set(ev.detail.peer, 'waiting');
    renderPending();
  });
  sig.addEventListener('request_cancelled', (ev) => endPending(ev.detail.peer, null));
  sig.addEventListener('request_timeout', (ev) => endPending(ev.detail.peer, 'connect.timeout'));
  sig.addEventListener('declined', (ev) => endPending(ev.detail.peer, 'connect.declined'));
  // Also ends a pending request of mine when its target went away for good.
  sig.addEventListener('peer_left', (ev) => { if (pendingOut.has(ev.detail.peer)) endPending(ev.detail.peer, 'connect.left'); });

  sig.addEventListener('error', (ev) => {
    const e = ev.detail;
    if (e.ref === 'rejoin') return; // the conversation's own re-pairing (conversations.js)
    const peer = e.peer || (e.ref === 'connect' ? lastConnectTarget : null);
    const keys = {
      unknown_peer: 'connect.unknown', self_connect: 'connect.self', already_paired: 'connect.already',
      duplicate_request: 'connect.duplicate', too_many_requests: 'connect.rate',
      cluster_unavailable: 'connect.cluster',
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

  sig.addEventListener('welcome', (ev) => {
    // Requests in flight died with the old session.
    if (!ev.detail.resumed) {
      pendingOut.clear();
      renderPending();
      for (const peer of [...incoming.keys()]) removeIncoming(peer);
    }
    if (autoConnect) {
      const id = autoConnect;
      autoConnect = null;
      if (id !== ev.detail.id) requestConnect(id);
    }
  });

  sig.addEventListener('paired', (ev) => {
    const { peer } = ev.detail;
    pendingOut.delete(peer);
    renderPending();
    removeIncoming(peer);
    setConnectMessage('');
    input.value = '';
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

  // ---------------------------------------------------------------- being asked

  sig.addEventListener('incoming', (ev) => {
    const peer = ev.detail.peer;
    const known = openConv(peer);
    if (known && known.pairing.autoAccepts()) { sig.send({ type: 'accept', from: peer }); return; }
    // A saved contact with its saved key, and the setting on: no card. Never for anybody else.
    if (autoAccepts(peer, ev.detail.peer_key)) { sig.send({ type: 'accept', from: peer }); return; }
    // The server refuses a blocked ID's connects; one in flight before the block is declined here.
    if (isBlocked(peer)) { sig.send({ type: 'decline', from: peer }); return; }
    if (incoming.has(peer)) return;
    const d = displayId(peer);
    const accept = el('button', { class: 'btn primary', type: 'button', 'data-testid': 'accept' }, t('incoming.accept'));
    const decline = el('button', { class: 'btn', type: 'button', 'data-testid': 'decline' }, t('incoming.decline'));
    const card = el('div', { class: 'request-card', role: 'alertdialog', 'aria-labelledby': `req-${peer}`, 'data-testid': 'incoming-request', 'data-peer': peer },
      el('div', { class: 'avatar' }, d.slice(0, 2).toUpperCase()),
      el('div', { class: 'request-body' },
        el('strong', { class: 'request-title' }, t('incoming.title')),
        el('span', { id: `req-${peer}` }, t('incoming.text', { id: contactName(peer) ? `${contactName(peer)} (${d})` : d }))),
      el('div', { class: 'request-actions' }, decline, accept));
    card.querySelector('.avatar').style.setProperty('--avatar', avatarColor(peer));
    accept.addEventListener('click', () => { sig.send({ type: 'accept', from: peer }); removeIncoming(peer); });
    decline.addEventListener('click', () => { sig.send({ type: 'decline', from: peer }); removeIncoming(peer); });
    incoming.set(peer, card);
    $('#requests').append(card);
    accept.focus();
    emit('notify', { title: t('incoming.notify_title'), body: t('incoming.notify_body', { id: d }), tag: `ponte-req-${peer}` });
    emit('attention', { source: 'requests', count: incoming.size });
  });

  function removeIncoming(peer) {
    const card = incoming.get(peer);
    if (card) card.remove();
    incoming.delete(peer);
    emit('attention', { source: 'requests', count: incoming.size });
  }

  sig.addEventListener('incoming_cancelled', (ev) => {
    const { peer, reason } = ev.detail;
    if (!incoming.has(peer)) return;
    removeIncoming(peer);
    const key = reason === 'timeout' ? 'incoming.timeout' : reason === 'left' ? 'incoming.left' : 'incoming.cancelled';
    setConnectMessage(t(key, { id: displayId(peer) }), 'info');
  });

  // The peer announced its new ID and we wait for its request: if it is already here, take it.
  on('rejoin-expected', ({ peer }) => {
    if (incoming.has(peer)) { sig.send({ type: 'accept', from: peer }); removeIncoming(peer); }
  });

  document.addEventListener('languagechange', () => {
    renderPending();
    for (const [peer, card] of incoming) {
      card.querySelector('.request-title').textContent = t('incoming.title');
      card.querySelector(`#req-${peer}`).textContent = t('incoming.text', { id: displayId(peer) });
      card.querySelector('[data-testid=accept]').textContent = t('incoming.accept');
      card.querySelector('[data-testid=decline]').textContent = t('incoming.decline');
    }
  });
}
