// The card that shows one file transfer in the message list: name, size, progress bar, state, actions.

import { el } from './dom.js';
import { t } from './i18n.js';
import { isFinal } from './files.js';
import { displayId } from './signaling.js';

/**
 * Create (n == null) or update the card for transfer `x`. Returns the node bundle.
 * @param {object} x  transfer (files.js)
 * @param {object|null} n
 * @param {import('./chat.js').Chat} chat
 */
export function renderTransfer(x, n, chat) {
  if (!n) n = build(x, chat);
  n.x = x;
  const peer = displayId(chat.peer);
  n.name.textContent = x.name;
  n.size.textContent = formatBytes(x.size);
  const active = ['sending', 'receiving', 'verifying'].includes(x.state);
  const pct = x.size ? Math.min(100, Math.floor((x.bytes / x.size) * 100)) : (x.state === 'done' ? 100 : 0);
  n.progress.hidden = !(active || x.state === 'done' || x.state === 'accepted');
  n.progress.max = 100;
  n.progress.value = x.state === 'done' ? 100 : pct;
  n.progress.dataset.bytes = String(x.bytes);
  n.progress.dataset.percent = String(x.state === 'done' ? 100 : pct);
  n.progress.setAttribute('aria-label', t('file.progress_label', { name: x.name }));
  n.li.dataset.state = x.state;

  let status;
  switch (x.state) {
    case 'offered': status = t('file.waiting', { id: peer }); break;
    case 'incoming': status = `${peer} ${t('file.offer')}`; break;
    case 'accepted': status = t('file.receiving'); break;
    case 'sending':
    case 'receiving': {
      const secs = x.started ? (performance.now() - x.started) / 1000 : 0;
      const rate = secs > 0.5 ? ` · ${t('file.speed', { rate: formatBytes(Math.round(x.bytes / secs)) })}` : '';
      status = `${t('file.progress', { done: formatBytes(x.bytes), total: formatBytes(x.size) })} (${pct}%)${rate}`;
      break;
    }
    case 'verifying': status = t('file.verifying'); break;
    case 'done': status = t(x.dir === 'out' ? 'file.done_out' : 'file.done_in'); break;
    case 'declined': status = t('file.declined'); break;
    case 'cancelled': status = t('file.cancelled'); break;
    default: status = x.error ? t(`file.err_${x.error}`) : t('file.failed');
  }
  n.status.textContent = status;
  n.status.dataset.kind = x.state === 'done' ? 'ok' : ['failed'].includes(x.state) ? 'error' : '';

  n.accept.hidden = x.state !== 'incoming';
  n.decline.hidden = x.state !== 'incoming';
  n.cancel.hidden = x.state === 'incoming' || isFinal(x.state);
  n.accept.textContent = t('file.accept');
  n.decline.textContent = t('file.decline');
  n.cancel.textContent = t('file.cancel');

  if (x.state === 'done' && x.url && !n.url) {
    n.url = x.url;
    n.download.href = x.url;
    n.download.download = x.name;
    n.download.hidden = false;
  }
  n.downloadText.textContent = t('file.download');
  if (x.state !== 'done') n.download.hidden = true;
  if (x.digest && x.state === 'done') {
    n.digest.textContent = `SHA-256 ✓ ${x.digest.slice(0, 16)}…`;
    n.digest.title = x.digest;
  }
  return n;
}

function build(x, chat) {
  const name = el('span', { class: 'file-name', 'data-testid': 'file-name' });
  const size = el('span', { class: 'file-size muted' });
  const progress = el('progress', { class: 'progress', 'data-testid': 'progress', max: '100', value: '0' });
  const status = el('span', { class: 'file-status small', 'data-testid': 'file-status', role: 'status' });
  const digest = el('span', { class: 'file-digest small muted mono' });
  const accept = el('button', { type: 'button', class: 'btn small primary', 'data-testid': 'file-accept' });
  const decline = el('button', { type: 'button', class: 'btn small', 'data-testid': 'file-decline' });
  const cancel = el('button', { type: 'button', class: 'btn small ghost', 'data-testid': 'file-cancel' });
  const downloadText = el('span', {});
  const download = el('a', { class: 'btn small primary', 'data-testid': 'file-download', hidden: '' }, downloadText);
  const icon = el('span', { class: 'file-icon', 'aria-hidden': 'true' }, ext(x.name));
  const li = el('li', { class: `msg file ${x.dir === 'out' ? 'mine' : 'theirs'}`, 'data-testid': 'file-transfer', 'data-id': x.id, 'data-dir': x.dir },
    el('div', { class: 'bubble file-card' },
      el('div', { class: 'file-head' }, icon, el('div', { class: 'file-meta' }, name, size)),
      progress,
      el('div', { class: 'file-foot' }, status, digest),
      el('div', { class: 'file-actions' }, decline, accept, cancel, download)));
  const n = { li, name, size, progress, status, digest, accept, decline, cancel, download, downloadText, url: null };
  accept.addEventListener('click', () => chat.files.accept(n.x.id));
  decline.addEventListener('click', () => chat.files.decline(n.x.id));
  cancel.addEventListener('click', () => chat.files.cancel(n.x.id));
  n.rerender = () => renderTransfer(n.x, n, chat);
  return n;
}

function ext(name) {
  const m = /\.([A-Za-z0-9]{1,4})$/.exec(name || '');
  return m ? m[1].toUpperCase() : 'FILE';
}

/** 1536 → "1.5 KB": sizes and speeds as people read them (display only, so here and not in files.js). */
export function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  const units = ['KB', 'MB', 'GB', 'TB'];
  let v = n;
  let u = -1;
  do { v /= 1024; u++; } while (v >= 1024 && u < units.length - 1);
  return `${v >= 100 ? v.toFixed(0) : v.toFixed(1)} ${units[u]}`;
}
