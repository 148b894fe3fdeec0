// Voice and video calls: the call state machine and the media on the pair's RTCPeerConnection. A network module: no
// DOM, no UI imports; `Calls` is an EventTarget and the UI (callview.js) listens.
//
// One call at a time per page. The call messages travel on the conversation's chat data channel (JSON `t` messages,
// like `msg`/`ack`), never through the server:
//   {t:"call", id, video}      caller → callee: invite          {t:"call-ringing", id}  callee → caller: it rings
//   {t:"call-accept", id}      callee → caller                  {t:"call-decline", id}  callee → caller
//   {t:"call-busy", id}        callee → caller: in another call {t:"call-end", id, reason}  either side
//   {t:"call-media", id, muted, cameraOff}  either side, during the call: my microphone / camera state
// A message whose id is not the current call's is stale and ignored; a new invite during a call gets `call-busy`.
//
// Media ride the conversation's existing RTCPeerConnection (one ICE path, already direct or relayed: no second
// TURN allocation, and the path label is the call's). The callee, on accepting, adds its transceivers
// (audio, and video for a video call) → perfect negotiation in peer.js sends the offer; the caller, which got its
// media when it pressed "call", puts its tracks on those transceivers between setRemoteDescription(offer) and the
// answer (PeerLink `beforeAnswer`), so one offer/answer carries media both ways. Mute and camera-off use
// `sender.replaceTrack(null)`: the sender stops sending RTP at once and nothing is renegotiated (camera-off also
// stops the camera track, so its light goes off; camera-on asks for a new one). Hang-up stops every local track
// and the side that hangs up stops the call's transceivers (one renegotiation); the other side only stops its
// tracks (its transceivers stop with that offer).
//
// States: idle → outgoing | incoming → connecting → active → ended (with a reason); see docs/web-client.md.

export const RING_MS = 30000;
// The callee gives up a little after the caller would: a lost `call-end` must not leave it ringing forever.
export const RING_GRACE_MS = 5000;
const ID_RE = /^[\w-]{1,40}$/;

function randomId() {
  const r = globalThis.crypto.getRandomValues(new Uint8Array(8));
  return [...r].map((b) => b.toString(16).padStart(2, '0')).join('');
}

/** One call. Its fields are read by the UI and the tests; only `Calls` changes them. */
export class Call {
  constructor({ id, link, dir, video }) {
    this.id = id;
    this.link = link;
    this.peer = link.peer;
    this.dir = dir; // 'out' | 'in'
    this.video = !!video;
    this.state = dir === 'out' ? 'outgoing' : 'incoming';
    this.ringing = false; // outgoing: the callee said it rings
    this.reason = null;
    this.error = null;
    this.muted = false;
    this.cameraOff = !video;
    this.sharing = false;
    this.facing = 'user';
    this.remoteMuted = false; // what the other side says of its own mute / camera (call-media)
    this.remoteCameraOff = !video;
    this.startedAt = 0; // when it became active (ms since epoch)
    this.endedAt = 0;
    this.createdAt = Date.now();
    this.local = { audio: null, video: null }; // the tracks being sent (or ready to be)
    this.tracks = []; // every local track this call created, replaced ones too (hang-up stops them all)
    this.transceivers = [];
    this.remote = null; // MediaStream of the remote tracks (browser only)
    this.timer = 0;
  }

  get live() {
    return this.state !== 'ended';
  }

  /** Seconds since it became active. */
  get duration() {
    if (!this.startedAt) return 0;
    return Math.max(0, Math.floor(((this.endedAt || Date.now()) - this.startedAt) / 1000));
  }

  /** A plain snapshot (tests read it through window.ponte.callState()). */
  toJSON() {
    return {
      id: this.id, peer: this.peer, dir: this.dir, video: this.video, state: this.state, ringing: this.ringing,
      reason: this.reason, error: this.error, muted: this.muted, cameraOff: this.cameraOff, sharing: this.sharing,
      facing: this.facing, duration: this.duration, remoteMuted: this.remoteMuted, remoteCameraOff: this.remoteCameraOff,
    };
  }
}

/**
 * The page's calls. `media` does the browser part (getUserMedia, transceivers, replaceTrack); the unit tests hand a
 * fake one and drive the state machine with messages.
 * Events: `change` {call} (any state or control change), `ended` {call} (once, with call.reason),
 * `busy-missed` {link, id} (an invite came while we were in another call).
 */
export class Calls extends EventTarget {
  constructor({ media = new BrowserMedia(), ringMs = RING_MS, newId = randomId, setTimer = (fn, ms) => setTimeout(fn, ms), clearTimer = (id) => clearTimeout(id) } = {}) {
    super();
    this.media = media;
    this.ringMs = ringMs;
    this.newId = newId;
    this.setTimer = setTimer;
    this.clearTimer = clearTimer;
    this.call = null; // the live call, if any
    this.last = null; // the last call (live or ended)
    if (media.setOwner) media.setOwner(this);
  }

  emitChange(call) {
    this.dispatchEvent(new CustomEvent('change', { detail: { call } }));
  }

  /** Place a call on `link` (a PeerLink whose chat channel is open). Resolves to the Call (maybe already ended). */
  async start(link, { video = true } = {}) {
    if (this.call) throw new Error('already in a call');
    const call = new Call({ id: this.newId(), link, dir: 'out', video });
    this.adopt(call);
    this.emitChange(call);
    try {
      await this.media.open(call);
    } catch (e) {
      this.end(call, 'media-error', { error: e && e.name ? e.name : String(e) });
      return call;
    }
    if (!call.live) return call; // hung up while the permission prompt was open
    if (!link.send({ t: 'call', id: call.id, video: call.video })) {
      this.end(call, 'gone');
      return call;
    }
    this.arm(call, this.ringMs, () => this.end(call, 'unanswered', { send: 'timeout' }));
    this.emitChange(call);
    return call;
  }

  adopt(call) {
    this.call = call;
    this.last = call;
    const link = call.link;
    // The conversation ending or its link failing ends the call.
    call.offLink = () => {
      link.removeEventListener('state', call.onState);
      link.removeEventListener('chat-close', call.onGone);
      link.removeEventListener('closed', call.onGone);
    };
    call.onGone = () => this.end(call, 'gone');
    call.onState = (ev) => { if (ev.detail && ev.detail.state === 'failed') this.end(call, 'gone'); };
    link.addEventListener('state', call.onState);
    link.addEventListener('chat-close', call.onGone);
    link.addEventListener('closed', call.onGone);
  }

  arm(call, ms, fn) {
    this.clearTimer(call.timer);
    call.timer = this.setTimer(fn, ms);
  }

  /** Accept the ringing call. */
  async accept() {
    const call = this.call;
    if (!call || call.state !== 'incoming') return;
    this.clearTimer(call.timer);
    call.state = 'connecting';
    this.emitChange(call);
    try {
      await this.media.open(call);
      if (!call.live) return;
      await this.media.addTransceivers(call);
    } catch (e) {
      this.end(call, 'media-error', { send: 'media', error: e && e.name ? e.name : String(e) });
      return;
    }
    if (!call.live) return;
    if (!call.link.send({ t: 'call-accept', id: call.id })) { this.end(call, 'gone'); return; }
    if (call.video && call.cameraOff) this.tellMedia(call); // glare: I took a video call with my voice-only media
    this.emitChange(call);
  }

  decline() {
    const call = this.call;
    if (!call || call.state !== 'incoming') return;
    call.link.send({ t: 'call-decline', id: call.id });
    this.end(call, 'rejected');
  }

  hangup() {
    const call = this.call;
    if (!call) return;
    if (call.state === 'incoming') { this.decline(); return; }
    this.end(call, call.state === 'outgoing' ? 'cancelled' : 'hangup', { send: call.state === 'outgoing' ? 'cancel' : 'hangup', stopTransceivers: true });
  }

  /** The remote media arrived: the call is up. */
  mediaFlowing(call) {
    if (call !== this.call || call.state !== 'connecting') return;
    call.state = 'active';
    call.startedAt = Date.now();
    this.emitChange(call);
  }

  /** A `call*` message from the chat channel of `link`. */
  receive(link, msg) {
    if (!msg || typeof msg.t !== 'string') return;
    const id = typeof msg.id === 'string' && ID_RE.test(msg.id) ? msg.id : null;
    if (!id) return;
    const call = this.call;
    if (msg.t === 'call') {
      if (call && call.id === id) return; // a duplicate
      if (call && call.live) {
        // Glare: both called each other at once. The greater id wins; the other side drops its own call and
        // takes the winner's, already holding its media. Neither sends anything more about the losing call.
        if (call.link === link && call.state === 'outgoing') {
          if (id < call.id) return; // ours wins: the other side will take it
          this.clearTimer(call.timer);
          call.id = id;
          call.dir = 'in';
          call.video = call.video || !!msg.video;
          call.remoteCameraOff = !msg.video;
          call.state = 'incoming';
          call.ringing = false;
          this.emitChange(call);
          this.accept();
          return;
        }
        link.send({ t: 'call-busy', id });
        this.dispatchEvent(new CustomEvent('busy-missed', { detail: { link, id, video: !!msg.video } }));
        return;
      }
      const c = new Call({ id, link, dir: 'in', video: !!msg.video });
      this.adopt(c);
      link.send({ t: 'call-ringing', id });
      this.arm(c, this.ringMs + RING_GRACE_MS, () => this.end(c, 'missed'));
      this.emitChange(c);
      return;
    }
    if (!call || call.id !== id || call.link !== link) return; // stale: an earlier call's, or another peer's
    switch (msg.t) {
      case 'call-ringing':
        if (call.state === 'outgoing' && !call.ringing) { call.ringing = true; this.emitChange(call); }
        break;
      case 'call-accept':
        if (call.state !== 'outgoing') return;
        this.clearTimer(call.timer);
        call.state = 'connecting';
        this.emitChange(call);
        // The offer (through the server) may have overtaken the accept (on the chat channel): media already here.
        if (call.remote && call.remote.getTracks().length) this.mediaFlowing(call);
        break;
      case 'call-media':
        call.remoteMuted = !!msg.muted;
        call.remoteCameraOff = !!msg.cameraOff;
        this.emitChange(call);
        break;
      case 'call-decline':
        if (call.state === 'outgoing') this.end(call, 'declined');
        break;
      case 'call-busy':
        if (call.state === 'outgoing') this.end(call, 'busy');
        break;
      case 'call-end':
        if (msg.reason === 'media') this.end(call, 'failed');
        else this.end(call, call.state === 'incoming' ? 'missed' : call.state === 'outgoing' ? 'declined' : 'remote-hangup');
        break;
      default:
    }
  }

  /** End `call` with `reason`; `send`: tell the peer (`call-end` with that reason). */
  end(call, reason, { send = null, error = null, stopTransceivers = false } = {}) {
    if (!call || !call.live) return;
    this.clearTimer(call.timer);
    if (send) call.link.send({ t: 'call-end', id: call.id, reason: send });
    call.state = 'ended';
    call.reason = reason;
    if (error) call.error = error;
    call.endedAt = Date.now();
    if (call.offLink) call.offLink();
    try { this.media.close(call, { stopTransceivers }); } catch (e) { console.warn('ponte: call media close', e); }
    if (this.call === call) this.call = null;
    this.emitChange(call);
    this.dispatchEvent(new CustomEvent('ended', { detail: { call } }));
  }

  // ------------------------------------------------------------ controls (the live call)

  async setMuted(on) {
    const call = this.call;
    if (!call) return;
    call.muted = !!on;
    this.emitChange(call); // the button follows the click at once; the sender follows a moment later
    await this.media.setMuted(call, call.muted);
    this.tellMedia(call);
    this.emitChange(call);
  }

  async setCameraOff(off) {
    const call = this.call;
    if (!call) return;
    try {
      await this.media.setCamera(call, !off);
      call.cameraOff = !!off;
      if (off) call.sharing = false;
    } catch (e) {
      call.error = e && e.name ? e.name : String(e);
    }
    this.tellMedia(call);
    this.emitChange(call);
  }

  /** Tell the other side my mute / camera state, so it shows my avatar instead of a frozen frame. */
  tellMedia(call) {
    if (call.live && call.state !== 'outgoing' && call.state !== 'incoming') {
      call.link.send({ t: 'call-media', id: call.id, muted: call.muted, cameraOff: call.cameraOff });
    }
  }

  async switchCamera() {
    const call = this.call;
    if (!call || call.cameraOff) return;
    const next = call.facing === 'user' ? 'environment' : 'user';
    try {
      await this.media.switchCamera(call, next);
      call.facing = next;
      call.sharing = false;
    } catch (e) {
      call.error = e && e.name ? e.name : String(e);
      if (!call.local.video) call.cameraOff = true; // the old camera is gone and no new one came: say it is off
    }
    this.emitChange(call);
  }

  async shareScreen(on) {
    const call = this.call;
    if (!call || !call.video) return;
    try {
      if (on) {
        await this.media.shareScreen(call, () => { if (call.sharing) this.shareScreen(false); });
        call.sharing = true;
        call.cameraOff = false;
      } else {
        call.sharing = false;
        await this.media.setCamera(call, !call.cameraOff);
      }
    } catch (e) {
      call.error = e && e.name ? e.name : String(e);
    }
    this.emitChange(call);
  }

  async useMicrophone(deviceId) {
    const call = this.call;
    if (!call) return;
    try { await this.media.useMicrophone(call, deviceId); } catch (e) { call.error = e && e.name ? e.name : String(e); }
    this.emitChange(call);
  }
}

// ---------------------------------------------------------------- the browser part

/** getUserMedia, transceivers and tracks on the link's RTCPeerConnection. */
export class BrowserMedia {
  constructor() {
    this.owner = null;
  }

  setOwner(calls) {
    this.owner = calls;
  }

  /** A remote track of the call arrived (or changed). */
  addRemote(call, tr) {
    const t = tr.receiver.track;
    if (t && !call.remote.getTracks().includes(t)) call.remote.addTrack(t);
    if (!this.owner) return;
    this.owner.mediaFlowing(call);
    this.owner.emitChange(call);
  }

  track(call, t) {
    call.tracks.push(t);
    return t;
  }

  async open(call) {
    const md = navigator.mediaDevices;
    if (!md || !md.getUserMedia) throw Object.assign(new Error('no getUserMedia'), { name: 'NotSupportedError' });
    const s = await md.getUserMedia({ audio: true, video: call.video ? { facingMode: call.facing, width: { ideal: 1280 }, height: { ideal: 720 } } : false });
    if (!call.live) { s.getTracks().forEach((t) => t.stop()); return; }
    call.local.audio = this.track(call, s.getAudioTracks()[0] || null);
    call.local.video = call.video ? this.track(call, s.getVideoTracks()[0] || null) : null;
    this.watch(call);
  }

  /** Listen for the remote tracks of this call on the link's connection. */
  watch(call) {
    if (call.onTrack) return;
    const pc = call.link.pc;
    call.remote = new MediaStream();
    call.onTrack = (ev) => {
      if (call.live && call.transceivers.includes(ev.transceiver)) this.addRemote(call, ev.transceiver);
    };
    pc.addEventListener('track', call.onTrack);
    // The caller's side: the callee's offer creates the transceivers; put our tracks on them before the answer.
    call.link.beforeAnswer = () => this.adoptOffered(call);
  }

  /** Callee: add the transceivers (sendrecv with our tracks) → negotiationneeded → offer. */
  async addTransceivers(call) {
    const pc = call.link.pc;
    const stream = new MediaStream([call.local.audio, call.local.video].filter(Boolean));
    for (const kind of call.video ? ['audio', 'video'] : ['audio']) {
      const t = call.local[kind];
      const tr = pc.addTransceiver(t || kind, { direction: 'sendrecv', streams: [stream] });
      call.transceivers.push(tr);
    }
  }

  /** Caller: the transceivers the callee's offer just made, one per kind; send our tracks on them. */
  async adoptOffered(call) {
    // Only the caller's side, once the call is placed (the offer may come before the accept).
    if (!call.live || call.dir !== 'out' || (call.state !== 'outgoing' && call.state !== 'connecting')) return;
    const pc = call.link.pc;
    for (const tr of pc.getTransceivers()) {
      if (call.transceivers.includes(tr) || tr.stopped || tr.currentDirection === 'stopped') continue;
      const kind = tr.receiver.track && tr.receiver.track.kind;
      if (kind !== 'audio' && kind !== 'video') continue;
      if (tr.sender.track || call.transceivers.some((x) => x.receiver.track.kind === kind)) continue;
      if (tr.currentDirection) continue; // negotiated before: not this call's
      call.transceivers.push(tr);
      const t = call.local[kind];
      tr.direction = 'sendrecv';
      if (t && !(kind === 'audio' && call.muted)) await tr.sender.replaceTrack(t);
      if (kind === 'video' && !call.video) tr.direction = 'recvonly';
      // Its track event fired during setRemoteDescription, before the transceiver was known to be this call's.
      this.addRemote(call, tr);
    }
  }

  sender(call, kind) {
    const tr = call.transceivers.find((x) => x.receiver.track && x.receiver.track.kind === kind && !x.stopped);
    return tr ? tr.sender : null;
  }

  async setMuted(call, muted) {
    const t = call.local.audio;
    if (t) t.enabled = !muted;
    const s = this.sender(call, 'audio');
    if (s) await s.replaceTrack(muted ? null : t);
  }

  async setCamera(call, on) {
    const s = this.sender(call, 'video');
    const old = call.local.video;
    if (!on) {
      if (s) await s.replaceTrack(null);
      if (old) old.stop();
      call.local.video = null;
      return;
    }
    const v = await navigator.mediaDevices.getUserMedia({ video: { facingMode: call.facing, width: { ideal: 1280 }, height: { ideal: 720 } } });
    const t = this.track(call, v.getVideoTracks()[0]);
    if (!call.live) { t.stop(); return; }
    if (s) await s.replaceTrack(t);
    if (old && old !== t) old.stop();
    call.local.video = t;
  }

  /**
   * The next camera: by device (the next `videoinput`, which works everywhere, fake devices included), else by
   * `facingMode` (phones that list one device per facing only after a permission).
   */
  async switchCamera(call, facing) {
    const s = this.sender(call, 'video');
    const old = call.local.video;
    const md = navigator.mediaDevices;
    const cams = (await md.enumerateDevices()).filter((d) => d.kind === 'videoinput' && d.deviceId);
    const cur = old ? old.getSettings().deviceId : null;
    const next = cams.length > 1 ? cams[(cams.findIndex((d) => d.deviceId === cur) + 1) % cams.length].deviceId : null;
    const size = { width: { ideal: 1280 }, height: { ideal: 720 } };
    const want = next ? { deviceId: { exact: next }, ...size } : { facingMode: { exact: facing }, ...size };
    let v;
    try {
      v = await md.getUserMedia({ video: want }); // the new camera first: no gap in the video
    } catch {
      // Some phones cannot open both cameras at once: let the old one go, then ask again (or for any camera).
      if (old) old.stop();
      call.local.video = null;
      try { v = await md.getUserMedia({ video: want }); } catch { v = await md.getUserMedia({ video: { facingMode: facing } }); }
    }
    const t = this.track(call, v.getVideoTracks()[0]);
    if (!call.live) { t.stop(); return; }
    if (s) await s.replaceTrack(t);
    if (old && old !== t) old.stop();
    call.local.video = t;
  }

  async shareScreen(call, onStopped) {
    const v = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false });
    const t = this.track(call, v.getVideoTracks()[0]);
    if (!call.live) { t.stop(); return; }
    t.addEventListener('ended', onStopped); // the browser's own "stop sharing" button
    const s = this.sender(call, 'video');
    if (s) await s.replaceTrack(t);
    if (call.local.video && call.local.video !== t) call.local.video.stop();
    call.local.video = t;
  }

  async useMicrophone(call, deviceId) {
    const a = await navigator.mediaDevices.getUserMedia({ audio: { deviceId: { exact: deviceId } } });
    const t = this.track(call, a.getAudioTracks()[0]);
    if (!call.live) { t.stop(); return; }
    t.enabled = !call.muted;
    const s = this.sender(call, 'audio');
    if (s && !call.muted) await s.replaceTrack(t);
    if (call.local.audio) call.local.audio.stop();
    call.local.audio = t;
  }

  close(call, { stopTransceivers }) {
    for (const t of call.tracks) { try { t.stop(); } catch { /* gone */ } }
    call.local = { audio: null, video: null };
    const link = call.link;
    if (call.onTrack && link.pc) link.pc.removeEventListener('track', call.onTrack);
    if (link.beforeAnswer) link.beforeAnswer = null;
    const usable = !link.closed && link.pc && link.pc.signalingState !== 'closed';
    for (const tr of call.transceivers) {
      try {
        if (!usable || tr.stopped) continue;
        tr.sender.replaceTrack(null).catch(() => {});
        if (stopTransceivers) tr.stop(); // negotiationneeded → the m-lines are rejected on both sides
      } catch { /* the connection is closing */ }
    }
  }

  /**
   * The call's RTP counters (its transceivers' mids only) and the path: what the quality indicator and the tests
   * read. Rates are over the interval since `prev` (the last result).
   */
  async stats(call, prev) {
    const pc = call.link.pc;
    const mids = new Set(call.transceivers.map((t) => t.mid).filter((m) => m !== null));
    const out = { audio: {}, video: {} };
    const inb = { audio: {}, video: {} };
    let rtt = null;
    const report = await pc.getStats();
    report.forEach((r) => {
      if ((r.type === 'outbound-rtp' || r.type === 'inbound-rtp') && (r.kind === 'audio' || r.kind === 'video')) {
        if (r.mid !== undefined && !mids.has(r.mid)) return;
        const dst = r.type === 'outbound-rtp' ? out[r.kind] : inb[r.kind];
        for (const k of ['packetsSent', 'bytesSent', 'framesEncoded', 'packetsReceived', 'bytesReceived', 'packetsLost', 'framesDecoded']) {
          if (typeof r[k] === 'number') dst[k] = (dst[k] || 0) + r[k];
        }
      }
      if (r.type === 'transport' && r.selectedCandidatePairId) {
        const p = report.get(r.selectedCandidatePairId);
        if (p && typeof p.currentRoundTripTime === 'number') rtt = Math.round(p.currentRoundTripTime * 1000);
      }
    });
    const now = Date.now();
    const res = { at: now, outbound: out, inbound: inb, rtt: rtt ?? (call.link.stats && call.link.stats.rtt), loss: null, bitrate: null, path: call.link.stats ? call.link.stats.path : null };
    if (prev && now > prev.at) {
      const sum = (o, k) => (o.audio[k] || 0) + (o.video[k] || 0);
      const b = sum(out, 'bytesSent') + sum(inb, 'bytesReceived');
      const pb = sum(prev.outbound, 'bytesSent') + sum(prev.inbound, 'bytesReceived');
      res.bitrate = Math.max(0, Math.round(((b - pb) * 8 * 1000) / (now - prev.at)));
      const dr = sum(inb, 'packetsReceived') - sum(prev.inbound, 'packetsReceived');
      const dl = Math.max(0, sum(inb, 'packetsLost') - sum(prev.inbound, 'packetsLost'));
      res.loss = dr + dl > 0 ? dl / (dr + dl) : 0;
    }
    return res;
  }
}

/** A quality level from a stats result: 'good' | 'fair' | 'poor' | 'unknown'. Pure (the unit tests feed it). */
export function qualityLevel({ rtt, loss } = {}) {
  if (rtt == null && loss == null) return 'unknown';
  if ((loss ?? 0) > 0.08 || (rtt ?? 0) > 600) return 'poor';
  if ((loss ?? 0) > 0.02 || (rtt ?? 0) > 250) return 'fair';
  return 'good';
}
