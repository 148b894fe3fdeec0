// The open conversation's frame: its header (peer, state, path, round trip), the connection details panel, the
// failure box, and keeping the newest message in view while that frame changes size.

import { $ } from './dom.js';
import { t } from './i18n.js';
import { displayId } from './signaling.js';
import { pathLabel } from './pathlabel.js';

/** Render the header, details and failure box for conversation `c` (the selected one). */
export function renderChatHead(c) {
  const d = displayId(c.peer);
  $('#chat-peer').textContent = d;
  $('#messages').setAttribute('aria-label', t('chat.messages_label', { id: d }));
  const state = c.closed ? 'closed' : c.link.state;
  const badge = $('#conn-state');
  badge.dataset.state = state;
  badge.textContent = c.closed ? t('conn.closed') : t(`conn.${state}`);
  const s = c.link.stats;
  const path = pathLabel(!c.closed && s && state === 'connected' ? s.path : null, d);
  const pathEl = $('#path-label');
  pathEl.textContent = path.text;
  pathEl.dataset.kind = path.kind;
  const rtt = s && s.rtt != null && state === 'connected' ? t('conn.rtt_ms', { ms: s.rtt }) : '';
  $('#rtt-label').textContent = rtt;
  $('#d-state').textContent = badge.textContent;
  $('#d-path').textContent = path.text || t('conn.path_unknown');
  $('#d-rtt').textContent = rtt || t('conn.path_unknown');
  // Two identities: the stable code of both keys (verify.js); otherwise this connection's DTLS code.
  $('#security-code').textContent = c.safetyCode || c.link.securityCode || '—';
  $('#security-code').dataset.kind = c.safetyCode ? 'identity' : 'dtls';
  $('#security-hint').textContent = t(c.safetyCode ? 'verify.hint' : 'conn.security_hint', { id: d });
  const fail = $('#failure');
  const showFail = !c.closed && state === 'failed';
  fail.hidden = !showFail;
  if (showFail) $('#failure-text').textContent = failureText(c);
  $('#retry-btn').hidden = !c.serverPaired;
  $('#end-btn .end-label').textContent = c.closed ? t('chat.remove') : t('chat.end');
  $('#end-btn').setAttribute('aria-label', c.closed ? t('chat.remove') : t('chat.end'));
  $('#end-btn').dataset.mode = c.closed ? 'remove' : 'end';
  $('#typing').textContent = c.typing ? t('chat.typing', { id: d }) : '';
  const composerOff = !c.writable;
  $('#message-input').placeholder = c.closed ? (c.writable ? t('history.placeholder_offline') : t('chat.closed')) : c.link.chatOpen ? t('chat.placeholder') : t('chat.placeholder_waiting');
  $('#message-input').disabled = composerOff;
  $('#send-btn').disabled = composerOff;
  $('#file-input').disabled = composerOff || !c.link.chatOpen;
  $('.attach').classList.toggle('disabled', composerOff || !c.link.chatOpen);
}

function failureText(c) {
  const d = c.link.diagnosis || { reason: 'no_turn' };
  const urls = (d.failedTurnUrls && d.failedTurnUrls.length ? d.failedTurnUrls : d.turnUrls || []).map((u) => u.replace(/\?transport=/, ' ').replace(/^turns?:/, '')).join(', ');
  return t(`fail.${d.reason}`, { id: displayId(c.peer), urls });
}

export function setDetailsOpen(open) {
  $('#details').hidden = !open;
  $('#details-btn').setAttribute('aria-expanded', String(open));
}

/**
 * Keep the message list scrolled to the bottom while it is there and anything changes its size or its content:
 * the details panel or the failure box opening above it, the typing line, the composer growing, the keyboard on a
 * phone, a file card growing a line when it finishes. Without this the list keeps its scrollTop, and the newest
 * message slides under the bottom edge. Once the person scrolls up, it stays where they put it.
 */
function pinToBottom(list) {
  let atBottom = true;
  list.addEventListener('scroll', () => { atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 4; }, { passive: true });
  const stick = () => { if (atBottom) list.scrollTop = list.scrollHeight; };
  new ResizeObserver(stick).observe(list);
  new MutationObserver((changes) => {
    // Nodes leave the list itself only when another conversation is attached, which starts at its bottom.
    if (changes.some((m) => m.target === list && m.removedNodes.length)) atBottom = true;
    stick();
  }).observe(list, { childList: true, subtree: true, characterData: true });
}

export function initChatHead() {
  $('#details-btn').addEventListener('click', () => setDetailsOpen($('#details').hidden));
  pinToBottom($('#messages'));
}
