// The device's storage for lasting things, in IndexedDB (database `ponte`): the identity key pair, contacts,
// message history and settings. Nothing here ever leaves the device; the server sees only what signaling sends.
// docs/web-client.md describes the layout. Every function resolves to null/[] (never throws) when IndexedDB is
// missing or refuses (some private windows), so the page falls back to a one-time identity and no history.
//
// Object stores (version 1):
//   kv        key → value      'identity' {keyPair, key, created}, 'settings' {autoAccept, keepHistory}
//   contacts  keyPath 'id'     {id, name, key, verified, verifiedKey, added}
//   messages  autoIncrement    {peer, mid, from:'me'|'peer', text, ts, status, file?} (index 'peer')

const DB_NAME = 'ponte';
const VERSION = 1;
let dbPromise = null;

function req2p(r) {
  return new Promise((resolve, reject) => {
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });
}

/** The open database, or null when the browser has no usable IndexedDB. */
export function openStore() {
  if (dbPromise) return dbPromise;
  dbPromise = new Promise((resolve) => {
    let r;
    try {
      if (typeof indexedDB === 'undefined') { resolve(null); return; }
      r = indexedDB.open(DB_NAME, VERSION);
    } catch { resolve(null); return; }
    r.onupgradeneeded = () => {
      const db = r.result;
      if (!db.objectStoreNames.contains('kv')) db.createObjectStore('kv');
      if (!db.objectStoreNames.contains('contacts')) db.createObjectStore('contacts', { keyPath: 'id' });
      if (!db.objectStoreNames.contains('messages')) {
        const s = db.createObjectStore('messages', { autoIncrement: true });
        s.createIndex('peer', 'peer');
        s.createIndex('peer_mid', ['peer', 'mid'], { unique: true });
      }
    };
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => resolve(null);
    r.onblocked = () => resolve(null);
  });
  return dbPromise;
}

async function run(storeName, mode, fn, fallback) {
  const db = await openStore();
  if (!db) return fallback;
  try {
    const tx = db.transaction(storeName, mode);
    const result = await fn(tx.objectStore(storeName));
    await new Promise((resolve, reject) => {
      tx.oncomplete = resolve;
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error);
    });
    return result;
  } catch (e) {
    console.warn('ponte: storage', e);
    return fallback;
  }
}

export const kvGet = (k) => run('kv', 'readonly', (s) => req2p(s.get(k)), null);
export const kvSet = (k, v) => run('kv', 'readwrite', (s) => req2p(s.put(v, k)), null);
/** Store `v` under `k` only if nothing is there yet (two tabs making an identity at once: the first one wins). */
export const kvAdd = (k, v) => run('kv', 'readwrite', (s) => req2p(s.add(v, k)), null);

export const contactsAll = () => run('contacts', 'readonly', (s) => req2p(s.getAll()), []);
export const contactPut = (c) => run('contacts', 'readwrite', (s) => req2p(s.put(c)), null);
export const contactDelete = (id) => run('contacts', 'readwrite', (s) => req2p(s.delete(id)), null);

/** The stored messages with `peer`, oldest first. */
export const messagesFor = (peer) => run('messages', 'readonly', (s) => req2p(s.index('peer').getAll(peer)), [])
  .then((list) => list.sort((a, b) => a.ts - b.ts));

/** Add or update (by peer and mid) one message. */
export const messagePut = (m) => run('messages', 'readwrite', async (s) => {
  const key = await req2p(s.index('peer_mid').getKey([m.peer, m.mid]));
  return req2p(key === undefined ? s.add(m) : s.put(m, key));
}, null);

/** Update some fields of one stored message (e.g. its status), if it is stored. */
export const messagePatch = (peer, mid, fields) => run('messages', 'readwrite', async (s) => {
  const key = await req2p(s.index('peer_mid').getKey([peer, mid]));
  if (key === undefined) return null;
  const m = await req2p(s.get(key));
  return req2p(s.put({ ...m, ...fields }, key));
}, null);

export const messagesDelete = (peer) => run('messages', 'readwrite', async (s) => {
  const keys = await req2p(s.index('peer').getAllKeys(peer));
  for (const k of keys) s.delete(k);
}, null);

/** Forget everything but the identity: contacts, history, settings. */
export async function clearAll() {
  await run('messages', 'readwrite', (s) => req2p(s.clear()), null);
  await run('contacts', 'readwrite', (s) => req2p(s.clear()), null);
  await run('kv', 'readwrite', (s) => Promise.all([req2p(s.delete('settings')), req2p(s.delete('blocked'))]), null);
}
