// Writing to the open conversation: the message box (Enter sends, Shift+Enter is a new line, it grows with the
// text, a draft per conversation), the attach button, and dropping files on the conversation.
//
// Bus: listens to `conversation-selected` {conv} (load that conversation's draft).

import { $ } from './dom.js';
import { t } from './i18n.js';
import { displayId } from './signaling.js';
import { on } from './bus.js';

/** @param {{current: () => import('./chat.js').Conversation|null}} o  the open conversation */
export function initComposer({ current }) {
  const msgInput = $('#message-input');
  const autoGrow = () => {
    msgInput.style.height = 'auto';
    msgInput.style.height = `${Math.min(msgInput.scrollHeight, 160)}px`;
  };
  const writable = () => { const c = current(); return c && c.writable ? c : null; };

  on('conversation-selected', ({ conv }) => {
    if (!conv) return;
    msgInput.value = conv.draft || '';
    autoGrow();
    if (!matchMedia('(pointer: coarse)').matches) msgInput.focus();
  });

  msgInput.addEventListener('input', () => {
    autoGrow();
    const c = current();
    if (c) { c.draft = msgInput.value; c.userTyping(); }
  });
  msgInput.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      $('#composer').requestSubmit();
    }
  });
  $('#composer').addEventListener('submit', (e) => {
    e.preventDefault();
    const c = writable();
    const text = msgInput.value.trim();
    if (!c || !text) return;
    c.sendText(text);
    msgInput.value = '';
    c.draft = '';
    autoGrow();
    msgInput.focus();
  });

  $('#file-input').addEventListener('change', (e) => {
    const c = writable();
    if (c) for (const f of e.target.files) c.files.offer(f);
    e.target.value = '';
  });

  // Drag and drop a file onto the conversation.
  const chatEl = $('#chat');
  let dragDepth = 0;
  chatEl.addEventListener('dragenter', (e) => {
    if (!e.dataTransfer || ![...e.dataTransfer.types].includes('Files')) return;
    const c = writable();
    if (!c) return;
    dragDepth += 1;
    $('#drop-text').textContent = t('chat.drop', { id: displayId(c.peer) });
    $('#dropzone').hidden = false;
  });
  chatEl.addEventListener('dragover', (e) => { if (!$('#dropzone').hidden) e.preventDefault(); });
  chatEl.addEventListener('dragleave', () => { dragDepth = Math.max(0, dragDepth - 1); if (!dragDepth) $('#dropzone').hidden = true; });
  chatEl.addEventListener('drop', (e) => {
    e.preventDefault();
    dragDepth = 0;
    $('#dropzone').hidden = true;
    const c = writable();
    if (c && e.dataTransfer) for (const f of e.dataTransfer.files) c.files.offer(f);
  });
}
