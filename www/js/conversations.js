// The conversations: one Conversation (chat.js) with its PeerLink per peer, the list in the sidebar, which one is
// open, and everything the server says about pairings (paired, tickets, signals, peers away/back/left, restarts
// and re-pairing). The Conversation owns its pairing state; this module only asks it and calls its methods.
//
// Bus: listens to `conversation-changed`, `conversation-renamed`, `message-arrived`, `peer-rejoin`,
// `open-conversation` {peer}, `open-history` {peer}; emits `history-view` {conv}, `conversation-selected` {conv|null}, `rejoin-expected` {peer}, `attention`
// {source:'unread', count}, `notify`.

import { $, el, avatarColor } from './dom.js';
import { t } from './i18n.js';
import { parseId, displayId } from './signaling.js';
import { PeerLink } from './peer.js';
import { Conversation } from './chat.js';
import { emit, on } from './bus.js';
import { renderChatHead, setDetailsOpen, initChatHead } from './chathead.js';

/**
 * @param {import('./signaling.js').Signaling} sig
 * @param {{nameOf?: (peer:string) => string|null}} [o]  a saved contact's name (the list shows it instead of the ID)
 */
export function initConversations(sig, { nameOf = () => null } = {}) {
  const convs = new Map(); // peer id → Conversation
  const items = new Map(); // Conversation → its sidebar item
  let selected = null; // the open Conversation
  let myId = null;
  const iceServers = () => (sig.session && sig.session.ice_servers) || [];
  const open = (peer) => { const c = convs.get(peer); return c && !c.closed ? c : null; };

  initChatHead();

  // ---------------------------------------------------------------- the server session

  sig.addEventListener('welcome', (ev) => {
    const w = ev.detail;
    const changed = myId && myId !== w.id;
    myId = w.id;
    const alive = new Set(w.peers || []);
    for (const peer of alive) {
      if (!open(peer)) sig.send({ type: 'bye', to: peer }); // a pairing this page no longer has (reload)
    }
    for (const c of convs.values()) {
      if (c.closed) continue;
      c.pairing.welcomed(alive.has(c.peer));
      c.link.iceServers = w.ice_servers || [];
      if (c.serverPaired && c.link.state !== 'connected') c.link.retry(w.ice_servers);
    }
    // After a server restart the pairings are gone. With my ID restored (the server kept its signing key), each
    // conversation is re-paired by presenting its ticket; both sides do, so neither needs a click, and the links
    // then restart ICE with the new ICE servers (a relayed path died with the server's TURN allocations).
    if (w.restored) {
      for (const c of convs.values()) {
        const ticket = c.closed ? null : c.pairing.ticketToPresent();
        if (ticket) sig.send({ type: 'rejoin', to: c.peer, ticket });
      }
    }
    // My ID changed (the server has no lasting key), but direct chats still run: tell each peer my new ID over the
    // chat channel so the pairing can be re-made (needed for ICE restarts later).
    if (!w.resumed && changed) {
      for (const c of convs.values()) {
        if (!c.closed && !c.serverPaired) c.link.send({ t: 'rejoin', id: myId });
      }
    }
    for (const c of convs.values()) tryRejoin(c);
    scheduleIceRefresh(w.ice_expires);
  });

  // TURN credentials expire (ice_expires): fetch fresh ones a minute before, for ICE restarts of open chats.
  let iceRefreshTimer = 0;
  function scheduleIceRefresh(expires) {
    clearTimeout(iceRefreshTimer);
    if (!Number.isFinite(expires) || expires <= 0) return;
    const ms = Math.max(10000, Math.min(expires * 1000 - Date.now() - 60000, 2 ** 31 - 1));
    iceRefreshTimer = setTimeout(() => sig.send({ type: 'refresh_ice' }), ms);
  }
  sig.addEventListener('ice_servers', (ev) => {
    if (sig.session) {
      sig.session.ice_servers = ev.detail.ice_servers;
      sig.session.ice_expires = ev.detail.ice_expires;
    }
    for (const c of convs.values()) if (!c.closed) c.link.iceServers = ev.detail.ice_servers || [];
    scheduleIceRefresh(ev.detail.ice_expires);
  });

  // ---------------------------------------------------------------- pairings

  sig.addEventListener('paired', (ev) => {
    const { peer, initiator, ticket } = ev.detail;
    const old = convs.get(peer);
    if (old && !old.closed) {
      const restored = old.pairing.paired(ticket);
      if (restored && old.link.state !== 'connected') old.system('chat.rejoined', { id: displayId(peer) });
      old.link.resume(sig.session && sig.session.ice_servers);
      changed(old);
      return;
    }
    if (old) remove(old);
    let conv = null;
    const link = new PeerLink({
      peer,
      initiator,
      iceServers: iceServers(),
      signal: (data) => sig.send({ type: 'signal', to: conv ? conv.peer : peer, data }),
      canSignal: () => sig.isOpen && (!conv || conv.serverPaired),
    });
    conv = new Conversation({ peer, link, ticket });
    convs.set(peer, conv);
    addItem(conv);
    select(conv);
  });

  // Renewed token (kept by signaling.js) and tickets: what lets a long chat re-pair after a restart.
  sig.addEventListener('tokens', (ev) => {
    for (const { peer, ticket } of ev.detail.tickets || []) {
      const c = open(peer);
      if (c) c.pairing.setTicket(ticket);
    }
  });

  sig.addEventListener('signal', (ev) => {
    const c = open(ev.detail.from);
    if (c) c.link.onSignal(ev.detail.data);
  });

  sig.addEventListener('peer_away', (ev) => {
    const c = open(ev.detail.peer);
    if (c) c.system('chat.peer_away', { id: displayId(c.peer) });
  });
  sig.addEventListener('peer_back', (ev) => {
    const c = open(ev.detail.peer);
    if (!c) return;
    c.system('chat.peer_back', { id: displayId(c.peer) });
    // Signals sent while it was away were refused (error peer_away): restart ICE if the path is not up.
    if (c.link.state !== 'connected') c.link.retry(sig.session && sig.session.ice_servers);
  });
  sig.addEventListener('peer_left', (ev) => {
    const c = open(ev.detail.peer);
    if (c) c.end(ev.detail.reason === 'bye' ? 'chat.peer_left' : 'chat.peer_disconnected', { id: displayId(c.peer) });
  });

  sig.addEventListener('error', (ev) => {
    const e = ev.detail;
    if (e.ref !== 'rejoin') return;
    // A ticket that no longer works (too old): fall back to telling the peer over the chat channel, if it is
    // still open, so that the two re-pair the old way (the initiator asks, the other side accepts by itself).
    const c = e.peer && open(e.peer);
    if (c && e.code === 'bad_ticket') {
      c.pairing.dropTicket();
      if (c.link.send({ t: 'rejoin', id: myId })) { c.pairing.expectRejoinByRequest(); tryRejoin(c); }
    }
  });

  /** The peer told us (over the chat channel) its new ID after a server restart. */
  on('peer-rejoin', ({ conv: c, id: raw }) => {
    const { id } = parseId(raw);
    if (!id || c.closed || id === myId) return;
    if (id === c.peer && c.serverPaired) return; // already re-paired (by ticket)
    if (id !== c.peer) {
      if (convs.get(c.peer) === c) convs.delete(c.peer);
      c.renamePeer(id);
      convs.set(id, c);
    }
    // The announcement itself says the old pairing is gone (our own welcome may simply not have arrived yet).
    c.pairing.expectRejoinByRequest();
    emit('rejoin-expected', { peer: id });
    tryRejoin(c);
    changed(c);
  });

  /** The original initiator re-makes the pairing once it is online and knows the peer's new ID. */
  function tryRejoin(c) {
    if (c.closed || !c.pairing.shouldRequest(sig.isOpen)) return;
    c.pairing.requested();
    sig.send({ type: 'connect', to: c.peer });
  }

  // ---------------------------------------------------------------- the list and the open conversation

  function changed(c) {
    renderItem(c);
    if (selected === c) renderChatHead(c);
    emit('attention', { source: 'unread', count: [...convs.values()].reduce((n, x) => n + x.unread, 0) });
  }
  on('conversation-changed', ({ conv }) => changed(conv));
  on('conversation-renamed', ({ conv }) => {
    const item = items.get(conv);
    if (item) {
      item.btn.dataset.peer = conv.peer;
      labelName(item.name, conv.peer);
    }
  });
  // A contact saved, renamed or removed: the list names follow.
  on('contacts-changed', () => {
    for (const [c, item] of items) labelName(item.name, c.peer);
  });
  function labelName(node, peer) {
    const name = nameOf(peer);
    node.textContent = name || displayId(peer);
    node.classList.toggle('mono', !name); // an ID in the ID font, a name in the text font
  }
  on('message-arrived', ({ conv, text }) => {
    if (!conv.visible) emit('notify', { title: `ponte: ${displayId(conv.peer)}`, body: text.slice(0, 140), tag: `ponte-msg-${conv.peer}` });
  });
  on('open-conversation', ({ peer }) => { const c = convs.get(peer); if (c) select(c); });
  // A saved contact that is offline: open its stored history (an ended conversation; contacts.js fills it and lets
  // messages be written, to be delivered when both are online again).
  on('open-history', ({ peer }) => {
    let c = convs.get(peer);
    if (!c) {
      const link = new PeerLink({ peer, initiator: false, iceServers: [], signal: () => {}, canSignal: () => false });
      c = new Conversation({ peer, link, ticket: null });
      c.end('history.offline', { id: displayId(peer) });
      convs.set(peer, c);
      addItem(c);
      emit('history-view', { conv: c });
    }
    select(c);
  });

  function addItem(c) {
    const d = displayId(c.peer);
    const avatar = el('span', { class: 'avatar', 'aria-hidden': 'true' }, d.slice(0, 2).toUpperCase());
    avatar.style.setProperty('--avatar', avatarColor(c.peer));
    const badge = el('span', { class: 'badge', 'data-testid': 'unread', hidden: '' });
    const sub = el('span', { class: 'conv-sub muted small' });
    const btn = el('button', { type: 'button', class: 'conv-item', 'data-testid': 'conversation', 'data-peer': c.peer },
      avatar, el('span', { class: 'conv-text' }, el('span', { class: 'conv-name' }), sub), badge);
    btn.addEventListener('click', () => select(c));
    const item = { li: el('li', {}, btn), btn, badge, sub, name: btn.querySelector('.conv-name') };
    labelName(item.name, c.peer);
    items.set(c, item);
    $('#conv-list').prepend(item.li);
    $('#convs-empty').hidden = true;
    document.body.classList.add('has-convs');
    renderItem(c);
  }

  function renderItem(c) {
    const item = items.get(c);
    if (!item) return;
    const { btn, badge, sub } = item;
    btn.classList.toggle('active', selected === c);
    btn.setAttribute('aria-current', selected === c ? 'true' : 'false');
    badge.hidden = !c.unread;
    badge.textContent = c.unread > 99 ? '99+' : String(c.unread);
    badge.setAttribute('aria-label', t('convs.unread', { n: c.unread }));
    sub.textContent = c.typing ? t('chat.typing', { id: '' }).replace(/^\s+/, '') : c.preview || (c.closed ? t('conn.closed') : t(`conn.${c.link.state}`));
    btn.dataset.state = c.closed ? 'closed' : c.link.state;
  }

  function remove(c) {
    c.destroy();
    if (convs.get(c.peer) === c) convs.delete(c.peer);
    const item = items.get(c);
    if (item) item.li.remove();
    items.delete(c);
    $('#convs-empty').hidden = convs.size > 0;
    document.body.classList.toggle('has-convs', convs.size > 0);
  }

  function select(c) {
    const prev = selected;
    selected = c || null;
    if (prev) { prev.shown = false; renderItem(prev); }
    $('#empty-state').hidden = !!c;
    $('#chat').hidden = !c;
    document.body.dataset.view = c ? 'chat' : 'home';
    if (c) {
      c.shown = true;
      c.attach($('#messages'));
      c.markRead();
      renderItem(c);
      renderChatHead(c);
      setDetailsOpen(false);
    }
    emit('conversation-selected', { conv: selected });
    emit('attention', { source: 'unread', count: [...convs.values()].reduce((n, x) => n + x.unread, 0) });
  }

  $('#back-btn').addEventListener('click', () => select(null));
  $('#retry-btn').addEventListener('click', () => {
    if (selected && !selected.closed) selected.link.retry(sig.session && sig.session.ice_servers);
  });
  $('#end-btn').addEventListener('click', () => {
    const c = selected;
    if (!c) return;
    if (!c.closed) {
      sig.send({ type: 'bye', to: c.peer });
      c.end('chat.closed');
      return;
    }
    remove(c);
    select(null);
  });

  document.addEventListener('visibilitychange', () => {
    if (!document.hidden && selected) { selected.markRead(); changed(selected); }
  });
  document.addEventListener('languagechange', () => {
    for (const c of convs.values()) { c.relabel(); renderItem(c); }
    if (selected) renderChatHead(selected);
  });
  // Leaving the page: tell peers, so their side shows "ended" at once instead of waiting for a timeout.
  window.addEventListener('pagehide', () => {
    for (const c of convs.values()) if (!c.closed) c.link.close();
  });

  return {
    /** The conversation with `peer`, open or ended. */
    get: (peer) => convs.get(peer),
    /** The open one, or null. */
    current: () => selected,
    /** Whether some chat still has a working path (the offline line says so). */
    liveChats: () => [...convs.values()].some((c) => !c.closed && c.link.state === 'connected'),
  };
}
