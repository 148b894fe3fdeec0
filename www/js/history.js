// History on the device (network side, no DOM): the messages and file cards' metadata of saved contacts, kept in
// IndexedDB (store.js, store `messages`) as chat.js reports them on the bus (`history` {rec}), unless the setting
// "keep history" is off. Strangers' chats are kept only in memory; saving a contact stores its chat so far.
// Never a file's content, only {name, size, mime}.

import { on } from './bus.js';
import { messagePut, messagesFor, messagesDelete, clearAll } from './store.js';

/** @param {import('./contactbook.js').ContactBook} book */
export function initHistory(book) {
  const keeps = (peer) => !!book.get(peer) && book.settings.keepHistory !== false;
  on('history', ({ rec }) => { if (keeps(rec.peer)) messagePut(strip(rec)); });
  return {
    keeps,
    /** Stored messages with `peer`, oldest first ([] when not kept). */
    load: (peer) => (keeps(peer) ? messagesFor(peer) : Promise.resolve([])),
    /** Store a whole conversation (when its peer was just saved as a contact). */
    storeAll: async (recs) => { for (const r of recs) if (keeps(r.peer)) await messagePut(strip(r)); },
    deleteConversation: (peer) => messagesDelete(peer),
    /** Contacts, history, blocks and settings; the identity (and so the ID) stays. */
    clearEverything: () => clearAll(),
  };
}

function strip(r) {
  const out = { peer: r.peer, mid: r.mid, from: r.from, ts: r.ts, status: r.status || null };
  if (r.file) out.file = { name: String(r.file.name), size: Number(r.file.size) || 0, mime: String(r.file.mime || '') };
  else out.text = String(r.text ?? '');
  return out;
}
