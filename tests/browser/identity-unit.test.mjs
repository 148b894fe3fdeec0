// Unit tests of the identity's wire encodings (docs/protocol.md, "Keys and encodings"), in Node (no browser):
// base64url, the signed bytes, and that what WebCrypto makes is what a server checks — the same node:crypto check
// the mock server does, with raw r||s signatures (IEEE P1363, not DER).
//
//   cd tests/browser && node --test identity-unit.test.mjs

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { b64url, fromB64url, proofBytes, PROOF_PREFIX, verify } from '../../www/js/identity.js';
import { verifyProof, publicKey } from './mock-server.mjs';

test('base64url has no padding, the URL alphabet, and round-trips', () => {
  for (let n = 0; n < 70; n++) {
    const b = new Uint8Array(n).map((_, i) => (i * 73 + n * 11) & 255);
    const s = b64url(b);
    assert.match(s, /^[A-Za-z0-9_-]*$/);
    assert.deepEqual([...fromB64url(s)], [...b]);
    assert.deepEqual([...fromB64url(Buffer.from(b).toString('base64').replace(/\+/g, '-').replace(/\//g, '_'))], [...b], 'padding accepted');
  }
  assert.equal(fromB64url('ab+c'), null);
  assert.equal(fromB64url('a'), null);
});

test('the signed bytes are the prefix and the challenge text as received', () => {
  assert.equal(PROOF_PREFIX, 'ponte-identity-v1:');
  assert.equal(PROOF_PREFIX.length, 18);
  assert.equal(new TextDecoder().decode(proofBytes('q3Yx-_AB')), 'ponte-identity-v1:q3Yx-_AB');
});

test('a WebCrypto key and signature have the wire sizes, verify as a server checks them, and forgeries do not', async () => {
  const kp = await crypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, false, ['sign', 'verify']);
  const key = b64url(await crypto.subtle.exportKey('raw', kp.publicKey));
  assert.equal(key.length, 87);
  assert.ok(publicKey(key));
  const challenge = b64url(crypto.getRandomValues(new Uint8Array(32)));
  const sig = b64url(await crypto.subtle.sign({ name: 'ECDSA', hash: 'SHA-256' }, kp.privateKey, proofBytes(challenge)));
  assert.equal(sig.length, 86);
  assert.ok(verifyProof(key, challenge, sig), 'server-side check');
  assert.ok(await verify(key, sig, proofBytes(challenge)), 'client-side check');
  // Another challenge, another key, a flipped bit: all refused.
  assert.ok(!verifyProof(key, `${challenge}x`, sig));
  const other = await crypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, false, ['sign', 'verify']);
  const otherKey = b64url(await crypto.subtle.exportKey('raw', other.publicKey));
  assert.ok(!verifyProof(otherKey, challenge, sig));
  const bytes = fromB64url(sig);
  bytes[10] ^= 1;
  assert.ok(!verifyProof(key, challenge, b64url(bytes)));
  assert.ok(!(await verify(key, b64url(bytes), proofBytes(challenge))));
  assert.equal(publicKey('AAAA'), null, 'not a point');
});

test('the security code of two identities is symmetric, 20 digits, and changes with either key', async () => {
  const { safetyCode, bindingBytes } = await import('../../www/js/identity.js');
  const k1 = 'B'.repeat(87);
  const k2 = 'C'.repeat(87);
  const c = await safetyCode(k1, k2);
  assert.match(c, /^\d{4}( \d{4}){4}$/);
  assert.equal(await safetyCode(k2, k1), c);
  assert.notEqual(await safetyCode(k1, 'D'.repeat(87)), c);
  assert.equal(new TextDecoder().decode(bindingBytes('sha-256 AA', 'sha-256 BB')), 'ponte-dtls-v1:sha-256 AA|sha-256 BB');
});
