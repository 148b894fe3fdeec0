//! Signaling counters (plain atomics on the hot path) and their export at `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Weak;

use crate::metrics::{Sample, Source};

use super::protocol::{ClientMsg, ErrorCode};
use super::Hub;

#[derive(Debug, Default)]
pub struct Stats {
    /// Text and binary frames received from clients.
    pub messages: AtomicU64,
    /// `signal` messages forwarded to a partner.
    pub relayed: AtomicU64,
    /// Connections closed because they did not read their messages.
    pub slow_disconnects: AtomicU64,
    pub refused_origin: AtomicU64,
    pub refused_per_ip: AtomicU64,
    pub refused_total: AtomicU64,
    errors: [AtomicU64; ErrorCode::ALL.len()],
    /// Well-formed messages by type, in `ClientMsg::TYPES` order.
    pub by_type: [AtomicU64; ClientMsg::TYPES.len()],
}

impl Stats {
    pub fn error(&self, code: ErrorCode) {
        if let Some(i) = ErrorCode::ALL.iter().position(|c| *c == code) {
            self.errors[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Registered with the daemon's metrics; holds the hub weakly so that metrics never keep it alive.
pub struct HubSource(pub Weak<Hub>);

impl Source for HubSource {
    fn collect(&self, out: &mut Vec<Sample>) {
        let Some(hub) = self.0.upgrade() else { return };
        let s = &hub.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        out.push(Sample::gauge("signaling_connections", "Open signaling WebSockets", hub.connection_count() as u64));
        out.push(Sample::gauge(
            "signaling_sessions",
            "Client IDs held, connected or in their reconnect grace period",
            hub.session_count() as u64,
        ));
        out.push(Sample::gauge(
            "signaling_pairings",
            "Accepted pairings between two clients",
            hub.pairing_count() as u64,
        ));
        out.push(Sample::gauge(
            "signaling_identities",
            "Lasting identities known (ID <-> public key bindings in the identity store)",
            hub.identity_count() as u64,
        ));
        out.push(Sample::counter("signaling_messages", "Frames received from clients", get(&s.messages)));
        for (ty, c) in ClientMsg::TYPES.iter().zip(&s.by_type) {
            out.push(
                Sample::counter("signaling_messages_by_type", "Well-formed client messages by type", get(c))
                    .label("type", *ty),
            );
        }
        out.push(Sample::counter(
            "signaling_relayed",
            "signal messages forwarded between paired clients",
            get(&s.relayed),
        ));
        out.push(Sample::counter(
            "signaling_slow_disconnects",
            "Clients disconnected for not reading their messages",
            get(&s.slow_disconnects),
        ));
        for (reason, c) in [("origin", &s.refused_origin), ("per_ip", &s.refused_per_ip), ("total", &s.refused_total)] {
            out.push(
                Sample::counter("signaling_upgrades_refused", "WebSocket upgrades refused", get(c))
                    .label("reason", reason),
            );
        }
        for (code, c) in ErrorCode::ALL.iter().zip(&s.errors) {
            out.push(
                Sample::counter("signaling_errors", "error messages sent to clients", get(c))
                    .label("code", code.as_str()),
            );
        }
    }
}
