// The chat page: only the wiring. Each concern has its module (docs/web-client.md has the map):
//   status.js         server connection line and banner     share.js     my ID, share link, QR
//   notify.js         sound, notifications, tab title        requests.js  asking and being asked
//   conversations.js  conversations, pairings, the list      chathead.js  the open conversation's frame
//   composer.js       writing and sending files             callview.js  calls (call.js: state machine, media)
// They talk through the bus (bus.js), never by importing each other for that; the network modules (signaling.js,
// peer.js, files.js, pairing.js) import no UI module at all (tests/browser/unit.test.mjs checks it).
// All user-provided text goes through textContent; nothing from the network is ever parsed as HTML.

import { Signaling } from './signaling.js';
import { loadIdentity } from './identity.js';
import { detectLanguage, setLanguage, fillLanguageSelect, language, t } from './i18n.js';
import { $ } from './dom.js';
import { on } from './bus.js';
import { initStatus } from './status.js';
import { initShare } from './share.js';
import { initNotify } from './notify.js';
import { initRequests } from './requests.js';
import { initConversations } from './conversations.js';
import { initComposer } from './composer.js';
import { ContactBook } from './contactbook.js';
import { initContacts } from './contacts.js';
import { initHistory } from './history.js';
import { initVerify } from './verify.js';
import { initCalls } from './callview.js';

setLanguage(detectLanguage());
fillLanguageSelect($('#lang-select'));

const sig = new Signaling();
let convs = null; // set below; the status line asks it only once signaling runs
initStatus(sig, { liveChats: () => !!convs && convs.liveChats() });
initNotify();
initShare(sig);
const book = new ContactBook(sig);
initRequests(sig, {
  conversation: (peer) => convs.get(peer),
  autoAccepts: (peer, key) => book.autoAccepts(peer, key),
  isBlocked: (peer) => book.isBlocked(peer),
  contactName: (peer) => (book.get(peer) ? book.get(peer).name : null),
});
convs = initConversations(sig, { nameOf: (peer) => (book.get(peer) ? book.get(peer).name : null) });
initComposer({ current: convs.current });
const calls = initCalls({ conversation: (peer) => convs.get(peer), current: convs.current, nameOf: (peer) => (book.get(peer) ? book.get(peer).name : null) });

$('#theme-toggle').addEventListener('click', () => {
  const mode = window.ponteTheme ? window.ponteTheme.cycle() : 'auto';
  $('#theme-toggle').title = t(`theme.${mode}`);
});

// For tests and the curious: a read-only peek at the state.
let me = null;
on('me', (m) => { me = m; });
window.ponte = {
  get id() { return me && me.id; },
  get language() { return language(); },
  conversation: (peer) => convs.get(peer),
  signaling: sig,
  get identityKey() { return sig.identity && sig.identity.key; },
  contacts: book,
  // Calls (call.js): what the call tests drive and read.
  calls,
  startCall: async (peer, { video = true } = {}) => {
    const c = convs.get(peer);
    if (!c || c.closed) throw new Error(`no open conversation with ${peer}`);
    return (await calls.start(c.link, { video })).toJSON();
  },
  callState: () => (calls.last ? calls.last.toJSON() : null),
  acceptCall: () => calls.accept(),
  declineCall: () => calls.decline(),
  hangUp: () => calls.hangup(),
  setMuted: (on) => calls.setMuted(on),
  setCameraOff: (off) => calls.setCameraOff(off),
  callStats: async () => {
    const call = calls.call || calls.last;
    if (!call || !call.link.pc) return null;
    const s = await calls.media.stats(call, null);
    return { outbound: s.outbound, inbound: s.inbound, rtt: s.rtt, path: s.path, state: call.state };
  },
  callTracks: () => (calls.last ? calls.last.tracks.map((x) => ({ kind: x.kind, label: x.label, readyState: x.readyState, enabled: x.enabled })) : []),
  callPc: () => (calls.last ? calls.last.link.pc : null),
  // Tests only: how long an outgoing call rings before it ends `unanswered` (default RING_MS, 30 s; the callee gives
  // up RING_GRACE_MS after its own value). Applies to the calls placed or received after it; nothing in the page
  // calls it, so a person never meets a shorter ring.
  setRingTimeout: (ms) => { calls.ringMs = ms; },
};

// The lasting identity (identity.js) before the first hello; without one the page is anonymous and share.js says why.
Promise.all([loadIdentity(), book.load()]).then(([id]) => {
  if (id.key) sig.identity = id;
  else sig.identityUnavailable = id.reason;
  initContacts(sig, book, { conversation: (peer) => convs.get(peer), history: initHistory(book) });
  initVerify(sig, book, { conversation: (peer) => convs.get(peer) });
  sig.start();
});
