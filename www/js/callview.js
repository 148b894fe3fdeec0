// The call's face: the call buttons in the conversation header, the call panel (ringing, accept/decline, the videos,
// the controls, the duration and the quality line), the lines a call leaves in its conversation, and the ring
// (bus `ring` {on, title, body, tag} → notify.js). The state machine and the media are call.js's; this module only
// shows them and turns clicks into its methods.
//
// Bus: listens to `call-message` {conv, msg} (chat.js), `conversation-selected`, `conversation-changed`; emits
// `ring`, `open-conversation` {peer}.

import { $ } from './dom.js';
import { t } from './i18n.js';
import { on, emit } from './bus.js';
import { displayId } from './signaling.js';
import { pathLabel } from './pathlabel.js';
import { unlockAudio } from './notify.js';
import { Calls, BrowserMedia, qualityLevel } from './call.js';

const STATS_EVERY_MS = 2000;

/**
 * Whether this page may use the camera and microphone at all. Browsers expose `navigator.mediaDevices` only in a
 * secure context (https or localhost), unless told otherwise (Firefox's media.devices.insecure.enabled, Chromium's
 * --unsafely-treat-insecure-origin-as-secure, as the NAT lab does): asking for it, not isSecureContext, says it.
 */
export function callsSupported() {
  return !!(navigator.mediaDevices && navigator.mediaDevices.getUserMedia && globalThis.RTCRtpTransceiver);
}

function mmss(s) {
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = String(s % 60).padStart(2, '0');
  return h ? `${h}:${String(m).padStart(2, '0')}:${sec}` : `${String(m).padStart(2, '0')}:${sec}`;
}

/**
 * @param {object} o
 * @param {(peer:string) => any} o.conversation  the Conversation with `peer`
 * @param {() => any} o.current  the open conversation
 * @param {(peer:string) => string|null} [o.nameOf]  a saved contact's name
 */
export function initCalls({ conversation, current, nameOf = () => null }) {
  const calls = new Calls({ media: new BrowserMedia() });
  const panel = $('#call-panel');
  const remoteVideo = $('#call-remote');
  const localVideo = $('#call-local');
  let stats = null; // the last stats result
  let statsTimer = 0;
  let tickTimer = 0;
  let devicesCache = { audioinput: [], audiooutput: [], videoinput: [] };

  // ------------------------------------------------------------ the header buttons

  function renderButtons() {
    const c = current();
    const ok = callsSupported();
    for (const [sel, video] of [['#call-voice', false], ['#call-video', true]]) {
      const b = $(sel);
      const usable = ok && c && !c.closed && c.link.chatOpen && !calls.call;
      b.hidden = !!c && c.closed; // an ended conversation has nobody to call
      b.setAttribute('aria-disabled', String(!usable));
      b.classList.toggle('disabled', !usable);
      b.title = !ok ? t('call.unavailable') : c && (c.closed || !c.link.chatOpen) ? t('call.no_chat') : t(video ? 'call.video' : 'call.voice');
    }
  }

  async function place(video) {
    unlockAudio();
    const c = current();
    if (!c) return null;
    if (!callsSupported()) {
      c.system('call.unavailable', {}, 'call-unavailable');
      return null;
    }
    if (c.closed || !c.link.chatOpen || calls.call) return null;
    return calls.start(c.link, { video });
  }
  $('#call-voice').addEventListener('click', () => place(false));
  $('#call-video').addEventListener('click', () => place(true));
  on('conversation-selected', renderButtons);
  on('conversation-changed', renderButtons);
  document.addEventListener('languagechange', () => { renderButtons(); render(calls.call || null); });

  // ------------------------------------------------------------ messages and lines in the conversation

  on('call-message', ({ conv, msg }) => calls.receive(conv.link, msg));

  function convOf(call) {
    const c = conversation(call.peer);
    return c && c.link === call.link ? c : null;
  }

  const LINES = {
    hangup: 'call.log_ended', 'remote-hangup': 'call.log_ended', missed: 'call.log_missed', declined: 'call.log_declined',
    rejected: 'call.log_rejected', busy: 'call.log_busy', unanswered: 'call.log_unanswered', cancelled: 'call.log_cancelled',
    gone: 'call.log_gone', failed: 'call.log_failed', 'media-error': 'call.log_media_error',
  };
  const KINDS = {
    hangup: 'call-ended', 'remote-hangup': 'call-ended', missed: 'call-missed', declined: 'call-declined', rejected: 'call-declined',
    busy: 'call-busy', unanswered: 'call-unanswered', cancelled: 'call-cancelled', gone: 'call-ended', failed: 'call-failed', 'media-error': 'call-failed',
  };
  calls.addEventListener('ended', ({ detail: { call } }) => {
    const c = convOf(call);
    // A call that was up and then ended with the connection still ends with its duration.
    const reason = call.reason === 'gone' && !call.startedAt ? 'gone' : call.reason;
    if (c) c.system(LINES[reason] || 'call.log_ended', { id: displayId(call.peer), duration: mmss(call.duration), error: call.error || '' }, KINDS[reason] || 'call-ended');
    if (c && call.reason === 'missed' && !c.visible) {
      c.unread += 1;
      c.changed();
    }
  });
  calls.addEventListener('busy-missed', ({ detail: { link } }) => {
    const c = conversation(link.peer);
    if (c && c.link === link) c.system('call.log_missed_busy', { id: displayId(link.peer) }, 'call-missed');
  });

  // ------------------------------------------------------------ the panel

  calls.addEventListener('change', ({ detail: { call } }) => {
    render(call.live ? call : null, call);
    renderButtons();
  });

  function ring(call) {
    const on = !!call && call.state === 'incoming';
    if (on === ring.on) return;
    ring.on = on;
    emit('ring', on ? {
      on: true,
      title: t('call.notify_title', { id: displayId(call.peer) }),
      body: t(call.video ? 'call.notify_video' : 'call.notify_voice'),
      tag: `ponte-call-${call.id}`,
    } : { on: false });
  }

  function statusText(call) {
    switch (call.state) {
      case 'outgoing': return t(call.ringing ? 'call.ringing_out' : 'call.calling');
      case 'incoming': return t(call.video ? 'call.incoming_video' : 'call.incoming_voice');
      case 'connecting': return t('call.connecting');
      case 'active': return call.link.state === 'reconnecting' ? t('call.reconnecting') : t('call.active');
      default: return '';
    }
  }

  function render(call, ended) {
    ring(call);
    if (!call) {
      panel.hidden = true;
      panel.classList.remove('mini');
      panel.dataset.state = ended ? 'ended' : 'idle';
      document.body.classList.remove('in-call', 'call-docked', 'call-video');
      remoteVideo.srcObject = null;
      localVideo.srcObject = null;
      clearInterval(statsTimer);
      clearInterval(tickTimer);
      statsTimer = 0;
      tickTimer = 0;
      stats = null;
      $('#call-devices-menu').hidden = true;
      $('#call-devices').setAttribute('aria-expanded', 'false');
      return;
    }
    panel.hidden = false;
    document.body.classList.add('in-call');
    document.body.classList.toggle('call-docked', call.state !== 'incoming');
    document.body.classList.toggle('call-video', call.video);
    panel.dataset.state = call.state;
    panel.dataset.video = String(call.video);
    panel.dataset.camera = call.cameraOff ? 'off' : 'on';
    const d = displayId(call.peer);
    const name = nameOf(call.peer) || '';
    $('#call-peer').textContent = name || d;
    $('#call-avatar').textContent = (name || d).slice(0, 2).toUpperCase();
    $('#call-status').textContent = call.remoteMuted && call.state === 'active' ? `${statusText(call)} · ${t('call.peer_muted')}` : statusText(call);
    const ringing = call.state === 'incoming';
    if (ringing) panel.classList.remove('mini');
    panel.tabIndex = panel.classList.contains('mini') ? 0 : -1;
    $('#call-accept').hidden = !ringing;
    $('#call-decline').hidden = !ringing;
    $('#call-hangup').hidden = ringing;
    $('#call-mute').hidden = ringing;
    $('#call-devices').hidden = ringing;
    $('#call-camera').hidden = ringing || !call.video;
    $('#call-mute').setAttribute('aria-pressed', String(call.muted));
    const muteLabel = t(call.muted ? 'call.unmute' : 'call.mute');
    $('#call-mute').title = muteLabel;
    $('#call-mute').setAttribute('aria-label', muteLabel);
    $('#call-camera').setAttribute('aria-pressed', String(call.cameraOff));
    const camLabel = t(call.cameraOff ? 'call.camera_on' : 'call.camera_off');
    $('#call-camera').title = camLabel;
    $('#call-camera').setAttribute('aria-label', camLabel);
    $('#call-switch-camera').hidden = ringing || !call.video || call.cameraOff || call.sharing || devicesCache.videoinput.length < 2;
    const canShare = !!(navigator.mediaDevices && navigator.mediaDevices.getDisplayMedia) && !matchMedia('(pointer: coarse)').matches;
    $('#call-share-screen').hidden = ringing || !call.video || !canShare;
    $('#call-share-screen').setAttribute('aria-pressed', String(call.sharing));
    const shareLabel = t(call.sharing ? 'call.stop_share' : 'call.share_screen');
    $('#call-share-screen').title = shareLabel;
    $('#call-share-screen').setAttribute('aria-label', shareLabel);
    // The videos: the local preview from the start (the caller sees itself while it rings), the remote when it comes.
    const local = call.local.video;
    const want = local ? new MediaStream([local]) : null;
    if ((localVideo.srcObject && localVideo.srcObject.getVideoTracks()[0]) !== local) localVideo.srcObject = want;
    localVideo.hidden = !local;
    localVideo.classList.toggle('mirror', !call.sharing && call.facing === 'user');
    if (call.remote && remoteVideo.srcObject !== call.remote) remoteVideo.srcObject = call.remote;
    const remoteVideoOn = remoteVideoShown(call);
    panel.dataset.remoteVideo = String(remoteVideoOn);
    if (call.remote && remoteVideo.paused) remoteVideo.play().catch(() => {});
    renderDuration(call);
    renderQuality(call);
    if (call.state === 'active' && !statsTimer) {
      statsTimer = setInterval(() => pollStats(call), STATS_EVERY_MS);
      pollStats(call);
    }
    if (!tickTimer) tickTimer = setInterval(() => { if (calls.call) { renderDuration(calls.call); panel.dataset.remoteVideo = String(remoteVideoShown(calls.call)); } }, 1000);
    if (call.state === 'incoming' || call.state === 'active') refreshDevices();
  }

  /** The other side's video is worth showing: a live track, not muted, and its camera not switched off. */
  function remoteVideoShown(call) {
    return !!call.remote && !call.remoteCameraOff && call.remote.getVideoTracks().some((x) => x.readyState === 'live' && !x.muted);
  }

  function renderDuration(call) {
    $('#call-duration').textContent = call.state === 'active' ? mmss(call.duration) : '';
  }

  function renderQuality(call) {
    const q = $('#call-quality');
    if (call.state !== 'active' || !stats) {
      q.textContent = '';
      q.dataset.level = 'unknown';
      delete q.dataset.path;
      return;
    }
    const level = qualityLevel(stats);
    q.dataset.level = level;
    const path = stats.path;
    q.dataset.path = path ? path.kind : '';
    const parts = [t(`call.quality_${level}`)];
    if (path) parts.push(t(path.kind === 'relay' ? 'call.quality_relay' : 'call.quality_direct'));
    if (stats.rtt != null) parts.push(t('conn.rtt_ms', { ms: stats.rtt }));
    if (stats.loss != null) parts.push(t('call.loss', { pct: (stats.loss * 100).toFixed(stats.loss < 0.1 ? 1 : 0) }));
    if (stats.bitrate != null) parts.push(`${(stats.bitrate / 1e6).toFixed(stats.bitrate < 1e6 ? 2 : 1)} Mbit/s`);
    // A figure never breaks inside ("0.0 % loss" split over two lines at 360 px): no-break spaces within a part.
    q.textContent = parts.map((x) => x.replace(/ /g, '\u00a0')).join(' · ');
    q.title = path ? pathLabel(path, displayId(call.peer)).text : '';
  }

  async function pollStats(call) {
    if (calls.call !== call || call.state !== 'active') return;
    try {
      stats = await calls.media.stats(call, stats);
    } catch { return; }
    if (calls.call === call) renderQuality(call);
  }

  // ------------------------------------------------------------ controls

  // Phones: shrink the call to a tile so the chat can be read and written; a tap on the tile brings it back.
  function setMini(on) {
    panel.classList.toggle('mini', on);
    panel.setAttribute('aria-label', on ? t('call.expand') : '');
    if (!on) panel.removeAttribute('aria-label');
  }
  $('#call-minimize').addEventListener('click', (ev) => { ev.stopPropagation(); setMini(true); });
  panel.addEventListener('click', () => { if (panel.classList.contains('mini')) setMini(false); });
  panel.addEventListener('keydown', (ev) => { if (panel.classList.contains('mini') && (ev.key === 'Enter' || ev.key === ' ')) setMini(false); });

  $('#call-accept').addEventListener('click', () => {
    unlockAudio();
    const call = calls.call;
    if (call) emit('open-conversation', { peer: call.peer });
    calls.accept();
  });
  $('#call-decline').addEventListener('click', () => calls.decline());
  $('#call-hangup').addEventListener('click', () => calls.hangup());
  $('#call-mute').addEventListener('click', () => calls.call && calls.setMuted(!calls.call.muted));
  $('#call-camera').addEventListener('click', () => calls.call && calls.setCameraOff(!calls.call.cameraOff));
  $('#call-switch-camera').addEventListener('click', () => calls.switchCamera());
  $('#call-share-screen').addEventListener('click', () => calls.call && calls.shareScreen(!calls.call.sharing));
  $('#call-devices').addEventListener('click', () => {
    const menu = $('#call-devices-menu');
    menu.hidden = !menu.hidden;
    $('#call-devices').setAttribute('aria-expanded', String(!menu.hidden));
    if (!menu.hidden) refreshDevices();
  });
  $('#call-mic-select').addEventListener('change', (ev) => { if (ev.target.value) calls.useMicrophone(ev.target.value); });
  $('#call-speaker-select').addEventListener('change', async (ev) => {
    try { await remoteVideo.setSinkId(ev.target.value || ''); } catch (e) { console.warn('ponte: setSinkId', e); }
  });
  document.addEventListener('keydown', (ev) => {
    if (ev.key === 'Escape' && !$('#call-devices-menu').hidden) $('#call-devices').click();
  });

  async function refreshDevices() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.enumerateDevices) return;
    let list;
    try { list = await navigator.mediaDevices.enumerateDevices(); } catch { return; }
    const by = { audioinput: [], audiooutput: [], videoinput: [] };
    for (const dev of list) if (by[dev.kind]) by[dev.kind].push(dev);
    devicesCache = by;
    const call = calls.call;
    fill($('#call-mic-select'), by.audioinput, call && call.local.audio ? call.local.audio.getSettings().deviceId : '');
    const sink = 'setSinkId' in HTMLMediaElement.prototype && by.audiooutput.length > 0;
    $('#call-speaker-row').hidden = !sink;
    if (sink) fill($('#call-speaker-select'), by.audiooutput, remoteVideo.sinkId || '');
    if (call) $('#call-switch-camera').hidden = call.state === 'incoming' || !call.video || call.cameraOff || call.sharing || by.videoinput.length < 2;
  }

  function fill(select, devices, selected) {
    const opts = devices.map((dev, i) => {
      const o = document.createElement('option');
      o.value = dev.deviceId;
      o.textContent = dev.label || (dev.deviceId === 'default' ? t('call.device_default') : `${i + 1}`);
      o.selected = dev.deviceId === selected;
      return o;
    });
    select.replaceChildren(...opts);
  }

  renderButtons();
  render(null);
  return calls;
}
