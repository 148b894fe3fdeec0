// File transfer over its own RTCDataChannel per file.
//
// Control messages travel on the chat channel: file-offer → file-accept | file-decline, file-cancel (either side),
// file-result (receiver's verdict). The bytes travel on an ordered, reliable channel labelled `file:<id>` that the
// sender opens after the accept: 64 KiB binary chunks with back-pressure on bufferedAmount, then one text message
// {t:"end", digest, chunks}. Integrity: SHA-256 of every chunk (crypto.subtle, or sha256.js where the page is not a secure context), then SHA-256 over the list
// of chunk digests, computed on both sides and compared. The receiver collects chunks into a Blob (the browser
// keeps large blobs on disk), so 100 MB and more work without holding one giant ArrayBuffer.

export const CHUNK = 64 * 1024;
const READ_SLICE = 1024 * 1024;
const HIGH_WATER = 8 * 1024 * 1024;
const LOW_WATER = 1024 * 1024;
const FLUSH_PARTS_BYTES = 8 * 1024 * 1024;
const PROGRESS_MS = 150;

import { digest } from './sha256.js';

let seq = 0;
function newId() {
  const r = crypto.getRandomValues(new Uint8Array(6));
  return `${Date.now().toString(36)}${(seq++).toString(36)}${[...r].map((b) => b.toString(16).padStart(2, '0')).join('')}`;
}

export function hex(buf) {
  return [...new Uint8Array(buf)].map((b) => b.toString(16).padStart(2, '0')).join('');
}

async function listDigest(chunkDigests) {
  const parts = await Promise.all(chunkDigests);
  const all = new Uint8Array(parts.length * 32);
  parts.forEach((d, i) => all.set(new Uint8Array(d), i * 32));
  return hex(await digest(all));
}

export class FileTransfers {
  /**
   * @param {import('./peer.js').PeerLink} link
   * @param {(xfer:object)=>void} onUpdate  called on every change (render the transfer)
   */
  constructor(link, onUpdate) {
    this.link = link;
    this.onUpdate = onUpdate;
    this.map = new Map();
    link.addEventListener('file-channel', (ev) => this.onChannel(ev.detail.channel));
    link.addEventListener('chat-close', () => this.abortAll());
  }

  update(x) {
    this.onUpdate(x);
  }

  /** Offer a file to the peer. */
  offer(file) {
    const x = {
      id: newId(), dir: 'out', name: file.name || 'file', size: file.size, mime: file.type || 'application/octet-stream',
      file, bytes: 0, state: 'offered', ts: Date.now(),
    };
    this.map.set(x.id, x);
    if (!this.link.send({ t: 'file-offer', id: x.id, name: x.name, size: x.size, mime: x.mime })) {
      x.state = 'failed';
      x.error = 'not_connected';
    }
    this.update(x);
    return x;
  }

  /** A control message from the chat channel. Returns true if it was a file message. */
  handle(msg) {
    if (!msg.t.startsWith('file-')) return false;
    const x = this.map.get(String(msg.id || ''));
    switch (msg.t) {
      case 'file-offer': {
        if (x || typeof msg.id !== 'string' || msg.id.length > 64) return true;
        const size = Number(msg.size);
        if (!Number.isSafeInteger(size) || size < 0) return true;
        const y = {
          id: msg.id, dir: 'in', name: String(msg.name || 'file').slice(0, 255), size,
          mime: String(msg.mime || 'application/octet-stream').slice(0, 100), bytes: 0, state: 'incoming', ts: Date.now(),
        };
        this.map.set(y.id, y);
        this.update(y);
        return true;
      }
      case 'file-accept':
        if (x && x.dir === 'out' && x.state === 'offered') this.send(x);
        return true;
      case 'file-decline':
        if (x && x.dir === 'out' && x.state === 'offered') { x.state = 'declined'; this.update(x); }
        return true;
      case 'file-cancel':
        if (x && !isFinal(x.state)) this.stop(x, 'cancelled', false);
        return true;
      case 'file-result':
        if (x && x.dir === 'out') {
          if (msg.ok) { x.state = 'done'; x.bytes = x.size; x.digest = String(msg.digest || x.digest || ''); } else { x.state = 'failed'; x.error = 'integrity'; }
          this.update(x);
        }
        return true;
      default:
        return true;
    }
  }

  accept(id) {
    const x = this.map.get(id);
    if (!x || x.state !== 'incoming') return;
    x.state = 'accepted';
    x.parts = [];
    x.partsBytes = 0;
    x.blob = new Blob([], { type: x.mime });
    x.chunkDigests = [];
    this.link.send({ t: 'file-accept', id });
    this.update(x);
  }

  decline(id) {
    const x = this.map.get(id);
    if (!x || x.state !== 'incoming') return;
    x.state = 'declined';
    this.link.send({ t: 'file-decline', id });
    this.update(x);
  }

  cancel(id) {
    const x = this.map.get(id);
    if (x && !isFinal(x.state)) this.stop(x, 'cancelled', true);
  }

  stop(x, state, tellPeer) {
    x.state = state;
    if (tellPeer) this.link.send({ t: 'file-cancel', id: x.id });
    if (x.channel) { try { x.channel.close(); } catch { /* ignore */ } }
    x.parts = null;
    this.update(x);
  }

  abortAll() {
    for (const x of this.map.values()) {
      if (['accepted', 'sending', 'receiving', 'verifying'].includes(x.state)) {
        x.state = 'failed';
        x.error = 'connection_lost';
        if (x.channel) { try { x.channel.close(); } catch { /* ignore */ } }
        this.update(x);
      }
    }
  }

  async send(x) {
    x.state = 'sending';
    x.started = performance.now();
    this.update(x);
    const ch = this.link.createFileChannel(`file:${x.id}`);
    ch.binaryType = 'arraybuffer';
    ch.bufferedAmountLowThreshold = LOW_WATER;
    x.channel = ch;
    const closed = () => x.state !== 'sending';
    ch.onclose = () => {
      if (x.state === 'sending') { x.state = 'failed'; x.error = 'connection_lost'; this.update(x); }
    };
    try {
      await waitOpen(ch);
      const digests = [];
      let sent = 0;
      let lastUpdate = 0;
      for (let off = 0; off < x.size; off += READ_SLICE) {
        const buf = await x.file.slice(off, Math.min(x.size, off + READ_SLICE)).arrayBuffer();
        for (let o = 0; o < buf.byteLength; o += CHUNK) {
          if (closed()) return;
          const chunk = buf.slice(o, Math.min(buf.byteLength, o + CHUNK));
          digests.push(digest(chunk));
          if (ch.bufferedAmount > HIGH_WATER) await waitLow(ch);
          if (closed()) return;
          ch.send(chunk);
          sent += chunk.byteLength;
          const now = performance.now();
          if (now - lastUpdate > PROGRESS_MS) {
            lastUpdate = now;
            x.bytes = Math.max(0, sent - ch.bufferedAmount);
            this.update(x);
          }
        }
      }
      x.digest = await listDigest(digests);
      if (closed()) return;
      ch.send(JSON.stringify({ t: 'end', digest: x.digest, chunks: digests.length }));
      // Wait for the buffer to drain so the progress bar reaches the end honestly.
      while (ch.bufferedAmount > 0 && !closed() && ch.readyState === 'open') {
        x.bytes = Math.max(0, sent - ch.bufferedAmount);
        this.update(x);
        await sleep(100);
      }
      if (closed()) return;
      x.bytes = x.size;
      x.state = 'verifying';
      this.update(x);
    } catch (e) {
      if (!closed()) {
        console.warn('ponte: file send failed', e);
        x.state = 'failed';
        x.error = 'send_error';
        this.update(x);
      }
    }
  }

  onChannel(ch) {
    const m = /^file:(.+)$/.exec(ch.label);
    const x = m && this.map.get(m[1]);
    if (!x || x.dir !== 'in' || x.state !== 'accepted') {
      try { ch.close(); } catch { /* ignore */ }
      return;
    }
    ch.binaryType = 'arraybuffer';
    x.channel = ch;
    x.state = 'receiving';
    x.started = performance.now();
    this.update(x);
    let lastUpdate = 0;
    ch.onmessage = async (ev) => {
      if (x.state !== 'receiving') return;
      if (typeof ev.data === 'string') {
        let end;
        try { end = JSON.parse(ev.data); } catch { return; }
        if (end && end.t === 'end') await this.finish(x, end);
        return;
      }
      const data = ev.data;
      x.chunkDigests.push(digest(data));
      x.parts.push(data);
      x.partsBytes += data.byteLength;
      x.bytes += data.byteLength;
      if (x.partsBytes >= FLUSH_PARTS_BYTES) this.flush(x);
      if (x.bytes > x.size) { this.stop(x, 'failed', true); x.error = 'integrity'; this.update(x); return; }
      const now = performance.now();
      if (now - lastUpdate > PROGRESS_MS) {
        lastUpdate = now;
        this.update(x);
      }
    };
    ch.onclose = () => {
      if (x.state === 'receiving') { x.state = 'failed'; x.error = 'connection_lost'; this.update(x); }
    };
  }

  flush(x) {
    x.blob = new Blob([x.blob, ...x.parts], { type: x.mime });
    x.parts = [];
    x.partsBytes = 0;
  }

  async finish(x, end) {
    x.state = 'verifying';
    this.update(x);
    this.flush(x);
    const digest = await listDigest(x.chunkDigests);
    x.chunkDigests = null;
    const ok = x.bytes === x.size && digest === String(end.digest);
    x.digest = digest;
    if (ok) {
      x.state = 'done';
      x.url = URL.createObjectURL(x.blob);
    } else {
      x.state = 'failed';
      x.error = 'integrity';
      x.blob = null;
    }
    this.link.send({ t: 'file-result', id: x.id, ok, digest });
    try { x.channel.close(); } catch { /* ignore */ }
    this.update(x);
  }
}

export function isFinal(state) {
  return ['done', 'failed', 'declined', 'cancelled'].includes(state);
}

function waitOpen(ch) {
  if (ch.readyState === 'open') return Promise.resolve();
  return new Promise((resolve, reject) => {
    ch.addEventListener('open', () => resolve(), { once: true });
    ch.addEventListener('close', () => reject(new Error('channel closed')), { once: true });
  });
}

function waitLow(ch) {
  return new Promise((resolve) => {
    const done = () => { ch.removeEventListener('bufferedamountlow', done); ch.removeEventListener('close', done); resolve(); };
    ch.addEventListener('bufferedamountlow', done);
    ch.addEventListener('close', done);
  });
}

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}
