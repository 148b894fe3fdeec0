// /diag: a trickle-ICE test aimed at this server. Opens the signaling WebSocket (which hands out the ICE servers
// and fresh TURN credentials), then gathers candidates separately for every STUN and TURN URL and says plainly
// which ones work. Nothing is sent to any peer.

import { t, detectLanguage, setLanguage, fillLanguageSelect } from './i18n.js';
import { $, el } from './dom.js';
import { Signaling } from './signaling.js';

setLanguage(detectLanguage());
fillLanguageSelect($('#lang-select'));
$('#theme-toggle').addEventListener('click', () => window.ponteTheme && window.ponteTheme.cycle());

const GATHER_TIMEOUT_MS = 10000;
let results = [];
let candidates = [];
let running = false;

function check(key, title) {
  const icon = el('span', { class: 'check-icon', 'aria-hidden': 'true' });
  const verdict = el('span', { class: 'check-verdict' }, t('diag.running'));
  const detail = el('span', { class: 'check-detail small muted' });
  const li = el('li', { class: 'check', 'data-testid': 'diag-check', 'data-check': key, 'data-result': 'running' },
    icon, el('div', { class: 'check-body' }, el('span', { class: 'check-title' }, title), verdict, detail));
  $('#checks').append(li);
  const r = {
    key,
    li,
    result: 'running',
    set(result, text) {
      r.result = result;
      li.dataset.result = result;
      icon.textContent = result === 'ok' ? '✓' : result === 'fail' ? '✕' : result === 'skip' ? '–' : result === 'warn' ? '!' : '';
      verdict.textContent = t(result === 'ok' ? 'diag.ok' : result === 'fail' ? 'diag.fail' : result === 'skip' ? 'diag.skip'
        : result === 'warn' ? 'diag.relay_needed' : 'diag.running');
      detail.textContent = text || '';
    },
  };
  results.push(r);
  return r;
}

/** Open /ws, say hello without a token, wait for the welcome; resolves {ms, welcome} or rejects. */
function probeSignaling() {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    let ws;
    try { ws = new WebSocket(Signaling.defaultUrl(), ['ponte.v1']); } catch (e) { reject(e); return; }
    const timer = setTimeout(() => { try { ws.close(); } catch { /* ignore */ } reject(new Error('timeout')); }, 8000);
    ws.onopen = () => ws.send(JSON.stringify({ type: 'hello', v: 1 }));
    ws.onmessage = (ev) => {
      let m;
      try { m = JSON.parse(ev.data); } catch { return; }
      if (m.type === 'welcome') {
        clearTimeout(timer);
        resolve({ ms: Math.round(performance.now() - started), welcome: m });
        ws.close(1000);
      }
    };
    ws.onclose = () => { clearTimeout(timer); reject(new Error('closed')); };
  });
}

/** Gather candidates with one ICE server URL. Resolves {cands, errors, ms}. */
async function gather(server, url, relayOnly) {
  const cfg = { iceServers: server ? [{ ...server, urls: [url] }] : [], iceTransportPolicy: relayOnly ? 'relay' : 'all' };
  const pc = new RTCPeerConnection(cfg);
  const cands = [];
  const errors = [];
  const started = performance.now();
  let firstRelayMs = null;
  pc.createDataChannel('diag');
  const done = new Promise((resolve) => {
    const timer = setTimeout(resolve, GATHER_TIMEOUT_MS);
    pc.onicecandidate = (ev) => {
      if (!ev.candidate) { clearTimeout(timer); resolve(); return; }
      const c = ev.candidate;
      if (!c.candidate) return;
      const parsed = parseCandidate(c.candidate);
      parsed.relayProtocol = c.relayProtocol || (parsed.type === 'relay' ? urlParts(url).transport : undefined);
      parsed.url = c.url || url || '';
      if (parsed.type === 'relay' && firstRelayMs === null) firstRelayMs = Math.round(performance.now() - started);
      cands.push(parsed);
    };
    pc.onicecandidateerror = (ev) => errors.push({ url: ev.url, code: ev.errorCode, text: ev.errorText });
  });
  try {
    await pc.setLocalDescription(await pc.createOffer());
    await done;
  } finally {
    pc.close();
  }
  return { cands, errors, ms: firstRelayMs };
}

function parseCandidate(line) {
  // candidate:<foundation> <component> <transport> <priority> <address> <port> typ <type> [raddr ..] [rport ..] [tcptype ..]
  const f = line.replace(/^candidate:/, '').split(/\s+/);
  const out = { transport: (f[2] || '').toLowerCase(), address: f[4] || '', port: f[5] || '', type: f[7] || '' };
  const rport = f.indexOf('rport');
  if (rport > 0) out.rport = f[rport + 1] || '';
  return out;
}

function urlParts(url) {
  const m = /^(stun|turns?):\[?([^\]?]+?)\]?(?::(\d+))?(?:\?transport=(\w+))?$/i.exec(url);
  if (!m) return { scheme: '', host: url, port: '', transport: '' };
  const scheme = m[1].toLowerCase();
  return { scheme, host: m[2], port: m[3] || (scheme === 'turns' ? '5349' : '3478'), transport: (m[4] || (scheme === 'turns' ? 'tcp' : 'udp')).toLowerCase() };
}

/** 'v6' for a URL whose host is an IPv6 literal, 'v4' for an IPv4 literal, '' for a name. */
function urlFamily(url) {
  const { host } = urlParts(url);
  if (host.includes(':')) return 'v6';
  return /^\d+\.\d+\.\d+\.\d+$/.test(host) ? 'v4' : '';
}

/**
 * Why a TURN URL gave no relay, from the browser's icecandidateerror events. A STUN error code (300-699) is
 * the server's answer: it was reached and refused, and the code says why (440: no relay address of the family
 * asked for; 486/508: quota or capacity). Only 701 (no answer) or no error at all means it was not reached.
 */
function turnWhy(errors, kind, port) {
  const answer = errors.find((e) => e.code >= 300 && e.code < 700);
  if (answer) {
    const code = `${answer.code} ${answer.text || ''}`.trim();
    if ([401, 403, 437, 441].includes(answer.code)) return t('diag.turn_why_auth', { code });
    if (answer.code === 440 || answer.code === 443) return t('diag.turn_why_family', { code });
    return t('diag.turn_why_refused', { code });
  }
  if (errors.length) return t('diag.turn_why_unreachable', { proto: kind.toUpperCase(), port });
  return t('diag.turn_why_none', { s: GATHER_TIMEOUT_MS / 1000 });
}

function addCandidates(list, server) {
  for (const c of list) candidates.push({ ...c, server });
  const body = $('#cands');
  body.replaceChildren(...candidates.map((c) => el('tr', { 'data-type': c.type },
    el('td', {}, c.type),
    el('td', {}, c.type === 'relay' && c.relayProtocol ? `${c.transport} (TURN ${c.relayProtocol})` : c.transport),
    el('td', { class: 'mono' }, `${c.address}:${c.port}`),
    el('td', { class: 'mono' }, c.server || '—'))));
  $('#cands-section').hidden = candidates.length === 0;
}

/**
 * The NAT's mapping behaviour (RFC 5780 §4.3 in spirit): one RTCPeerConnection, so one local UDP socket per
 * interface, asks every STUN URL of this server (3478 and `turn.stun_alt_listen`) for its public address. A NAT
 * that keeps one public port for the socket whatever the destination ("endpoint-independent", cone) yields one
 * server-reflexive candidate per socket (Chrome drops the identical second one); a symmetric NAT picks a new
 * port per destination, so the same socket shows up with two different public ports: hole punching cannot
 * work from here, only the relay. Resolves 'independent' | 'dependent' | 'unknown'.
 */
async function mappingBehaviour(server, urls) {
  const pc = new RTCPeerConnection({ iceServers: [{ ...server, urls }] });
  const srflx = [];
  const hosts = new Set();
  pc.createDataChannel('diag-mapping');
  const done = new Promise((resolve) => {
    const timer = setTimeout(resolve, GATHER_TIMEOUT_MS);
    pc.onicecandidate = (ev) => {
      if (!ev.candidate) { clearTimeout(timer); resolve(); return; }
      if (!ev.candidate.candidate) return;
      const c = parseCandidate(ev.candidate.candidate);
      if (c.transport !== 'udp') return;
      c.url = ev.candidate.url || ev.url || '';
      if (c.type === 'host') hosts.add(`${c.address}:${c.port}`);
      if (c.type === 'srflx') srflx.push(c);
    };
  });
  try {
    await pc.setLocalDescription(await pc.createOffer());
    await done;
  } finally {
    pc.close();
  }
  if (!srflx.length) return 'unknown';
  // Best evidence: which STUN URL each public address came from. Every socket maps to one public address per URL;
  // more distinct public addresses in all than from any single URL means the mapping depends on the destination.
  // (Works whether or not the browser drops a duplicate address, and with several interfaces.)
  if (srflx.every((c) => c.url)) {
    const all = new Set(srflx.map((c) => `${c.address}:${c.port}`));
    const perUrl = new Map();
    for (const c of srflx) {
      if (!perUrl.has(c.url)) perUrl.set(c.url, new Set());
      perUrl.get(c.url).add(`${c.address}:${c.port}`);
    }
    return all.size > Math.max(...[...perUrl.values()].map((x) => x.size)) ? 'dependent' : 'independent';
  }
  // Group by the local socket (rport) when the browser tells it; with hidden host addresses (mDNS) rport is 0,
  // then compare the count of public ports with the count of local sockets.
  const bySocket = new Map();
  for (const c of srflx) {
    const key = c.rport && c.rport !== '0' ? c.rport : '*';
    if (!bySocket.has(key)) bySocket.set(key, new Set());
    bySocket.get(key).add(`${c.address}:${c.port}`);
  }
  for (const [key, mapped] of bySocket) {
    if (key !== '*' && mapped.size > 1) return 'dependent';
    if (key === '*' && mapped.size > Math.max(1, hosts.size)) return 'dependent';
  }
  return 'independent';
}

async function run() {
  if (running) return;
  running = true;
  $('#run').disabled = true;
  results = [];
  candidates = [];
  $('#checks').replaceChildren();
  addCandidates([], '');
  document.body.dataset.done = 'false';
  const summary = $('#summary');
  summary.dataset.kind = '';
  summary.textContent = t('diag.running');

  const wsUrl = Signaling.defaultUrl();
  const wsCheck = check('ws', t('diag.ws'));
  let welcome;
  try {
    const r = await probeSignaling();
    welcome = r.welcome;
    wsCheck.set('ok', t('diag.ws_ok', { url: wsUrl, ms: r.ms }));
  } catch {
    wsCheck.set('fail', t('diag.ws_fail', { url: wsUrl }));
    summary.dataset.kind = 'bad';
    summary.textContent = t('diag.summary_ws_bad');
    running = false;
    $('#run').disabled = false;
    return;
  }

  const servers = welcome.ice_servers || [];
  const jobs = [];
  const hostCheck = check('host', t('diag.host'));
  jobs.push(gather(null, '', false).then(({ cands }) => {
    const host = cands.filter((c) => c.type === 'host');
    addCandidates(host, '');
    hostCheck.set(host.length ? 'ok' : 'fail', host.length ? t('diag.host_ok', { n: host.length }) : t('diag.host_fail'));
    return { kind: 'host', ok: host.length > 0 };
  }));

  const seen = new Set();
  const stunUrls = [];
  let stunServer = null;
  const stunCounts = {};
  let stunCount = 0;
  const turnKinds = new Set();
  for (const server of servers) {
    for (const url of Array.isArray(server.urls) ? server.urls : [server.urls]) {
      if (!url || seen.has(url)) continue;
      seen.add(url);
      const p = urlParts(url);
      // Each family the server has gets its own checks; IPv6 ones are keyed `…-v6` (IPv4 and names keep the
      // plain keys). The title carries the URL, whose host shows the family.
      const fam = urlFamily(url) === 'v6' ? '-v6' : '';
      if (p.scheme === 'stun') {
        stunCount += 1;
        stunCounts[fam] = (stunCounts[fam] || 0) + 1;
        stunUrls.push(url);
        stunServer = stunServer || server;
        const n = stunCounts[fam];
        const c = check(`stun${fam}${n > 1 ? `-${n}` : ''}`, t('diag.stun', { url }));
        jobs.push(gather(server, url, false).then(({ cands, errors }) => {
          const srflx = cands.filter((x) => x.type === 'srflx');
          addCandidates(srflx, url);
          const failed = errors.some((e) => e.code === 701 || (e.code >= 300 && e.code < 700));
          if (srflx.length) c.set('ok', t('diag.stun_ok', { addr: [...new Set(srflx.map((x) => x.address))].join(', ') }));
          else if (failed || !cands.length) c.set('fail', t('diag.stun_fail', { port: p.port }));
          // No server-reflexive candidate and no error: either no NAT (the answer equals the local address)
          // or no answer yet (the browser ends gathering before its STUN timeout). Decided below with TURN/UDP.
          else return { kind: 'stun', ok: false, url, fam, undecided: { c, addr: cands[0].address, port: p.port } };
          return { kind: 'stun', ok: c.result === 'ok', url, fam };
        }));
      } else if (p.scheme === 'turn' || p.scheme === 'turns') {
        const kind = p.scheme === 'turns' ? 'tls' : p.transport;
        turnKinds.add(kind);
        const c = check(`turn-${kind}${fam}`, t('diag.turn', { url }));
        jobs.push(gather(server, url, true).then(({ cands, errors, ms }) => {
          const relay = cands.filter((x) => x.type === 'relay');
          addCandidates(relay, url);
          if (relay.length) {
            c.set('ok', t('diag.turn_ok', { addr: `${relay[0].address}:${relay[0].port}`, ms: ms ?? '?' }));
          } else {
            c.set('fail', t('diag.turn_fail', { why: turnWhy(errors, kind, p.port) }));
          }
          return { kind: 'turn', ok: relay.length > 0, transport: kind, fam };
        }));
      }
    }
  }
  if (!stunCount) check('stun', t('diag.stun', { url: '—' })).set('skip', '');
  if (!turnKinds.size) check('turn', t('diag.turn', { url: '—' })).set('skip', '');
  else if (!turnKinds.has('tls')) check('turn-tls', t('diag.turn_tls')).set('skip', '');

  // Needs two STUN destinations on this server; run while the other checks gather.
  // The mapping test compares the public ports one socket gets from two STUN destinations of ONE family: an IPv4
  // and an IPv6 answer always differ and would read as a symmetric NAT. IPv4 first (NATs are an IPv4 thing).
  const natCheck = check('nat', t('diag.nat'));
  const v4Stun = stunUrls.filter((u) => urlFamily(u) !== 'v6');
  const mappingUrls = v4Stun.length >= 2 ? v4Stun : stunUrls.filter((u) => urlFamily(u) === 'v6');
  const mappingJob = mappingUrls.length >= 2 ? mappingBehaviour(stunServer, mappingUrls) : Promise.resolve('unknown');
  const outcome = await Promise.all(jobs);
  // UDP to this server works when TURN over UDP gave a relay: then a silent STUN check means "no NAT".
  const udpWorks = outcome.some((o) => o.kind === 'turn' && o.ok && o.transport === 'udp');
  for (const o of outcome) {
    if (!o.undecided) continue;
    const { c, addr, port } = o.undecided;
    if (udpWorks) { c.set('ok', t('diag.stun_ok', { addr })); o.ok = true; } else c.set('fail', t('diag.stun_fail', { port }));
  }
  const stunOk = outcome.some((o) => o.kind === 'stun' && o.ok);
  const mappingFam = mappingUrls.length && urlFamily(mappingUrls[0]) === 'v6' ? '-v6' : '';
  const stunAnswered = outcome.filter((o) => o.kind === 'stun' && o.ok && o.fam === mappingFam).length;
  const turnOk = outcome.some((o) => o.kind === 'turn' && o.ok);
  const turnUdpOk = outcome.some((o) => o.kind === 'turn' && o.ok && o.transport === 'udp');
  const turnStreamOk = outcome.some((o) => o.kind === 'turn' && o.ok && o.transport !== 'udp');
  let mapping = await mappingJob;
  if (stunAnswered < 2) mapping = 'unknown';
  natCheck.set(mapping === 'independent' ? 'ok' : mapping === 'dependent' ? 'warn' : 'skip',
    t(mapping === 'independent' ? 'diag.nat_independent' : mapping === 'dependent' ? 'diag.nat_dependent'
      : mappingUrls.length < 2 ? 'diag.nat_one_port' : 'diag.nat_unknown'));
  natCheck.li.dataset.mapping = mapping;
  if (!stunOk && !turnUdpOk && turnStreamOk) {
    // Nothing over UDP answers, TURN over TCP/TLS does: everything will be relayed over TCP.
    summary.dataset.kind = 'warn'; summary.textContent = t('diag.summary_udp_blocked');
  } else if (mapping === 'dependent' && turnOk) { summary.dataset.kind = 'warn'; summary.textContent = t('diag.summary_symmetric'); }
  else if (mapping === 'dependent') { summary.dataset.kind = 'bad'; summary.textContent = t('diag.summary_symmetric_no_relay'); }
  else if (stunOk && turnOk) { summary.dataset.kind = 'good'; summary.textContent = t('diag.summary_good'); }
  else if (turnOk) { summary.dataset.kind = 'warn'; summary.textContent = t('diag.summary_relay_only'); }
  else if (stunOk) { summary.dataset.kind = 'warn'; summary.textContent = t('diag.summary_direct_only'); }
  else { summary.dataset.kind = 'bad'; summary.textContent = t('diag.summary_bad'); }
  document.body.dataset.done = 'true';
  running = false;
  $('#run').disabled = false;
}

$('#run').addEventListener('click', run);
document.addEventListener('languagechange', () => { if (!running) run(); });
run();
