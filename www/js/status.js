// The server connection line in the top bar ("Online", "Offline — retrying in 4 s") and the banner under it.
// Anyone can show a banner with the bus event `banner` {text, action?, run?}.

import { $ } from './dom.js';
import { t } from './i18n.js';
import { on } from './bus.js';

/**
 * @param {import('./signaling.js').Signaling} sig
 * @param {{liveChats: () => boolean}} o  whether some chat still runs (the offline text says so)
 */
export function initStatus(sig, { liveChats }) {
  let everWelcomed = false;
  let retryTick = 0;
  let refusal = null; // why the server closed the last attempt (server_full, too_many_sessions), if it said

  function render(detail) {
    const box = $('.server-status');
    const text = $('.server-status-text');
    clearInterval(retryTick);
    box.dataset.state = detail.state;
    if (detail.state === 'closed' && 'refusal' in detail) refusal = detail.refusal;
    if (detail.state === 'open') refusal = null;
    if (detail.state === 'open') text.textContent = t('server.online');
    else if (detail.state === 'connecting') text.textContent = everWelcomed ? t('server.retrying') : t('server.connecting');
    else if (detail.state === 'replaced') {
      text.textContent = t('server.replaced');
      // With a lasting identity there is no "new ID": reconnecting proves the key and takes this ID back.
      showBanner({ text: t('server.replaced'), action: t(sig.usesIdentity ? 'server.use_here' : 'server.new_id_button'), run: () => { hideBanner(); sig.renew(); } });
    } else if (detail.state === 'taken') {
      // Another tab of this browser proved the same identity and now holds the ID: offer to take it back.
      text.textContent = t('server.taken');
      showBanner({ text: t('server.taken'), action: t('server.use_here'), run: () => { hideBanner(); sig.reconnectNow(); } });
    } else if (detail.fatal) {
      text.textContent = t('server.unsupported');
    } else {
      const tick = () => {
        const s = Math.max(0, Math.ceil((sig.nextRetryAt - Date.now()) / 1000));
        const key = refusal === 'server_full' ? 'server.full'
          : refusal === 'too_many_sessions' ? 'server.too_many_sessions'
            : liveChats() ? 'server.offline_chats' : 'server.offline';
        text.textContent = t(key, { s });
      };
      tick();
      retryTick = setInterval(tick, 1000);
    }
  }

  function showBanner({ text, action, run }) {
    const b = $('#banner');
    b.querySelector('.banner-text').textContent = text;
    const btn = $('#banner-action');
    btn.hidden = !action;
    if (action) {
      btn.textContent = action;
      btn.onclick = run;
    }
    b.hidden = false;
  }
  function hideBanner() { $('#banner').hidden = true; }

  sig.addEventListener('state', (ev) => render(ev.detail));
  sig.addEventListener('retry', () => render({ state: 'closed' }));
  sig.addEventListener('welcome', () => { everWelcomed = true; });
  on('banner', showBanner);
  $('#banner-close').addEventListener('click', hideBanner);
  document.addEventListener('languagechange', () => render({ state: sig.state }));
}
