// The words for a conversation's path ("Direct (…)", "Relayed through this server (TURN tcp, on X's side)"), from
// the link's stats (peer.js `stats.path`). A pure function, so the unit tests feed it paths directly.

import { t } from './i18n.js';

/**
 * @param {{kind:string, side?:string, proto?:string|null, local?:string, remote?:string}|null} path  `stats.path`
 * @param {string} peerDisplay  the other side's ID as shown
 * @returns {{kind:'none'|'relay'|'direct', text:string}}
 */
export function pathLabel(path, peerDisplay) {
  if (!path) return { kind: 'none', text: '' };
  if (path.kind === 'relay') {
    if (path.side === 'local') return { kind: 'relay', text: t('conn.relayed', { proto: path.proto || 'udp' }) };
    // The other side's transport to the relay is what its `path` message said; until it arrives we do not know it.
    const text = path.proto
      ? t('conn.relayed_remote', { proto: path.proto, id: peerDisplay })
      : t('conn.relayed_remote_unknown', { id: peerDisplay });
    return { kind: 'relay', text };
  }
  const kind = path.local === 'host' && path.remote === 'host'
    ? `${t('conn.direct_host')}, host`
    : `${t('conn.direct_srflx')}, ${path.local === 'host' ? path.remote : path.local}`;
  return { kind: 'direct', text: t('conn.direct', { kind }) };
}
