// Contacts, presence, one-click connect, auto-accept and the key-change warning, in Chromium with persistent
// profiles against the mock server (mock-server.mjs implements docs/protocol.md "Contacts, consent and presence").
//
//   cd tests/browser && node --test contacts.test.mjs      (needs /usr/bin/chromium; no ponte binary)

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { requirements, waitConnected, screenshot, sendMessage } from './lib.mjs';
import { startMockServer, newIdentities } from './mock-server.mjs';
import { appPage, saveContact, profiles, connectPages, answerConfirm } from './profiles.mjs';

const missing = requirements({ needPonte: false });

const contact = (page, id) => page.locator(`[data-testid=contact][data-peer="${id}"]`);

describe('contacts', { skip: missing || false }, () => {
  let server;
  const identities = newIdentities();
  const { profile, browser, close: closeProfiles } = profiles();

  before(async () => { server = await startMockServer({ identities, grace: 500 }); });
  after(async () => {
    await closeProfiles();
    if (server) await server.close();
  });

  test('save each other, see presence, reopen the browser, connect in one click; auto-accept only for contacts; a changed key warns', async () => {
    const dirA = profile();
    const dirB = profile();
    const ctxA = await browser(dirA);
    let ctxB = await browser(dirB);
    const a = await appPage(ctxA, server.url);
    let b = await appPage(ctxB, server.url);
    const { idA, idB } = await connectPages(a, b);

    // A saves B: not mutual yet, so no presence (B cannot learn that A saved it).
    await saveContact(a, 'Bob');
    assert.equal(await contact(a, idB).getAttribute('data-online'), 'false');
    assert.match(await contact(a, idB).textContent(), /once they save you/);
    await saveContact(b, 'Alice');
    await a.waitForSelector(`[data-testid=contact][data-peer="${idB}"][data-online=true]`);
    await b.waitForSelector(`[data-testid=contact][data-peer="${idA}"][data-online=true]`);
    assert.equal(await a.getByTestId('chat-contact-name').textContent(), 'Bob');
    assert.equal(await a.getByTestId('save-contact').isVisible(), false, 'saved: no more "save contact"');

    // B closes the browser: A sees B offline (after B's grace period).
    await ctxB.close();
    await a.waitForSelector(`[data-testid=contact][data-peer="${idB}"][data-online=false]`, { timeout: 10000 });

    // B opens it again: same ID, Alice still saved and online, and A sees B online.
    ctxB = await browser(dirB);
    b = await appPage(ctxB, server.url);
    assert.equal(await b.evaluate(() => window.ponte.id), idB);
    await b.waitForSelector(`[data-testid=contact][data-peer="${idA}"][data-online=true]`);
    assert.equal(await contact(b, idA).getByTestId('contact-name').textContent(), 'Alice');
    await a.waitForSelector(`[data-testid=contact][data-peer="${idB}"][data-online=true]`);

    // B accepts contacts automatically; A's old chat ended with B's browser. One click on "Bob" connects.
    await b.getByTestId('auto-accept').check();
    await a.waitForSelector(`[data-testid=conversation][data-peer="${idB}"][data-state=closed]`, { timeout: 15000 });
    await a.getByTestId('end-chat').click(); // remove the ended conversation
    await contact(a, idB).getByTestId('contact-connect').click();
    await waitConnected(a);
    await waitConnected(b);
    assert.equal(await b.getByTestId('incoming-request').count(), 0, 'no card: accepted automatically');

    // A stranger gets a card at B even with auto-accept on.
    const ctxC = await browser(profile());
    const c = await appPage(ctxC, server.url);
    await c.getByTestId('peer-id-input').fill(idB);
    await c.getByTestId('connect').click();
    await b.locator(`[data-testid=incoming-request][data-peer="${await c.evaluate(() => window.ponte.id)}"]`).waitFor();
    await ctxC.close();

    // B's identity key changes under the same ID (a new browser profile, and a server that lost the binding):
    // A has auto-accept on, yet gets a card, and after accepting a loud warning.
    await a.getByTestId('auto-accept').check();
    await b.evaluate(() => new Promise((resolve) => {
      const r = indexedDB.open('ponte');
      r.onsuccess = () => { const tx = r.result.transaction('kv', 'readwrite'); tx.objectStore('kv').delete('identity'); tx.oncomplete = resolve; };
    }));
    const oldKeyB = identities.keyOf.get(idB);
    identities.byKey.delete(oldKeyB);
    identities.nextId = idB;
    await b.evaluate(() => sessionStorage.clear());
    await b.reload();
    await b.waitForFunction(() => window.ponte && window.ponte.id);
    assert.equal(await b.evaluate(() => window.ponte.id), idB);
    assert.notEqual(await b.evaluate(() => window.ponte.identityKey), oldKeyB);
    await a.waitForSelector(`[data-testid=conversation][data-peer="${idB}"][data-state=closed]`, { timeout: 15000 });
    await a.getByTestId('end-chat').click();
    await b.getByTestId('peer-id-input').fill(idA);
    await b.getByTestId('connect').click();
    await a.locator(`[data-testid=incoming-request][data-peer="${idB}"]`).waitFor();
    await a.getByTestId('accept').click();
    await a.locator('[data-testid=system-message][data-kind=warning]').first().waitFor();
    assert.match(await a.locator('[data-testid=system-message][data-kind=warning]').first().textContent(), /identity key changed/);
    assert.match(await a.getByTestId('banner').textContent(), /identity key changed/);
  });

  test('a saved contact the server no longer knows (not_identity) is shown as such', async () => {
    const ctx = await browser(profile());
    const a = await appPage(ctx, server.url);
    await a.evaluate(() => window.ponte.contacts.save('zzzzzzzz', 'Ghost', 'B'.repeat(87)));
    await a.waitForFunction(() => /no longer known/.test(document.querySelector('[data-testid=contact][data-peer=zzzzzzzz]')?.textContent || ''));
    assert.equal(await a.locator('[data-testid=contact][data-peer=zzzzzzzz]').getAttribute('data-online'), 'false');
  });

  test('rename, block (the chat ends, their requests do not arrive), unblock', async () => {
    const a = await appPage(await browser(profile()), server.url);
    const b = await appPage(await browser(profile()), server.url);
    const { idA, idB } = await connectPages(a, b);
    // Save and rename ask in an in-page dialog (no window.prompt()): Escape cancels, Enter saves.
    const browserDialogs = [];
    const noBrowserDialog = (d) => { browserDialogs.push(d.message()); d.dismiss(); };
    a.on('dialog', noBrowserDialog);
    await saveContact(a, 'Bob');
    const dialog = a.getByTestId('name-dialog');
    const input = a.getByTestId('name-input');
    const openRename = async () => {
      await contact(a, idB).getByTestId('contact-menu').click();
      await contact(a, idB).getByTestId('contact-rename').click();
      await dialog.waitFor();
    };
    await openRename();
    assert.equal(await a.locator('#name-dialog-title').textContent(), 'Rename contact');
    assert.equal(await input.inputValue(), 'Bob', 'the dialog starts with the current name');
    assert.equal(await a.evaluate(() => document.activeElement?.dataset.testid), 'name-input', 'the name field has the focus');
    assert.match(await a.locator('#name-label').textContent(), new RegExp(`New name for ${idB.slice(0, 4)}`));
    await input.fill('Not this');
    await input.press('Escape');
    await dialog.waitFor({ state: 'hidden' });
    assert.equal(await contact(a, idB).getByTestId('contact-name').textContent(), 'Bob', 'Escape keeps the old name');
    await openRename();
    assert.equal(await input.inputValue(), 'Bob');
    await input.fill('Robert');
    await input.press('Enter');
    await dialog.waitFor({ state: 'hidden' });
    await a.locator('[data-testid=contact-name]:text-is("Robert")').waitFor();
    assert.equal(await a.locator(`[data-testid=conversation][data-peer="${idB}"] .conv-name`).textContent(), 'Robert', 'the conversation list follows');

    // At 360 px, light and dark, in pt-BR: the dialog fits the screen; Cancel keeps the name.
    await a.setViewportSize({ width: 360, height: 740 });
    await a.getByTestId('lang-select').selectOption('pt-BR');
    await a.getByTestId('back').click();
    await openRename();
    assert.equal(await a.locator('#name-dialog-title').textContent(), 'Renomear contato');
    assert.equal(await a.getByTestId('name-save').textContent(), 'Salvar');
    const box = await dialog.boundingBox();
    assert.ok(box.x >= 0 && box.x + box.width <= 360, `the dialog fits 360 px: ${JSON.stringify(box)}`);
    const saveBox = await a.getByTestId('name-save').boundingBox();
    assert.ok(saveBox.x + saveBox.width <= box.x + box.width, 'the buttons stay inside the dialog');
    await screenshot(a, 'contact-rename-360');
    await a.emulateMedia({ colorScheme: 'dark' });
    assert.notEqual(await dialog.evaluate((d) => getComputedStyle(d).backgroundColor), 'rgb(255, 255, 255)', 'dark surface');
    await screenshot(a, 'contact-rename-360-dark');
    await input.fill('Nope');
    await a.getByTestId('name-cancel').click();
    await dialog.waitFor({ state: 'hidden' });
    assert.equal(await contact(a, idB).getByTestId('contact-name').textContent(), 'Robert', 'Cancel keeps the name');
    await a.emulateMedia({ colorScheme: 'light' });
    await a.getByTestId('lang-select').selectOption('en');
    await a.setViewportSize({ width: 1280, height: 800 });
    a.off('dialog', noBrowserDialog);
    assert.deepEqual(browserDialogs, [], 'no window.prompt()/confirm() while saving and renaming');

    // Block asks in the page's confirmation dialog: Cancel keeps the contact and the chat; "Block" blocks.
    const openBlock = async () => {
      await contact(a, idB).getByTestId('contact-menu').click();
      await contact(a, idB).getByTestId('contact-block').click();
    };
    await answerConfirm(a, openBlock, { text: /^Block Robert\? They will not be able to reach you/, action: 'Block', confirm: false });
    await a.waitForTimeout(300);
    assert.equal(await contact(a, idB).count(), 1, 'Cancel keeps the contact');
    assert.equal(await a.locator(`[data-testid=blocked][data-peer="${idB}"]`).count(), 0, 'Cancel does not block');
    assert.equal(await b.getByTestId('connection-state').getAttribute('data-state'), 'connected', 'Cancel keeps the chat');
    a.on('dialog', noBrowserDialog);
    await answerConfirm(a, openBlock, { action: 'Block', confirm: true });
    a.off('dialog', noBrowserDialog);
    assert.deepEqual(browserDialogs, [], 'no window.confirm() for block');
    await a.locator(`[data-testid=blocked][data-peer="${idB}"]`).waitFor({ state: 'attached' });
    assert.equal(await contact(a, idB).count(), 0, 'no longer a contact');
    await b.waitForSelector(`[data-testid=conversation][data-peer="${idA}"][data-state=closed]`);
    await b.getByTestId('end-chat').click();
    await b.getByTestId('peer-id-input').fill(idA);
    await b.getByTestId('connect').click();
    await b.waitForFunction(() => /Nobody with the ID/.test(document.querySelector('[data-testid=connect-message]').textContent));
    assert.equal(await a.getByTestId('incoming-request').count(), 0, 'a blocked ID cannot ask');

    await a.locator('#blocked-box summary').click();
    await a.locator(`[data-testid=blocked][data-peer="${idB}"] [data-testid=unblock]`).click();
    await a.waitForSelector('[data-testid=blocked-box][hidden]', { state: 'attached' });
    await b.getByTestId('connect').click();
    await a.locator(`[data-testid=incoming-request][data-peer="${idB}"]`).waitFor();
  });

  test('remove and "clear everything" ask in the page: Enter, Escape, a click outside and Cancel keep; the named button removes', async () => {
    const a = await appPage(await browser(profile()), server.url);
    const b = await appPage(await browser(profile()), server.url);
    const { idA, idB } = await connectPages(a, b);
    // Never the browser's own confirm(): it blocks the page's thread (signaling included) while it waits.
    const browserDialogs = [];
    a.on('dialog', (d) => { browserDialogs.push(d.message()); d.dismiss(); });
    await saveContact(a, 'Bob');
    await sendMessage(a, 'kept on the device');
    await a.waitForSelector('[data-testid=message-status][data-status=delivered]');
    const stored = () => a.evaluate(() => new Promise((resolve) => {
      const r = indexedDB.open('ponte');
      r.onsuccess = () => { const q = r.result.transaction('messages').objectStore('messages').count(); q.onsuccess = () => resolve(q.result); };
    }));
    // IndexedDB writes follow the page's events: poll (5 s at most) rather than read once.
    const until = async (check, why) => {
      for (let i = 0; i < 50; i++) { if (await check()) return; await a.waitForTimeout(100); }
      assert.fail(why);
    };
    await until(async () => await stored() > 0, 'the message is kept for the saved contact');

    const dialog = a.getByTestId('confirm-dialog');
    const openRemove = async () => {
      await contact(a, idB).getByTestId('contact-menu').click();
      await contact(a, idB).getByTestId('contact-remove').click();
      await dialog.waitFor();
    };
    const closed = () => dialog.waitFor({ state: 'hidden' });
    const stillThere = async (why) => {
      await a.waitForTimeout(200);
      assert.equal(await contact(a, idB).count(), 1, why);
      assert.ok(await a.evaluate((id) => !!window.ponte.contacts.get(id), idB), why);
    };

    // The focus starts on Cancel, so an Enter right away does not remove.
    await openRemove();
    assert.equal(await a.getByTestId('confirm-text').textContent(), 'Remove Bob from your contacts?');
    assert.equal(await a.getByTestId('confirm-ok').textContent(), 'Remove', 'the button is named for the action');
    assert.equal(await a.getByTestId('confirm-cancel').textContent(), 'Cancel');
    assert.match(await a.getByTestId('confirm-ok').getAttribute('class'), /\bdestructive\b/);
    assert.equal(await a.evaluate(() => document.activeElement?.dataset.testid), 'confirm-cancel', 'the focus starts on Cancel');
    await a.keyboard.press('Enter');
    await closed();
    await stillThere('Enter on the first focus keeps the contact');
    await openRemove();
    await a.keyboard.press('Escape');
    await closed();
    await stillThere('Escape keeps the contact');
    await openRemove();
    await a.mouse.click(4, 4); // the backdrop, outside the box
    await closed();
    await stillThere('a click outside keeps the contact');
    await answerConfirm(a, openRemove, { action: 'Remove', confirm: false });
    await stillThere('Cancel keeps the contact');

    // At 360 px, light and dark, in English and pt-BR: the dialog and both buttons fit; the action's button is red.
    await a.setViewportSize({ width: 360, height: 740 });
    await a.getByTestId('back').click();
    const fits = async () => {
      const box = await dialog.boundingBox();
      assert.ok(box.x >= 0 && box.x + box.width <= 360, `the dialog fits 360 px: ${JSON.stringify(box)}`);
      for (const id of ['confirm-ok', 'confirm-cancel']) {
        const bb = await a.getByTestId(id).boundingBox();
        assert.ok(bb.x >= box.x && bb.x + bb.width <= box.x + box.width && bb.y + bb.height <= box.y + box.height, `${id} inside the dialog`);
      }
    };
    // The buttons' colours ease over a moment (.btn's transition): wait for the colour rather than read it once.
    const okColour = (want, why) => a.waitForFunction((c) => getComputedStyle(document.querySelector('[data-testid=confirm-ok]')).backgroundColor === c, want, { timeout: 3000 })
      .catch(async () => assert.fail(`${why}: ${await a.getByTestId('confirm-ok').evaluate((x) => getComputedStyle(x).backgroundColor)}`));
    const surface = () => dialog.evaluate((d) => getComputedStyle(d).backgroundColor);
    await openRemove();
    await fits();
    await okColour('rgb(192, 38, 45)', 'light: the "bad" red');
    assert.equal(await surface(), 'rgb(255, 255, 255)');
    await screenshot(a, 'confirm-remove-360');
    await a.emulateMedia({ colorScheme: 'dark' });
    await okColour('rgb(255, 123, 128)', 'dark: the dark theme\'s red');
    assert.notEqual(await surface(), 'rgb(255, 255, 255)', 'dark surface');
    await screenshot(a, 'confirm-remove-360-dark');
    await a.keyboard.press('Escape');
    await closed();
    await a.emulateMedia({ colorScheme: 'light' });
    await a.getByTestId('lang-select').selectOption('pt-BR');
    await openRemove();
    assert.equal(await a.getByTestId('confirm-text').textContent(), 'Remover Bob dos seus contatos?');
    assert.equal(await a.getByTestId('confirm-ok').textContent(), 'Remover');
    assert.equal(await a.getByTestId('confirm-cancel').textContent(), 'Cancelar');
    await fits();
    await screenshot(a, 'confirm-remove-360-pt');
    await a.emulateMedia({ colorScheme: 'dark' });
    await screenshot(a, 'confirm-remove-360-pt-dark');
    // "Remover" removes: the contact, and what was kept of the conversation.
    await a.getByTestId('confirm-ok').click();
    await closed();
    await contact(a, idB).waitFor({ state: 'detached' });
    assert.equal(await a.evaluate((id) => window.ponte.contacts.get(id) || null, idB), null, 'removed from the contact book');
    await until(async () => await stored() === 0, 'the kept messages went with the contact');
    await a.emulateMedia({ colorScheme: 'light' });
    await a.getByTestId('lang-select').selectOption('en');
    await a.setViewportSize({ width: 1280, height: 800 });
    await a.locator(`[data-testid=conversation][data-peer="${idB}"]`).click(); // back to the chat (the 360 px "back" left it)

    // "Clear everything on this device": Cancel keeps the contact and its messages; "Clear" deletes them, the ID stays.
    await saveContact(a, 'Bob again');
    await sendMessage(a, 'kept again');
    await until(async () => await stored() > 0, 'the message is kept for the saved contact again');
    const openClear = () => a.getByTestId('clear-all').click();
    await answerConfirm(a, openClear, { text: /^Delete all contacts, messages and settings from this device\? Your ID stays\.$/, action: 'Clear', confirm: false });
    await a.waitForTimeout(300);
    assert.equal(await contact(a, idB).count(), 1, 'Cancel keeps the contacts');
    assert.ok(await stored() > 0, 'Cancel keeps the messages');
    const reloaded = a.waitForEvent('load');
    await answerConfirm(a, openClear, { action: 'Clear', confirm: true });
    await reloaded;
    await a.waitForFunction(() => window.ponte && window.ponte.id, null, { timeout: 15000 });
    assert.equal(await a.evaluate(() => window.ponte.id), idA, 'the ID stays');
    assert.equal(await contact(a, idB).count(), 0, 'no contact left');
    assert.equal(await stored(), 0, 'no message left');
    assert.deepEqual(browserDialogs, [], 'no window.confirm()');
  });

  test('"keep history" off: nothing is stored for a saved contact', async () => {
    const a = await appPage(await browser(profile()), server.url);
    const b = await appPage(await browser(profile()), server.url);
    const idB = await b.evaluate(() => window.ponte.id);
    await a.getByTestId('keep-history').uncheck();
    await a.getByTestId('peer-id-input').fill(idB);
    await a.getByTestId('connect').click();
    await b.getByTestId('accept').click();
    await waitConnected(a);
    await saveContact(a, 'Bob');
    await a.getByTestId('message-input').fill('not kept');
    await a.getByTestId('message-input').press('Enter');
    await a.waitForSelector('[data-testid=message-status][data-status=delivered]');
    const stored = await a.evaluate(() => new Promise((resolve) => {
      const r = indexedDB.open('ponte');
      r.onsuccess = () => { const q = r.result.transaction('messages').objectStore('messages').count(); q.onsuccess = () => resolve(q.result); };
    }));
    assert.equal(stored, 0);
  });
});
