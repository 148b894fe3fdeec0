// The contact book (network side, no DOM): saved contacts in IndexedDB (store.js) and what the server says about
// them (docs/protocol.md, "Contacts, consent and presence"). The device's list is the truth; the server holds a
// copy of the consents, for presence only, and never a name. At every welcome of an identity session the copy is
// reconciled (contact_add / contact_remove / block / unblock for what differs).
//
// Events: `change` (the list, presence or settings changed).

import { contactsAll, contactPut, contactDelete, kvGet, kvSet } from './store.js';

const DEFAULT_SETTINGS = { autoAccept: false, keepHistory: true };
export const MAX_NAME = 64;

export class ContactBook extends EventTarget {
  /** @param {import('./signaling.js').Signaling} sig */
  constructor(sig) {
    super();
    this.sig = sig;
    this.contacts = new Map(); // id → {id, name, key, verified, verifiedKey, added}
    this.blocked = new Set();
    this.presence = new Map(); // id → {mutual, online}
    this.forgotten = new Set(); // saved contacts the server no longer knows (not_identity)
    this.settings = { ...DEFAULT_SETTINGS };
    this.identity = false; // the current session is an identity session
    sig.addEventListener('welcome', (ev) => this.onWelcome(ev.detail));
    sig.addEventListener('presence', (ev) => {
      const { peer, online } = ev.detail;
      const p = this.presence.get(peer) || { mutual: true, online: false };
      // `online:false` also comes when the consent stopped being mutual: it then just shows offline.
      this.presence.set(peer, { ...p, online: !!online });
      this.changed();
    });
    sig.addEventListener('contact', (ev) => {
      const { peer, mutual, online } = ev.detail;
      this.presence.set(peer, { mutual: !!mutual, online: !!online });
      this.changed();
    });
    // A saved contact's identity was forgotten by the server (unused for months): it cannot come online under that
    // ID any more. Shown on the contact; the contact itself stays until the user removes it.
    sig.addEventListener('error', (ev) => {
      const e = ev.detail;
      if (e.code === 'not_identity' && e.ref === 'contact_add' && e.peer && this.contacts.has(e.peer)) {
        this.forgotten.add(e.peer);
        this.changed();
      }
    });
    sig.addEventListener('state', (ev) => {
      if (ev.detail.state !== 'open') { for (const p of this.presence.values()) p.online = false; this.changed(); }
    });
  }

  async load() {
    for (const c of await contactsAll()) this.contacts.set(c.id, c);
    const b = await kvGet('blocked');
    if (Array.isArray(b)) this.blocked = new Set(b);
    const s = await kvGet('settings');
    if (s && typeof s === 'object') this.settings = { ...DEFAULT_SETTINGS, ...s };
  }

  changed() {
    this.dispatchEvent(new CustomEvent('change'));
  }

  onWelcome(w) {
    this.identity = !!w.identity;
    this.presence.clear();
    if (!this.identity) { this.changed(); return; }
    const server = new Map((w.contacts || []).map((c) => [c.peer, c]));
    for (const [peer, c] of server) {
      if (this.contacts.has(peer)) this.presence.set(peer, { mutual: !!c.mutual, online: !!c.online });
      else this.sig.send({ type: 'contact_remove', id: peer });
    }
    for (const id of this.contacts.keys()) if (!server.has(id)) this.sig.send({ type: 'contact_add', id });
    const serverBlocked = new Set(w.blocked || []);
    for (const id of serverBlocked) if (!this.blocked.has(id)) this.sig.send({ type: 'unblock', id });
    for (const id of this.blocked) if (!serverBlocked.has(id)) this.sig.send({ type: 'block', id });
    this.changed();
  }

  /** Saved contacts, by name. */
  list() {
    return [...this.contacts.values()].sort((a, b) => a.name.localeCompare(b.name) || a.id.localeCompare(b.id));
  }

  get(id) { return this.contacts.get(id); }

  isOnline(id) { return !!this.presence.get(id)?.online; }

  isMutual(id) { return !!this.presence.get(id)?.mutual; }

  isForgotten(id) { return this.forgotten.has(id); }

  async save(id, name, key) {
    const old = this.contacts.get(id);
    const c = { verified: false, verifiedKey: null, added: Date.now(), ...old, id, name: cleanName(name) || id, key: key || (old && old.key) || null };
    this.contacts.set(id, c);
    this.blocked.delete(id); // contact_add lifts a block on the server too
    await contactPut(c);
    await kvSet('blocked', [...this.blocked]);
    if (this.identity) this.sig.send({ type: 'contact_add', id });
    this.changed();
    return c;
  }

  async rename(id, name) {
    const c = this.contacts.get(id);
    if (!c) return;
    c.name = cleanName(name) || c.name;
    await contactPut(c);
    this.changed();
  }

  async remove(id) {
    this.contacts.delete(id);
    this.presence.delete(id);
    await contactDelete(id);
    if (this.identity) this.sig.send({ type: 'contact_remove', id });
    this.changed();
  }

  async block(id) {
    this.contacts.delete(id);
    this.presence.delete(id);
    this.blocked.add(id);
    await contactDelete(id);
    await kvSet('blocked', [...this.blocked]);
    if (this.identity) this.sig.send({ type: 'block', id });
    this.changed();
  }

  async unblock(id) {
    this.blocked.delete(id);
    await kvSet('blocked', [...this.blocked]);
    if (this.identity) this.sig.send({ type: 'unblock', id });
    this.changed();
  }

  isBlocked(id) { return this.blocked.has(id); }

  /**
   * What the server's `peer_key` means for a saved contact: 'stranger' (not saved), 'same', 'changed' (a different
   * key than the one saved: never accepted silently), 'anonymous' (the peer has no identity now), 'new' (saved
   * without a key).
   */
  keyStatus(id, peerKey) {
    const c = this.contacts.get(id);
    if (!c) return 'stranger';
    if (!peerKey) return 'anonymous';
    if (!c.key) return 'new';
    return c.key === peerKey ? 'same' : 'changed';
  }

  /** Auto-accept only a saved contact presenting its saved key, and only with the setting on. */
  autoAccepts(id, peerKey) {
    return !!this.settings.autoAccept && this.keyStatus(id, peerKey) === 'same';
  }

  /** The contact's key changed: take the new one (after the user saw the warning), no longer verified. */
  async acceptNewKey(id, key) {
    const c = this.contacts.get(id);
    if (!c) return;
    c.key = key;
    c.verified = false;
    c.verifiedKey = null;
    await contactPut(c);
    this.changed();
  }

  async setVerified(id, verified) {
    const c = this.contacts.get(id);
    if (!c) return;
    c.verified = !!verified;
    c.verifiedKey = verified ? c.key : null;
    await contactPut(c);
    this.changed();
  }

  async setSetting(k, v) {
    this.settings = { ...this.settings, [k]: v };
    await kvSet('settings', this.settings);
    this.changed();
  }
}

/** A contact name as typed: trimmed, control characters out, at most MAX_NAME characters. */
export function cleanName(name) {
  // eslint-disable-next-line no-control-regex
  return [...String(name || '').replace(/[\u0000-\u001f\u007f]/g, ' ').trim()].slice(0, MAX_NAME).join('');
}
