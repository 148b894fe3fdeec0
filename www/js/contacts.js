// Contacts (UI): the sidebar list (name, ID, online dot; one click connects or opens the chat), rename / remove / block /
// delete conversation (each asked in an in-page dialog, dialog.js), the "save contact" button of the open
// conversation, the auto-accept setting, "clear everything", and the warning when a contact's identity key changed.
// The state lives in the ContactBook (contactbook.js, network side).
//
// Bus: listens to `conversation-selected`, `conversation-changed`, `me`; emits `connect-to` {peer} (requests.js
// asks), `open-conversation` {peer}, `open-history` {peer}, `contacts-changed` {}, `banner`.

import { $, el, avatarColor } from './dom.js';
import { t } from './i18n.js';
import { displayId } from './signaling.js';
import { emit, on } from './bus.js';
import { askName, confirmAction } from './dialog.js';

/**
 * @param {import('./signaling.js').Signaling} sig
 * @param {import('./contactbook.js').ContactBook} book
 * @param {{conversation: (peer:string) => any, history: ReturnType<typeof import('./history.js').initHistory>}} o
 */
export function initContacts(sig, book, { conversation, history }) {
  let current = null; // the open conversation
  const list = $('#contact-list');
  const openConv = (peer) => { const c = conversation(peer); return c && !c.closed ? c : null; };

  function render() {
    const items = book.list().map((c) => {
      const online = book.isOnline(c.id);
      const d = displayId(c.id);
      const avatar = el('span', { class: 'avatar', 'aria-hidden': 'true' }, [...c.name][0] ? [...c.name][0].toUpperCase() : '?');
      avatar.style.setProperty('--avatar', avatarColor(c.id));
      const dot = el('span', { class: 'presence-dot', 'aria-hidden': 'true' });
      const sub = online ? t('contacts.online') : book.isForgotten(c.id) ? t('contacts.forgotten')
        : book.isMutual(c.id) || !book.identity ? t('contacts.offline') : t('contacts.not_mutual');
      const main = el('button', { type: 'button', class: 'contact-main', 'data-testid': 'contact-connect', title: online ? t('contacts.connect_title', { name: c.name }) : sub },
        avatar, dot,
        el('span', { class: 'conv-text' },
          el('span', { class: 'conv-name', 'data-testid': 'contact-name' }, c.name),
          el('span', { class: 'conv-sub muted small' }, `${d} · ${sub}`)));
      main.addEventListener('click', () => {
        if (openConv(c.id)) emit('open-conversation', { peer: c.id });
        else if (online) emit('connect-to', { peer: c.id });
        else emit('open-history', { peer: c.id });
      });
      const menu = el('details', { class: 'contact-menu' },
        el('summary', { class: 'icon-btn small', 'data-testid': 'contact-menu', 'aria-label': t('contacts.menu', { name: c.name }), title: t('contacts.menu', { name: c.name }) }, '⋯'),
        el('div', { class: 'menu' },
          action('contact-rename', t('contacts.rename'), async () => {
            const name = await askName(t('contacts.rename_title'), t('contacts.rename_prompt', { id: d }), c.name);
            if (name != null) book.rename(c.id, name);
          }),
          action('contact-remove', t('contacts.remove'), async () => {
            if (!await confirmAction(t('contacts.remove_confirm', { name: c.name }), t('contacts.remove'))) return;
            history.deleteConversation(c.id);
            book.remove(c.id);
          }),
          action('contact-delete-history', t('history.delete'), async () => {
            if (await confirmAction(t('history.delete_confirm', { name: c.name }), t('dialog.delete'))) history.deleteConversation(c.id);
          }),
          action('contact-block', t('contacts.block'), async () => {
            if (!await confirmAction(t('contacts.block_confirm', { name: c.name }), t('contacts.block'))) return;
            // A block does not end a live pairing by itself: end it here.
            if (openConv(c.id)) sig.send({ type: 'bye', to: c.id });
            history.deleteConversation(c.id);
            book.block(c.id);
          })));
      const li = el('li', { class: 'contact-item', 'data-testid': 'contact', 'data-peer': c.id, 'data-online': String(online), 'data-verified': String(!!c.verified) }, main, menu);
      if (c.verified) main.querySelector('.conv-name').append(el('span', { class: 'verified-mark', title: t('verify.verified') }, ' ✓'));
      return li;
    });
    list.replaceChildren(...items);
    $('#contacts-empty').hidden = items.length > 0;
    // Blocked IDs, each with "unblock" (a block is kept on the device and, for presence and requests, by the server).
    const blocked = [...book.blocked].sort();
    $('#blocked-box').hidden = !blocked.length;
    $('#blocked-summary').textContent = t('contacts.blocked_title', { n: blocked.length });
    $('#blocked-list').replaceChildren(...blocked.map((id) => {
      const b = el('button', { type: 'button', class: 'link-btn small', 'data-testid': 'unblock' }, t('contacts.unblock'));
      b.addEventListener('click', () => book.unblock(id));
      return el('li', { 'data-testid': 'blocked', 'data-peer': id }, el('span', { class: 'mono' }, displayId(id)), ' ', b);
    }));
    $('#auto-accept').checked = !!book.settings.autoAccept;
    $('#keep-history').checked = book.settings.keepHistory !== false;
    renderSave();
  }

  function action(testid, label, run) {
    const b = el('button', { type: 'button', class: 'menu-item', 'data-testid': testid }, label);
    b.addEventListener('click', (e) => { e.target.closest('details').open = false; run(); });
    return b;
  }

  // "Save contact" for the open conversation: only with a peer that has an identity (its key came with `paired`).
  function renderSave() {
    const btn = $('#save-contact');
    const c = current;
    const saved = c && book.get(c.peer);
    btn.hidden = !c || !c.peerKey || !!saved || !book.identity;
    $('#chat-contact-name').textContent = saved ? saved.name : '';
  }

  $('#save-contact').addEventListener('click', async () => {
    const c = current;
    if (!c || !c.peerKey) return;
    const name = await askName(t('contacts.save'), t('contacts.save_prompt', { id: displayId(c.peer) }), '');
    if (name == null) return;
    book.save(c.peer, name || displayId(c.peer), c.peerKey).then(async () => {
      c.system('contacts.saved', { name: book.get(c.peer).name });
      await history.storeAll([...c.records.values()]);
      c.setOfflineQueue(history.keeps(c.peer));
    });
  });

  $('#auto-accept').addEventListener('change', (e) => book.setSetting('autoAccept', e.target.checked));
  $('#keep-history').addEventListener('change', (e) => book.setSetting('keepHistory', e.target.checked));
  $('#clear-all').addEventListener('click', async () => {
    if (!await confirmAction(t('history.clear_all_confirm'), t('dialog.clear'))) return;
    await history.clearEverything();
    for (const c of book.list()) await book.remove(c.id);
    for (const id of [...book.blocked]) await book.unblock(id);
    location.reload();
  });

  /** A conversation with a saved contact shows what the device kept, and may queue messages while it is offline. */
  async function withHistory(c) {
    c.setOfflineQueue(history.keeps(c.peer));
    const recs = await history.load(c.peer);
    if (recs.length) c.loadHistory(recs);
  }
  on('history-view', ({ conv }) => withHistory(conv));

  // The server's statement of the peer's key, checked against the saved one. A change is never accepted silently.
  sig.addEventListener('paired', (ev) => {
    const { peer, peer_key: key } = ev.detail;
    const c = conversation(peer);
    if (!c) return;
    c.peerKey = key || null;
    const status = book.keyStatus(peer, key);
    const saved = book.get(peer);
    if (status === 'changed') {
      c.keyWarning = true;
      c.system('contacts.key_changed', { name: saved.name }, 'warning');
      emit('banner', {
        text: t('contacts.key_changed', { name: saved.name }),
        action: t('contacts.key_accept'),
        run: () => { book.acceptNewKey(peer, key); c.keyWarning = false; c.system('contacts.key_accepted', { name: saved.name }); },
      });
    } else if (status === 'anonymous') {
      c.system('contacts.key_missing', { name: saved.name }, 'warning');
    } else if (status === 'new' && key) {
      book.acceptNewKey(peer, key);
    }
    if (status !== 'stranger') withHistory(c);
    renderSave();
  });

  on('conversation-selected', ({ conv }) => { current = conv; renderSave(); });
  on('conversation-changed', ({ conv }) => { if (conv === current) renderSave(); });
  book.addEventListener('change', () => { render(); emit('contacts-changed', {}); });
  document.addEventListener('languagechange', render);
  render();
  emit('contacts-changed', {});
}
