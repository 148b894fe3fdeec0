// Keys verified once (UI): the stable security code of two identities, the binding of every connection's DTLS
// fingerprints to the identity keys, and "mark as verified" for a contact.
//
// On the chat channel each side sends {t:"id-bind", key, sig}: its identity key and a signature over
// bindingBytes(my fingerprint, the one I see for you) (identity.js). The receiver checks that `key` is the key the
// server stated for the peer (`paired.peer_key`) and that the signature verifies over (the fingerprint it sees for
// the peer, its own). A failure means the encrypted channel does not end at the person the key belongs to: a loud
// warning, never silent. The security code shown is then the code of the two keys (the same on every connection),
// so comparing it once is enough; a contact marked verified stays so until its key changes.
//
// Bus: listens to `chat-opened` {conv}, `peer-binding` {conv, msg}, `conversation-selected`, `conversation-changed`;
// emits `banner`.

import { $ } from './dom.js';
import { t } from './i18n.js';
import { displayId } from './signaling.js';
import { fingerprint } from './peer.js';
import { bindingBytes, safetyCode, verify } from './identity.js';
import { emit, on } from './bus.js';

/**
 * @param {import('./signaling.js').Signaling} sig
 * @param {import('./contactbook.js').ContactBook} book
 * @param {{conversation: (peer:string) => any}} o
 */
export function initVerify(sig, book, { conversation }) {
  let current = null;
  const myKey = () => (sig.session && sig.session.identity && sig.identity ? sig.identity.key : null);
  const fps = (c) => {
    const pc = c.link.pc;
    return {
      local: pc && pc.localDescription && fingerprint(pc.localDescription.sdp),
      remote: pc && pc.remoteDescription && fingerprint(pc.remoteDescription.sdp),
    };
  };

  sig.addEventListener('paired', async (ev) => {
    const { peer, peer_key: key } = ev.detail;
    const c = conversation(peer);
    const mine = myKey();
    if (c && mine && key) c.setSafetyCode(await safetyCode(mine, key));
  });

  on('chat-opened', async ({ conv: c }) => {
    const mine = myKey();
    const { local, remote } = fps(c);
    if (!mine || !local || !remote) return;
    try {
      c.link.send({ t: 'id-bind', key: mine, sig: await sig.identity.sign(bindingBytes(local, remote)) });
    } catch (e) { console.warn('ponte: cannot sign the binding', e); }
  });

  on('peer-binding', async ({ conv: c, msg }) => {
    if (!c.peerKey) return; // the server knows no key for this peer: nothing to bind it to
    const { local, remote } = fps(c);
    const ok = !!local && !!remote && msg.key === c.peerKey
      && await verify(c.peerKey, String(msg.sig || ''), bindingBytes(remote, local));
    if (c.binding === (ok ? 'ok' : 'mismatch')) return;
    c.setBinding(ok ? 'ok' : 'mismatch');
    if (!ok) {
      const name = book.get(c.peer) ? book.get(c.peer).name : displayId(c.peer);
      c.system('verify.mismatch', { name }, 'warning');
      emit('banner', { text: t('verify.mismatch', { name }) });
    }
  });

  function render() {
    const c = current;
    const box = $('#verify-box');
    box.hidden = !c || !c.safetyCode;
    if (box.hidden) return;
    const saved = book.get(c.peer);
    const verified = !!saved && saved.verified && saved.verifiedKey === c.peerKey;
    const state = c.binding === 'mismatch' ? 'mismatch' : verified ? 'verified' : 'unverified';
    const line = $('#verify-state');
    line.dataset.state = state;
    line.textContent = t(`verify.state_${state}`);
    const btn = $('#mark-verified');
    btn.hidden = !saved || state === 'mismatch';
    btn.textContent = verified ? t('verify.unmark') : t('verify.mark');
    btn.dataset.verified = String(verified);
    $('#verify-save-first').hidden = !!saved;
  }

  $('#mark-verified').addEventListener('click', () => {
    const c = current;
    if (!c || !book.get(c.peer)) return;
    const verified = $('#mark-verified').dataset.verified === 'true';
    book.setVerified(c.peer, !verified).then(() => c.system(verified ? 'verify.unmarked' : 'verify.marked', { name: book.get(c.peer).name }));
  });

  on('conversation-selected', ({ conv }) => { current = conv; render(); });
  on('conversation-changed', ({ conv }) => { if (conv === current) render(); });
  book.addEventListener('change', render);
  document.addEventListener('languagechange', render);
}
