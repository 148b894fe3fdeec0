// My ID and how to hand it out: the big ID, copy buttons, the share link, its QR code, the system share sheet.
// It reads the `welcome` and tells the page who I am with the bus event `me` {id, display}.

import { $ } from './dom.js';
import { t } from './i18n.js';
import { qrSvg } from './qr.js';
import { displayId } from './signaling.js';
import { emit } from './bus.js';

/** @param {import('./signaling.js').Signaling} sig */
export function initShare(sig) {
  let me = null;
  let lasting = false; // the server bound my ID to this browser's identity key

  sig.addEventListener('welcome', (ev) => {
    const w = ev.detail;
    const changed = me && me.id !== w.id;
    const prevTab = !me && w.previousId && w.previousId !== w.id;
    me = { id: w.id, display: w.display_id || displayId(w.id) };
    lasting = !!w.identity;
    render();
    emit('me', me);
    if (changed || prevTab) emit('banner', { text: t('server.id_changed', { id: me.display }) });
  });

  const shareLink = () => (me ? `${location.origin}/#${me.id}` : '');

  // Why the ID is lasting or one-time (a plain http:// LAN address has no WebCrypto; the server refused the key).
  function identityNote() {
    if (!me) return '';
    if (lasting) return t('me.lasting');
    // Sent the key but the welcome has no identity: a server without identities (older than this page).
    const why = sig.identityRefused ? 'refused' : sig.identityUnavailable || (sig.usesIdentity ? 'server' : 'error');
    return t(`me.one_time_${why}`);
  }

  function render() {
    $('#my-id').textContent = me ? me.display : '····-····';
    const note = $('#id-note');
    note.textContent = identityNote();
    note.dataset.kind = lasting ? 'lasting' : 'one-time';
    $('#share-link').value = shareLink();
    $('#copy-id').disabled = !me;
    $('#qr-btn').disabled = !me;
    renderQr();
    $('#copy-link').disabled = !me;
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
  document.addEventListener('languagechange', render);
}
