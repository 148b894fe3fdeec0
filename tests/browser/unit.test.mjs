// Unit tests of the web client's pure modules, run in Node (no browser): SHA-256 fallback, QR encoder, ID parsing,
// translations complete in every language.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Sha256 } from '../../www/js/sha256.js';
import { qrMatrix } from '../../www/js/qr.js';
import { parseId, displayId } from '../../www/js/signaling.js';
import { LANGUAGES } from '../../www/js/i18n.js';
import { which } from './lib.mjs';

test('SHA-256 fallback matches Node for sizes around block boundaries, fed in pieces', () => {
  for (const n of [0, 1, 55, 56, 57, 63, 64, 65, 119, 120, 1000, 65536, 100003]) {
    const data = randomBytes(n);
    const h = new Sha256();
    for (let i = 0; i < n;) {
      const k = Math.min(n - i, 1 + ((i * 7919) % 300));
      h.update(data.subarray(i, i + k));
      i += k;
    }
    assert.equal(Buffer.from(h.digest()).toString('hex'), createHash('sha256').update(data).digest('hex'), `n=${n}`);
  }
});

test('ID input is forgiving', () => {
  assert.equal(parseId('K7M2-X9P4').id, 'k7m2x9p4');
  assert.equal(parseId('  k7m2 x9p4 ').id, 'k7m2x9p4');
  assert.equal(parseId('k7m2.x9p4').id, 'k7m2x9p4');
  assert.equal(parseId('https://chat.example.org/#k7m2-x9p4').id, 'k7m2x9p4');
  assert.equal(parseId('k7m2-x9p0').reason, 'chars');
  assert.equal(parseId('k7m2-x9p0').ch, '0');
  assert.equal(parseId('k7m2').reason, 'length');
  assert.equal(parseId('').reason, 'empty');
  assert.equal(displayId('k7m2x9p4'), 'k7m2-x9p4');
});

test('every language has every string, with the same placeholders', () => {
  const en = LANGUAGES.en.strings;
  const vars = (s) => [...s.matchAll(/\{(\w+)\}/g)].map((m) => m[1]).sort().join(',');
  for (const [code, { strings }] of Object.entries(LANGUAGES)) {
    for (const k of Object.keys(en)) {
      assert.ok(k in strings, `${code} lacks ${k}`);
      assert.equal(vars(strings[k]), vars(en[k]), `${code} ${k} placeholders`);
    }
    for (const k of Object.keys(strings)) assert.ok(k in en, `${code} has unknown key ${k}`);
  }
});

test('QR codes have the right size and decode to the text (when zbarimg is installed)', (t) => {
  const texts = ['http://198.51.100.10:8080/#k7m2x9p4', 'https://a-rather-long-hostname.example.com.br:8443/#k7m2x9p4', 'z'.repeat(150), 'w'.repeat(213)];
  const sizes = texts.map((s) => qrMatrix(s).length);
  assert.deepEqual(sizes, [29, 33, 49, 57]); // versions 3, 4, 8, 10
  assert.throws(() => qrMatrix('x'.repeat(214)));
  if (!which('zbarimg')) {
    t.diagnostic('zbarimg not installed (apt-get install zbar-tools): sizes checked, decoding not');
    return;
  }
  const file = path.join(tmpdir(), `ponte-qr-unit-${process.pid}.pgm`);
  try {
    for (const text of texts) {
      const m = qrMatrix(text);
      const n = m.length;
      const scale = 6;
      const w = (n + 8) * scale;
      const px = Buffer.alloc(w * w, 255);
      for (let y = 0; y < n; y++) {
        for (let x = 0; x < n; x++) {
          if (!m[y][x]) continue;
          for (let dy = 0; dy < scale; dy++) px.fill(0, ((y + 4) * scale + dy) * w + (x + 4) * scale, ((y + 4) * scale + dy) * w + (x + 5) * scale);
        }
      }
      writeFileSync(file, Buffer.concat([Buffer.from(`P5 ${w} ${w} 255\n`), px]));
      assert.equal(execFileSync('zbarimg', ['-q', '--raw', file], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim(), text);
    }
  } finally {
    rmSync(file, { force: true });
  }
});
