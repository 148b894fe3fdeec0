// The page's modal dialogs (UI): asking for a name (rename, save contact) and confirming a destructive action
// (remove, block, delete a conversation, clear everything). Both are <dialog> elements in index.html opened with
// showModal(), never window.prompt()/confirm(): those cannot be styled, translated or themed, some browsers stop
// showing them after a few, and they block the page's only thread — signaling, keepalives and every peer
// connection's callbacks stop until the person answers.
//
// One building block, `modal()`, does what both share: Escape, the Cancel button and a click on the backdrop close
// with an empty returnValue; a `<form method="dialog">` submit closes with the submit button's value; the promise
// resolves with that value once the dialog closes.

import { $ } from './dom.js';

/**
 * Fill `dialog` (`fill()`), open it as a modal and resolve to its returnValue when it closes ('' for Escape, Cancel
 * or the backdrop). `focus()` runs once it is open and puts the focus where the person starts.
 * @param {HTMLDialogElement} dialog
 * @param {() => void} fill
 * @param {() => void} focus
 * @returns {Promise<string>}
 */
function modal(dialog, fill, focus) {
  // One question at a time: a second one while the dialog is open (not reachable by clicks, the backdrop covers the
  // page) is answered "cancel" at once rather than taking over the first one's dialog.
  if (dialog.open) return Promise.resolve('');
  return new Promise((resolve) => {
    fill();
    dialog.returnValue = '';
    dialog.addEventListener('close', () => resolve(dialog.returnValue), { once: true });
    dialog.showModal();
    focus();
  });
}

/** Wire a dialog's Cancel button and its backdrop once. */
function wire(dialog, cancel) {
  cancel.addEventListener('click', () => dialog.close(''));
  // A click whose target is the <dialog> itself landed on the backdrop (the form fills the box).
  dialog.addEventListener('click', (e) => { if (e.target === dialog) dialog.close(''); });
}

let wired = false;
function wireAll() {
  if (wired) return;
  wired = true;
  wire($('#name-dialog'), $('#name-cancel'));
  wire($('#confirm-dialog'), $('#confirm-cancel'));
}

/**
 * Ask for a name: resolves to the text typed (Enter or Save) or null (Escape, Cancel, backdrop).
 * @param {string} title
 * @param {string} label
 * @param {string} value the field's starting text, selected
 */
export async function askName(title, label, value) {
  wireAll();
  const input = $('#name-input');
  const answer = await modal($('#name-dialog'), () => {
    $('#name-dialog-title').textContent = title;
    $('#name-label').textContent = label;
    input.value = value;
  }, () => { input.focus(); input.select(); });
  return answer === 'save' ? input.value : null;
}

/**
 * Ask before a destructive action: resolves to true only when the action's own button was pressed. The focus starts
 * on Cancel, so a stray Enter or Space does not destroy anything.
 * @param {string} text the question (one of the `*_confirm` strings)
 * @param {string} action the destructive button's label, a verb ("Remove", "Block", "Delete", "Clear")
 */
export async function confirmAction(text, action) {
  wireAll();
  const answer = await modal($('#confirm-dialog'), () => {
    $('#confirm-text').textContent = text;
    $('#confirm-ok').textContent = action;
  }, () => $('#confirm-cancel').focus());
  return answer === 'confirm';
}
