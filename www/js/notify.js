// Getting the person's attention: the chime, browser notifications (bus event `notify` {title, body, tag}, shown
// only while the tab is hidden), the notifications button, and the unread count in the tab title (bus events
// `me` and `attention` {source, count}: each source reports its own count), and the ring of a call (bus `ring`).

import { $ } from './dom.js';
import { t } from './i18n.js';
import { on } from './bus.js';

let audio = null;

/** Browsers allow sound only after a user gesture: create or resume the AudioContext then. */
export function unlockAudio() {
  if (!audio && window.AudioContext) {
    try { audio = new AudioContext(); } catch { audio = null; }
  }
  if (audio && audio.state === 'suspended') audio.resume().catch(() => {});
}

function chime() {
  if (!audio || audio.state !== 'running') return;
  const now = audio.currentTime;
  [660, 880].forEach((f, i) => {
    const o = audio.createOscillator();
    const g = audio.createGain();
    o.type = 'sine';
    o.frequency.value = f;
    g.gain.setValueAtTime(0.0001, now + i * 0.16);
    g.gain.exponentialRampToValueAtTime(0.2, now + i * 0.16 + 0.02);
    g.gain.exponentialRampToValueAtTime(0.0001, now + i * 0.16 + 0.3);
    o.connect(g).connect(audio.destination);
    o.start(now + i * 0.16);
    o.stop(now + i * 0.16 + 0.32);
  });
}

function renderButton() {
  const b = $('#notify-btn');
  // Notifications need a secure context (https or localhost); elsewhere the browser refuses them outright.
  if (!('Notification' in window) || !window.isSecureContext) { b.hidden = true; return; }
  b.hidden = false;
  const p = Notification.permission;
  b.disabled = p !== 'default';
  b.textContent = p === 'granted' ? t('me.notifications_on') : p === 'denied' ? t('me.notifications_blocked') : t('me.notifications');
}

function notify({ title, body, tag }) {
  if (!document.hidden) return;
  chime();
  if ('Notification' in window && Notification.permission === 'granted') {
    try {
      const n = new Notification(title, { body, tag, icon: '/favicon.svg' });
      n.onclick = () => { window.focus(); n.close(); };
    } catch { /* some platforms need a service worker for notifications */ }
  }
}

// The ring of an incoming call: the chime every 2 s while it rings (visible tab or not), and a notification when
// the tab is hidden. Bus `ring` {on, title, body, tag}.
let ringTimer = 0;
let ringNote = null;
function ring({ on, title, body, tag }) {
  clearInterval(ringTimer);
  ringTimer = 0;
  if (ringNote) { try { ringNote.close(); } catch { /* gone */ } ringNote = null; }
  if (!on) return;
  chime();
  ringTimer = setInterval(chime, 2000);
  if (document.hidden && 'Notification' in window && Notification.permission === 'granted') {
    try {
      ringNote = new Notification(title, { body, tag, icon: '/favicon.svg', requireInteraction: true });
      ringNote.onclick = () => { window.focus(); ringNote.close(); };
    } catch { /* some platforms need a service worker for notifications */ }
  }
}

export function initNotify() {
  document.addEventListener('pointerdown', unlockAudio, { once: true });
  document.addEventListener('keydown', unlockAudio, { once: true });
  $('#notify-btn').addEventListener('click', async () => {
    unlockAudio();
    try { await Notification.requestPermission(); } catch { /* ignore */ }
    renderButton();
  });
  renderButton();
  document.addEventListener('languagechange', renderButton);
  on('notify', notify);
  on('ring', ring);

  let me = null;
  const counts = new Map(); // source → count
  const renderTitle = () => {
    const unread = [...counts.values()].reduce((a, b) => a + b, 0);
    const base = me ? `ponte · ${me.display}` : 'ponte';
    document.title = unread ? `(${unread}) ${base}` : base;
  };
  on('me', (m) => { me = m; renderTitle(); });
  on('attention', ({ source, count }) => { counts.set(source, count); renderTitle(); });
}
