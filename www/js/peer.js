// One RTCPeerConnection per conversation.
//
// Perfect negotiation (glare-safe): `paired.initiator` is the impolite side, the other one is polite and rolls back
// its own offer on a collision. Trickle ICE goes through signaling as `{description}` / `{candidate}` payloads.
// When the path drops the link restarts ICE (with fresh TURN credentials) and reports "reconnecting"; a link that
// never connects, or cannot be restored, reports "failed" with a diagnosis the UI can explain. While signaling is
// down (server restarting) a restart waits, still "reconnecting", until the app calls `resume()` on re-pairing:
// an offer sent into the void would leave the connection stuck, and failing then would be premature.
//
// Events: `state` {state: connecting|connected|reconnecting|failed, diagnosis?}, `chat-open`, `chat-close`,
// `chat-message` {msg}, `file-channel` {channel}, `stats` {path, rtt, local, remote}, `security` {code}, `closed`.

import { digest } from './sha256.js';

const CONNECT_TIMEOUT_MS = 25000;
const RESTART_AFTER_DISCONNECT_MS = { impolite: 2500, polite: 4500 };
const MAX_RESTARTS = 4;
// After a re-pairing the polite side waits this long for the initiator's ICE-restart offer before making its own.
const RESUME_FALLBACK_MS = 4000;
const STATS_EVERY_MS = 2000;

export class PeerLink extends EventTarget {
  /**
   * @param {object} o
   * @param {string} o.peer         the other side's ID
   * @param {boolean} o.initiator   true on the side that got `paired{initiator:true}` (impolite)
   * @param {RTCIceServer[]} o.iceServers
   * @param {(data:any)=>boolean} o.signal  send a payload to the peer through signaling; false if it could not
   * @param {()=>boolean} [o.canSignal]  whether signaling to the peer works right now (connected and paired)
   */
  constructor({ peer, initiator, iceServers, signal, canSignal }) {
    super();
    this.peer = peer;
    this.initiator = initiator;
    this.polite = !initiator;
    this.iceServers = iceServers || [];
    this.signal = signal;
    this.canSignal = canSignal || (() => true);
    this.deferred = false; // a restart is waiting for signaling to come back
    this.state = 'connecting';
    this.everConnected = false;
    this.makingOffer = false;
    this.ignoreOffer = false;
    this.srdAnswerPending = false;
    this.restarts = 0;
    this.pendingRestart = false;
    this.chat = null;
    this.stats = null;
    this.remotePath = null;
    this.iceErrors = [];
    this.gathered = new Set();
    this.remoteCandidates = 0;
    this.securityCode = null;
    this.closed = false;
    this.beforeAnswer = null; // async () => void, run between a remote offer and our answer (call.js)
    // First time each setup step happened, ms since this link was made (diagnostics and benchmarks read it).
    this.t0 = performance.now();
    this.createdAt = Date.now();
    this.timeline = {};
    this.pc = this.makePc();
    this.connectTimer = setTimeout(() => this.onConnectTimeout(), CONNECT_TIMEOUT_MS);
    this.statsTimer = setInterval(() => this.pollStats(), STATS_EVERY_MS);
  }

  makePc() {
    const pc = new RTCPeerConnection({ iceServers: this.iceServers });
    pc.onnegotiationneeded = async () => {
      try {
        this.makingOffer = true;
        await pc.setLocalDescription();
        this.mark(pc.localDescription.type + '-sent');
        this.signal({ description: pc.localDescription.toJSON() });
      } catch (e) {
        console.warn('ponte: negotiation failed', e);
      } finally {
        this.makingOffer = false;
      }
    };
    pc.onicecandidate = ({ candidate }) => {
      if (candidate) {
        this.mark('first-candidate');
        if (candidate.type) {
          this.gathered.add(candidate.type);
          this.mark(candidate.type + '-candidate');
        }
        this.signal({ candidate: candidate.toJSON() });
      } else {
        this.signal({ candidate: null });
      }
    };
    pc.onicecandidateerror = (ev) => {
      // 701: the STUN/TURN server could not be reached; 401/403: credentials or policy; 486: allocation quota.
      if (this.iceErrors.length < 20) {
        this.iceErrors.push({ url: ev.url || '', code: ev.errorCode, text: ev.errorText || '' });
      }
    };
    pc.onconnectionstatechange = () => this.onPcState();
    pc.oniceconnectionstatechange = () => {
      this.mark('ice-' + pc.iceConnectionState);
      // Chromium reaches iceConnectionState "failed"/"disconnected" a little before connectionState does.
      if (pc.iceConnectionState === 'failed') this.onPcState();
    };
    pc.ondatachannel = ({ channel }) => {
      if (channel.label === 'chat') this.setupChat(channel);
      else this.dispatchEvent(new CustomEvent('file-channel', { detail: { channel } }));
    };
    if (this.initiator) this.setupChat(pc.createDataChannel('chat', { ordered: true }));
    return pc;
  }

  setupChat(ch) {
    this.chat = ch;
    ch.onopen = () => {
      this.mark('chat-open');
      this.dispatchEvent(new CustomEvent('chat-open'));
      this.computeSecurityCode();
    };
    ch.onclose = () => this.dispatchEvent(new CustomEvent('chat-close'));
    ch.onmessage = (ev) => {
      if (typeof ev.data !== 'string') return;
      let msg;
      try { msg = JSON.parse(ev.data); } catch { return; }
      if (msg && typeof msg.t === 'string') this.dispatchEvent(new CustomEvent('chat-message', { detail: { msg } }));
    };
    if (ch.readyState === 'open') ch.onopen();
  }

  mark(step) {
    if (!(step in this.timeline)) this.timeline[step] = Math.round(performance.now() - this.t0);
  }

  get chatOpen() {
    return !!this.chat && this.chat.readyState === 'open';
  }

  /** Send a JSON message over the chat channel; false if the channel is not open. */
  send(msg) {
    if (!this.chatOpen) return false;
    try {
      this.chat.send(JSON.stringify(msg));
      return true;
    } catch {
      return false;
    }
  }

  createFileChannel(label) {
    return this.pc.createDataChannel(label, { ordered: true });
  }

  /** A payload from the peer, via signaling. */
  async onSignal(data) {
    if (this.closed || !data || typeof data !== 'object') return;
    const pc = this.pc;
    try {
      if (data.description) {
        const description = data.description;
        const readyForOffer = !this.makingOffer && (pc.signalingState === 'stable' || this.srdAnswerPending);
        const offerCollision = description.type === 'offer' && !readyForOffer;
        this.ignoreOffer = !this.polite && offerCollision;
        if (this.ignoreOffer) return;
        this.srdAnswerPending = description.type === 'answer';
        await pc.setRemoteDescription(description); // rolls back our own offer when polite
        this.mark(description.type + '-received');
        this.srdAnswerPending = false;
        if (description.type === 'offer') {
          // call.js puts its tracks on the transceivers this offer made, so that the answer already sends media.
          if (this.beforeAnswer) {
            try { await this.beforeAnswer(); } catch (e) { console.warn('ponte: beforeAnswer', e); }
          }
          await pc.setLocalDescription();
          this.mark(pc.localDescription.type + '-sent');
          this.signal({ description: pc.localDescription.toJSON() });
        }
        this.computeSecurityCode();
      } else if ('candidate' in data) {
        if (data.candidate) {
          this.remoteCandidates += 1;
          this.mark('first-remote-candidate');
        }
        try {
          await pc.addIceCandidate(data.candidate || undefined);
        } catch (e) {
          if (!this.ignoreOffer) console.warn('ponte: bad remote candidate', e);
        }
      }
    } catch (e) {
      console.warn('ponte: signal handling failed', e);
    }
  }

  setState(state, diagnosis) {
    if (this.state === state && !diagnosis) return;
    this.state = state;
    this.dispatchEvent(new CustomEvent('state', { detail: { state, diagnosis } }));
  }

  onPcState() {
    if (this.closed) return;
    const pc = this.pc;
    const s = pc.connectionState;
    const ice = pc.iceConnectionState;
    this.mark('pc-' + s);
    if (s === 'connected') {
      this.everConnected = true;
      this.restarts = 0;
      clearTimeout(this.connectTimer);
      clearTimeout(this.disconnectTimer);
      this.setState('connected');
      this.pollStats();
    } else if (s === 'disconnected' || ice === 'disconnected') {
      // Before the first connection there is nothing to restore: the connect timeout decides.
      if (!this.everConnected) return;
      this.setState('reconnecting');
      clearTimeout(this.disconnectTimer);
      this.disconnectTimer = setTimeout(() => {
        if (this.pc.connectionState !== 'connected') this.restart();
      }, this.polite ? RESTART_AFTER_DISCONNECT_MS.polite : RESTART_AFTER_DISCONNECT_MS.impolite);
    } else if (s === 'failed' || ice === 'failed') {
      if (this.everConnected && this.restarts < MAX_RESTARTS) {
        this.setState('reconnecting');
        this.restart();
      } else {
        this.fail();
      }
    } else if (s === 'connecting' || s === 'new') {
      if (this.everConnected) this.setState('reconnecting');
    }
  }

  onConnectTimeout() {
    if (this.closed || this.pc.connectionState === 'connected') return;
    if (this.everConnected && !this.canSignal()) { this.deferred = true; return; }
    this.fail();
  }

  async fail() {
    clearTimeout(this.connectTimer);
    if (this.state === 'failed') return;
    const diagnosis = await this.diagnose();
    if (this.pc.connectionState === 'connected') return;
    this.setState('failed', diagnosis);
  }

  /** Why did it fail? Collected from what was gathered, ICE errors and the configured servers. */
  async diagnose() {
    const urls = this.iceServers.flatMap((s) => (Array.isArray(s.urls) ? s.urls : [s.urls])).filter(Boolean);
    const turnUrls = urls.filter((u) => /^turns?:/i.test(u));
    const stunUrls = urls.filter((u) => /^stun:/i.test(u));
    const local = { host: 0, srflx: 0, prflx: 0, relay: 0, relayProtocols: new Set() };
    try {
      const stats = await this.pc.getStats();
      stats.forEach((r) => {
        if (r.type === 'local-candidate') {
          local[r.candidateType] = (local[r.candidateType] || 0) + 1;
          if (r.candidateType === 'relay' && r.relayProtocol) local.relayProtocols.add(r.relayProtocol);
        }
      });
    } catch { /* closed */ }
    for (const t of this.gathered) if (!local[t]) local[t] = 1;
    const failedTurn = this.iceErrors.filter((e) => /^turns?:/i.test(e.url));
    const authErrors = this.iceErrors.filter((e) => e.code === 401 || e.code === 403 || e.code === 437 || e.code === 441);
    let reason;
    if (!turnUrls.length) reason = 'no_turn';
    else if (!local.relay && authErrors.length) reason = 'turn_refused';
    else if (!local.relay) reason = 'turn_unreachable';
    else if (!this.remoteCandidates) reason = 'no_remote';
    else reason = 'relay_no_path';
    return {
      reason,
      turnUrls,
      stunUrls,
      failedTurnUrls: [...new Set(failedTurn.map((e) => e.url))],
      localTypes: Object.keys(local).filter((k) => k !== 'relayProtocols' && local[k]),
      remoteCandidates: this.remoteCandidates,
      everConnected: this.everConnected,
    };
  }

  /** ICE restart, with fresh credentials if the app has them. */
  restart(iceServers) {
    if (this.closed) return;
    // Always hand the latest servers (the app refreshes TURN credentials before they expire).
    if (iceServers) this.iceServers = iceServers;
    if (this.everConnected && !this.canSignal()) {
      // The offer could not reach the peer: wait for `resume()` instead of failing meanwhile.
      this.deferred = true;
      clearTimeout(this.connectTimer);
      this.setState('reconnecting');
      return;
    }
    this.deferred = false;
    try { this.pc.setConfiguration({ iceServers: this.iceServers }); } catch (e) { console.warn('ponte: setConfiguration', e); }
    this.restarts += 1;
    clearTimeout(this.connectTimer);
    this.connectTimer = setTimeout(() => this.onConnectTimeout(), CONNECT_TIMEOUT_MS);
    if (this.state === 'failed') this.setState(this.everConnected ? 'reconnecting' : 'connecting');
    this.iceErrors = [];
    this.pc.restartIce(); // fires negotiationneeded → offer with new ICE credentials
  }

  /**
   * Signaling is back and the pairing re-made (after a server restart): bring the path back if it is down, with
   * the new ICE servers (the old TURN allocations died with the server). The initiator (impolite) restarts ICE;
   * the polite side waits for its offer and restarts itself only if none comes.
   */
  async resume(iceServers) {
    if (this.closed) return;
    if (iceServers) this.iceServers = iceServers;
    try { this.pc.setConfiguration({ iceServers: this.iceServers }); } catch (e) { console.warn('ponte: setConfiguration', e); }
    this.deferred = false;
    if (this.pc.connectionState === 'connected') return;
    // An offer made while the server was away never reached the peer: take it back, or negotiation stays stuck.
    if (this.pc.signalingState === 'have-local-offer' && !this.makingOffer) {
      try { await this.pc.setLocalDescription({ type: 'rollback' }); } catch (e) { console.warn('ponte: rollback', e); }
    }
    if (this.closed || this.pc.connectionState === 'connected') return;
    this.restarts = 0;
    if (!this.polite) { this.restart(); return; }
    this.setState('reconnecting');
    clearTimeout(this.resumeTimer);
    this.resumeTimer = setTimeout(() => {
      if (!this.closed && this.pc.connectionState !== 'connected' && this.pc.signalingState === 'stable') this.restart();
    }, RESUME_FALLBACK_MS);
  }

  /** The user pressed "try again". */
  retry(iceServers) {
    this.restarts = 0;
    this.restart(iceServers);
  }

  async pollStats() {
    if (this.closed || this.pc.connectionState === 'closed') return;
    let stats;
    try { stats = await this.pc.getStats(); } catch { return; }
    let pair = null;
    stats.forEach((r) => {
      if (r.type === 'transport' && r.selectedCandidatePairId) pair = stats.get(r.selectedCandidatePairId) || pair;
    });
    if (!pair) {
      stats.forEach((r) => {
        if (r.type === 'candidate-pair' && r.nominated && r.state === 'succeeded') pair = r;
      });
    }
    if (!pair) return;
    const l = stats.get(pair.localCandidateId) || {};
    const r = stats.get(pair.remoteCandidateId) || {};
    const local = { type: l.candidateType, protocol: l.protocol, relayProtocol: l.relayProtocol, address: l.address, port: l.port };
    const remote = { type: r.candidateType, protocol: r.protocol, address: r.address, port: r.port };
    const path = describePath(l, r, this.remotePath, this.turnHosts());
    const rtt = typeof pair.currentRoundTripTime === 'number' ? Math.round(pair.currentRoundTripTime * 1000) : null;
    this.stats = { path, rtt, local, remote, bytesSent: pair.bytesSent, bytesReceived: pair.bytesReceived };
    this.dispatchEvent(new CustomEvent('stats', { detail: this.stats }));
  }

  turnHosts() {
    const hosts = new Set();
    for (const s of this.iceServers) {
      for (const u of Array.isArray(s.urls) ? s.urls : [s.urls]) {
        const m = /^turns?:\[?([^\]?]+?)\]?(?::\d+)?(?:\?|$)/i.exec(u || '');
        if (m) hosts.add(m[1]);
      }
    }
    return hosts;
  }

  /** What the peer reported about its own end of the selected pair. */
  setRemotePath(p) {
    const next = p && typeof p === 'object' ? { type: String(p.type || '').slice(0, 16), relayProtocol: String(p.relayProtocol || '').slice(0, 8) } : null;
    const same = JSON.stringify(next) === JSON.stringify(this.remotePath);
    this.remotePath = next;
    // Re-read the stats now, so the label follows at once instead of at the next poll (up to 2 s of a stale path).
    if (!same) this.pollStats();
  }

  async computeSecurityCode() {
    const l = this.pc.localDescription && fingerprint(this.pc.localDescription.sdp);
    const r = this.pc.remoteDescription && fingerprint(this.pc.remoteDescription.sdp);
    if (!l || !r) return;
    const code = await securityCode(l, r);
    if (code !== this.securityCode) {
      this.securityCode = code;
      this.dispatchEvent(new CustomEvent('security', { detail: { code } }));
    }
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.connectTimer);
    clearTimeout(this.disconnectTimer);
    clearTimeout(this.resumeTimer);
    clearInterval(this.statsTimer);
    try { this.pc.close(); } catch { /* ignore */ }
    // pc.close() fires no state event: tell whoever rides this link (a call) that it is gone.
    this.dispatchEvent(new CustomEvent('closed'));
  }
}

/**
 * The selected pair as the UI names it: `{kind:'direct', local, remote}` (candidate types) or `{kind:'relay', side,
 * proto}`: `side` "local" when this browser relays (`proto` from its own stats), "remote" when the other one does
 * (its candidate is a relay one, has a TURN server's address, or is peer-reflexive and its `path` message says
 * it relays). Only the other side
 * knows its transport to the relay (our stats show its relay address, never how it got there): `proto` is what
 * its `path` message said, or null until that arrives, never a guess.
 * @param {object} l  local candidate stats   @param {object} r  remote candidate stats
 * @param {{type:string, relayProtocol:string}|null} remotePath  the peer's last `path` message
 * @param {Set<string>} turnHosts  the TURN servers' hosts
 */
export function describePath(l, r, remotePath, turnHosts) {
  if (l.candidateType === 'relay') return { kind: 'relay', side: 'local', proto: (l.relayProtocol || 'udp').toLowerCase() };
  const remoteSays = remotePath && remotePath.type === 'relay';
  // A peer-reflexive candidate may well be its relay address (learned from a check before the candidate came);
  // a host or srflx one is not, whatever an older `path` message said.
  const unsure = !r.candidateType || r.candidateType === 'prflx';
  if (r.candidateType === 'relay' || (r.address && turnHosts.has(r.address)) || (unsure && remoteSays)) {
    return { kind: 'relay', side: 'remote', proto: (remoteSays && remotePath.relayProtocol.toLowerCase()) || null };
  }
  return { kind: 'direct', local: l.candidateType, remote: r.candidateType };
}

/** The DTLS certificate fingerprint from an SDP (`a=fingerprint:sha-256 AB:CD:...`), normalised. */
export function fingerprint(sdp) {
  const m = /^a=fingerprint:(\S+) ([0-9A-Fa-f:]+)/m.exec(sdp || '');
  return m ? `${m[1].toLowerCase()} ${m[2].toUpperCase()}` : null;
}

/**
 * A short code both people can compare: SHA-256 over both fingerprints (sorted, so both sides get the same),
 * shown as 12 digits in three groups. A man in the middle would have to match 40 bits of it.
 */
export async function securityCode(fpA, fpB) {
  const [a, b] = [fpA, fpB].sort();
  const d = new Uint8Array(await digest(new TextEncoder().encode(`ponte-sas-v1|${a}|${b}`)));
  let n = 0n;
  for (let i = 0; i < 8; i++) n = (n << 8n) | BigInt(d[i]);
  const digits = (n % 10n ** 12n).toString().padStart(12, '0');
  return `${digits.slice(0, 4)} ${digits.slice(4, 8)} ${digits.slice(8)}`;
}
