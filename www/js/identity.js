// The lasting identity of this browser profile (docs/protocol.md, "Identities, contacts and presence"): an ECDSA
// P-256 key pair made by WebCrypto, the private key non-extractable, kept in IndexedDB (store.js). The server binds
// it to the same short ID on every visit; `hello.identity` names the public key and `identity_proof` signs the
// server's challenge. Without WebCrypto (plain http:// on a LAN address is not a secure context) or IndexedDB the
// page stays anonymous and says why (`reason`).

import { kvGet, kvAdd, openStore } from './store.js';

export const PROOF_PREFIX = 'ponte-identity-v1:';

/** base64url without padding (RFC 4648 §5). */
export function b64url(bytes) {
  const b = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  let s = '';
  for (const x of b) s += String.fromCharCode(x);
  return btoa(s).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

/** Decode base64url (padding optional); null when it is not base64url. */
export function fromB64url(text) {
  const s = String(text || '').replace(/=+$/, '');
  if (!/^[A-Za-z0-9_-]*$/.test(s) || s.length % 4 === 1) return null;
  const bin = atob(s.replace(/-/g, '+').replace(/_/g, '/') + '='.repeat((4 - (s.length % 4)) % 4));
  return Uint8Array.from(bin, (c) => c.charCodeAt(0));
}

/** The bytes an `identity_proof` signs: the prefix and the challenge text exactly as received. */
export function proofBytes(challenge) {
  return new TextEncoder().encode(PROOF_PREFIX + challenge);
}

/** Why this page cannot keep an identity, or null when it can. */
export function unavailableReason() {
  if (typeof isSecureContext !== 'undefined' && !isSecureContext) return 'insecure';
  if (typeof crypto === 'undefined' || !crypto.subtle) return 'insecure';
  if (typeof indexedDB === 'undefined') return 'no_storage';
  return null;
}

/** Import a peer's public key (base64url raw point) for verifying; null if it is not one. */
export async function importPublicKey(key) {
  const raw = fromB64url(key);
  if (!raw || raw.length !== 65 || raw[0] !== 4) return null;
  try {
    return await crypto.subtle.importKey('raw', raw, { name: 'ECDSA', namedCurve: 'P-256' }, false, ['verify']);
  } catch { return null; }
}

export async function verify(key, signature, bytes) {
  const pub = await importPublicKey(key);
  const sig = fromB64url(signature);
  if (!pub || !sig || sig.length !== 64) return false;
  try {
    return await crypto.subtle.verify({ name: 'ECDSA', hash: 'SHA-256' }, pub, sig, bytes);
  } catch { return false; }
}

/**
 * This profile's identity, made on first use: `{key, sign(bytes) → base64url}` or `{reason}` when there is none
 * ('insecure', 'no_storage', 'error').
 */
export async function loadIdentity() {
  const reason = unavailableReason();
  if (reason) return { reason };
  try {
    if (!(await openStore())) return { reason: 'no_storage' };
    let rec = await kvGet('identity');
    if (!rec || !rec.keyPair || !rec.key) {
      const keyPair = await crypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, false, ['sign', 'verify']);
      const key = b64url(await crypto.subtle.exportKey('raw', keyPair.publicKey));
      rec = { keyPair, key, created: Date.now() };
      await kvAdd('identity', rec);
      // Another tab may have made one at the same moment: the stored one wins, so all tabs share one key.
      const stored = await kvGet('identity');
      if (!stored) return { reason: 'no_storage' };
      rec = stored;
    }
    const { keyPair, key } = rec;
    return {
      key,
      sign: async (bytes) => b64url(await crypto.subtle.sign({ name: 'ECDSA', hash: 'SHA-256' }, keyPair.privateKey, bytes)),
    };
  } catch (e) {
    console.warn('ponte: no identity', e);
    return { reason: 'error' };
  }
}

// ---------------------------------------------------------------- keys verified once

export const BIND_PREFIX = 'ponte-dtls-v1:';

/**
 * The bytes one side signs to bind this connection's DTLS certificates to its identity key: its own fingerprint,
 * then the one it sees for the other side. The other side checks them as (the fingerprint it sees for me, its
 * own); a man in the middle terminates DTLS with his own certificates, so the two views differ and the check fails.
 */
export function bindingBytes(signerFp, otherFp) {
  return new TextEncoder().encode(`${BIND_PREFIX}${signerFp}|${otherFp}`);
}

/**
 * The security code of a pair of identities, the same on both sides and on every connection (like a safety
 * number): SHA-256 over both public keys (sorted), 20 digits in five groups. It changes only when a key does.
 */
export async function safetyCode(keyA, keyB) {
  const [a, b] = [keyA, keyB].sort();
  const d = new Uint8Array(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(`ponte-safety-v1|${a}|${b}`)));
  let n = 0n;
  for (let i = 0; i < 12; i++) n = (n << 8n) | BigInt(d[i]);
  const digits = (n % 10n ** 20n).toString().padStart(20, '0');
  return digits.match(/.{4}/g).join(' ');
}
