// History on the device and messages written while the contact is offline, in Chromium with persistent profiles
// against the mock server: close and reopen both browsers → the conversation is still there; a message written to
// an offline contact waits and is delivered (✓✓) when both are online; "delete conversation" forgets it.
//
//   cd tests/browser && node --test history.test.mjs      (needs /usr/bin/chromium; no ponte binary)

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { requirements, sendMessage, waitForMessage } from './lib.mjs';
import { startMockServer, newIdentities } from './mock-server.mjs';
import { appPage, saveContact, profiles, connectPages, answerConfirm } from './profiles.mjs';

const missing = requirements({ needPonte: false });

const texts = (page) => page.locator('[data-testid=message-list] [data-testid=message-text]').allTextContents();

describe('history on the device', { skip: missing || false }, () => {
  let server;
  const { profile, browser, close: closeProfiles } = profiles();

  before(async () => { server = await startMockServer({ identities: newIdentities(), grace: 500 }); });
  after(async () => {
    await closeProfiles();
    if (server) await server.close();
  });

  test('messages survive closing both browsers; one written offline is delivered later with a receipt', async () => {
    const dirA = profile();
    const dirB = profile();
    let ctxA = await browser(dirA);
    let ctxB = await browser(dirB);
    let a = await appPage(ctxA, server.url);
    let b = await appPage(ctxB, server.url);
    const { idA, idB } = await connectPages(a, b);
    await sendMessage(a, 'before saving');
    await waitForMessage(b, 'before saving');
    await saveContact(a, 'Bob');
    await saveContact(b, 'Alice');
    await sendMessage(b, 'after saving');
    await waitForMessage(a, 'after saving');
    await a.waitForSelector('[data-testid=message-status][data-status=delivered]');
    // A file: its card's metadata is kept (name, size), never its content.
    await a.evaluate((peer) => window.ponte.conversation(peer).files.offer(new File(['x'.repeat(1000)], 'notes.txt', { type: 'text/plain' })), idB);
    await b.locator('[data-testid=file-accept]').click();
    await b.waitForSelector('[data-testid=file-transfer][data-state=done]');
    await a.waitForSelector('[data-testid=file-transfer][data-state=done]');
    await ctxA.close();
    await ctxB.close();

    // A alone: Bob is offline; clicking him shows the kept conversation and lets A write.
    ctxA = await browser(dirA);
    a = await appPage(ctxA, server.url);
    await a.locator(`[data-testid=contact][data-peer="${idB}"] [data-testid=contact-connect]`).click();
    await a.getByTestId('history-end').waitFor();
    assert.deepEqual(await texts(a), ['before saving', 'after saving']);
    assert.match(await a.getByTestId('history-file').textContent(), /notes\.txt \(1000 B\)/);
    await sendMessage(a, 'written while you were away');
    const queued = a.locator('[data-testid=message]', { hasText: 'written while you were away' }).getByTestId('message-status');
    assert.equal(await queued.getAttribute('data-status'), 'queued');

    // B comes back; A connects in one click; the waiting message is delivered and both see the whole conversation.
    ctxB = await browser(dirB);
    b = await appPage(ctxB, server.url);
    await a.waitForSelector(`[data-testid=contact][data-peer="${idB}"][data-online=true]`);
    await a.locator(`[data-testid=contact][data-peer="${idB}"] [data-testid=contact-connect]`).click();
    await b.locator(`[data-testid=incoming-request][data-peer="${idA}"]`).waitFor();
    assert.match(await b.getByTestId('incoming-request').textContent(), /Alice/, 'the card names the contact');
    await b.getByTestId('accept').click();
    await waitForMessage(b, 'written while you were away');
    await a.waitForSelector('[data-testid=message]:has-text("written while you were away") [data-testid=message-status][data-status=delivered]');
    assert.deepEqual(await texts(b), ['before saving', 'after saving', 'written while you were away']);
    assert.match(await b.getByTestId('history-file').textContent(), /notes\.txt/, 'the receiver keeps the card too');
    assert.deepEqual(await texts(a), ['before saving', 'after saving', 'written while you were away'], 'no duplicate');

    // "Delete conversation" asks in the page's dialog (never window.confirm()): Cancel keeps the messages, "Delete"
    // forgets them.
    const browserDialogs = [];
    a.on('dialog', (d) => { browserDialogs.push(d.message()); d.dismiss(); });
    const stored = () => a.evaluate((peer) => new Promise((resolve) => {
      const r = indexedDB.open('ponte');
      r.onsuccess = () => { const q = r.result.transaction('messages').objectStore('messages').index('peer').count(peer); q.onsuccess = () => resolve(q.result); };
    }), idB);
    const before = await stored();
    assert.ok(before >= 3, `the conversation is kept (${before} records)`);
    const openDelete = async () => {
      await a.locator(`[data-testid=contact][data-peer="${idB}"] [data-testid=contact-menu]`).click();
      await a.locator(`[data-testid=contact][data-peer="${idB}"] [data-testid=contact-delete-history]`).click();
    };
    await answerConfirm(a, openDelete, { text: /^Delete the messages with Bob from this device\?$/, action: 'Delete', confirm: false });
    await a.waitForTimeout(300);
    assert.equal(await stored(), before, 'Cancel keeps the messages');
    await answerConfirm(a, openDelete, { action: 'Delete', confirm: true });
    for (let i = 0; i < 50 && await stored() > 0; i++) await a.waitForTimeout(100);
    assert.equal(await stored(), 0, '"Delete" forgets them');
    assert.deepEqual(browserDialogs, [], 'no window.confirm()');
  });
});
