// A conversation's pairing with the server: whether the server still pairs the two IDs (signals can pass), the
// ticket that re-pairs them after a server restart, and the re-pairing by chat channel when the ticket is gone.
// Pure state (no DOM, no sockets): the conversation owns one, and the page asks it what to do next.

export class Pairing {
  /**
   * @param {object} o
   * @param {boolean} o.initiator  this side sent the original request (it is the one that re-requests)
   * @param {string|null} [o.ticket] from `paired`
   */
  constructor({ initiator, ticket = null }) {
    this.initiator = !!initiator;
    this.serverPaired = true;
    this.ticket = typeof ticket === 'string' ? ticket : null;
    this.expectRejoin = false; // the other side told us (over the chat channel) to re-pair
    this.rejoinRequested = false; // our silent re-request is in flight
    this.ended = false;
  }

  /** `paired` for this peer again. Returns true if this restored a pairing the server had lost. */
  paired(ticket) {
    const restored = !this.serverPaired;
    this.serverPaired = true;
    this.expectRejoin = false;
    this.rejoinRequested = false;
    this.setTicket(ticket);
    return restored;
  }

  /** A `welcome`: `alive` says whether the new session still pairs us (its `peers` list). */
  welcomed(alive) {
    if (!this.ended) this.serverPaired = !!alive;
  }

  /** The ticket to present in `rejoin`, when the server lost the pairing; else null. */
  ticketToPresent() {
    return !this.ended && !this.serverPaired && this.ticket ? this.ticket : null;
  }

  setTicket(ticket) {
    if (!this.ended && typeof ticket === 'string' && ticket) this.ticket = ticket;
  }

  /** The ticket no longer works (too old) or names an ID that is gone. */
  dropTicket() {
    this.ticket = null;
  }

  /** Re-pair the old way: the initiator re-requests, the other side accepts by itself. */
  expectRejoinByRequest() {
    if (this.ended) return;
    this.serverPaired = false;
    this.expectRejoin = true;
  }

  /** Whether this side should send the silent `connect` now (then call `requested()`). */
  shouldRequest(signalingOpen) {
    return !this.ended && !this.serverPaired && this.expectRejoin && !this.rejoinRequested && this.initiator && !!signalingOpen;
  }

  requested() {
    this.rejoinRequested = true;
  }

  /** An incoming request from this peer is the re-pairing we expect: accept it without asking. */
  autoAccepts() {
    return !this.ended && this.expectRejoin;
  }

  /** An ended conversation is never re-paired after a restart. */
  end() {
    this.ended = true;
    this.ticket = null;
  }
}
