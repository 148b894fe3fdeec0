//! The home router in front of ponte: does `turn.external_ip` lead back to this host from inside (NAT loopback,
//! "hairpin"), and what that means for people at home. Used by `ponte doctor` (one `router` line) and by the
//! daemon at start-up (the same line in the log).
//!
//! The probe: a STUN Binding request from this host to `external_ip:PORT` (PORT = the first `turn.listen_udp`).
//! A router with NAT loopback applies its port forward to it and the request reaches ponte (the running daemon,
//! or a socket the doctor binds on the listen address itself), so an answer / the request comes back. A router
//! without loopback keeps it for itself and nothing comes back. The same silence also means a missing port
//! forward or a wrong `external_ip`: from inside the three cannot be told apart, so the line names all of them.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::{Level, Report};
use crate::config::Config;
use crate::turn::codec;

/// How long to wait for the hairpinned request or its answer (three tries).
const TRY: Duration = Duration::from_millis(400);

/// What the probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loopback {
    /// `turn.external_ip` is not set (or TURN is off): no router question to ask.
    NotConfigured,
    /// `turn.external_ip` is an address of this host: no NAT between ponte and the internet.
    OwnAddress,
    /// A request to `external_ip` came back to ponte: the router does NAT loopback.
    Works,
    /// Nothing came back.
    NoAnswer,
    /// The probe could not run (no UDP listener, the listen port is taken by another program…).
    Unknown,
}

/// The one line (level, message, advice) for a probe result. `lan_url` is where people at home should open
/// ponte when the router does no loopback (the server's LAN address), when known.
pub fn verdict(
    found: Loopback,
    external: Option<SocketAddr>,
    lan_url: Option<&str>,
) -> (Level, String, Option<String>) {
    let ext = external.map(|e| e.to_string()).unwrap_or_else(|| "turn.external_ip".into());
    let home = lan_url.map(|u| format!(" at {u}")).unwrap_or_else(|| " at this server's LAN address".into());
    match found {
        Loopback::NotConfigured => {
            (Level::Ok, "turn.external_ip is not set: no home router to check".into(), None)
        }
        Loopback::OwnAddress => (
            Level::Ok,
            format!("turn.external_ip is an address of this host: no router between ponte and the internet ({ext})"),
            None,
        ),
        Loopback::Works => (
            Level::Ok,
            format!("the router does NAT loopback: {ext} leads back to ponte from inside, so people at home may use the public address too"),
            None,
        ),
        Loopback::NoAnswer => (
            Level::Warn,
            format!(
                "no NAT loopback: a STUN request from this host to {ext} did not come back to ponte (the router does \
                 no NAT loopback, or does not forward that port here, or turn.external_ip is not its public address)"
            ),
            Some(format!(
                "people at home: open ponte{home} (ponte then hands them STUN/TURN at that LAN address and they \
                 chat with people outside through the relay); check from outside (e.g. a phone off Wi-Fi) that \
                 /diag works at the public address, which proves the port forwards and turn.external_ip"
            )),
        ),
        Loopback::Unknown => (
            Level::Ok,
            format!("NAT loopback not checked: no UDP listener free to probe {ext} with"),
            None,
        ),
    }
}

/// `http://LAN-ADDRESS:PORT` for people at home: the relay address when it is private (where a wildcard
/// listener answers too), with http.listen's port.
pub fn lan_url(cfg: &Config) -> Option<String> {
    let t = &cfg.turn;
    let listen: Vec<SocketAddr> = t.listen_udp.iter().chain(&t.listen_tcp).copied().collect();
    let ip = crate::turn::relay_ips(t, &listen)
        .into_iter()
        .find(|ip| matches!(super::classify(*ip), super::AddressClass::Private))?;
    let host = match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    };
    let h = cfg.http.listen.ip();
    (h.is_unspecified() || h == ip).then(|| format!("http://{host}:{}", cfg.http.listen.port()))
}

/// Where to probe: `external_ip` with the first UDP listener's port, or why not.
fn target(cfg: &Config) -> Result<SocketAddr, Loopback> {
    let t = &cfg.turn;
    let (Some(ext), true) = (t.external_ip, t.enabled) else { return Err(Loopback::NotConfigured) };
    let Some(listen) = t.listen_udp.iter().find(|a| a.is_ipv4() == ext.is_ipv4()) else {
        return Err(Loopback::Unknown);
    };
    let ext = crate::turn::policy::canonical(ext);
    if crate::turn::interface_ips().iter().any(|i| crate::turn::policy::canonical(*i) == ext) {
        return Err(Loopback::OwnAddress);
    }
    Ok(SocketAddr::new(ext, listen.port()))
}

fn binding_request(txid: [u8; 12]) -> Vec<u8> {
    use stun::message::Setter;
    let mut m = codec::message(codec::METHOD_BINDING, 0, txid);
    let _ = stun::fingerprint::FINGERPRINT.add_to(&mut m);
    m.raw
}

/// Probe with ponte running: a Binding request to `to` must get ponte's answer back.
pub async fn probe_running(to: SocketAddr) -> Loopback {
    let Ok(s) = tokio::net::UdpSocket::bind(wildcard(to)).await else { return Loopback::Unknown };
    let txid: [u8; 12] = rand::random();
    send_and_watch(&s, &s, to, txid, |b| {
        codec::classify(b) == codec::Kind::Stun && codec::method_and_class(b) == (codec::METHOD_BINDING, 2)
    })
    .await
}

/// Probe with ponte not running: bind the listen address ourselves and see whether a request sent to `to`
/// arrives there.
async fn probe_stopped(cfg: &Config, to: SocketAddr) -> Loopback {
    let Some(listen) = cfg.turn.listen_udp.iter().find(|a| a.is_ipv4() == to.is_ipv4()).copied() else {
        return Loopback::Unknown;
    };
    let Ok(inside) = tokio::net::UdpSocket::bind(listen).await else { return Loopback::Unknown };
    let Ok(s) = tokio::net::UdpSocket::bind(wildcard(to)).await else { return Loopback::Unknown };
    send_and_watch(&s, &inside, to, rand::random(), |b| b.len() >= codec::STUN_HEADER).await
}

fn wildcard(to: SocketAddr) -> SocketAddr {
    if to.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    }
}

/// Send a Binding request with `txid` from `send` to `to` (three tries) and watch `watch` for a datagram with that
/// transaction ID that `fits`.
async fn send_and_watch(
    send: &tokio::net::UdpSocket,
    watch: &tokio::net::UdpSocket,
    to: SocketAddr,
    txid: [u8; 12],
    fits: impl Fn(&[u8]) -> bool,
) -> Loopback {
    let req = binding_request(txid);
    let mut buf = vec![0u8; 1500];
    for _ in 0..3 {
        if send.send_to(&req, to).await.is_err() {
            // e.g. no route: certainly not coming back.
            return Loopback::NoAnswer;
        }
        let deadline = tokio::time::Instant::now() + TRY;
        while let Ok(Ok((n, _))) = tokio::time::timeout_at(deadline, watch.recv_from(&mut buf)).await {
            let b = &buf[..n];
            if b.len() >= codec::STUN_HEADER && codec::transaction_id(b) == txid && fits(b) {
                return Loopback::Works;
            }
        }
    }
    Loopback::NoAnswer
}

/// The doctor's `router` line. `daemon`: whether a running ponte answers on the listeners.
pub async fn check(r: &mut Report, cfg: &Config, daemon: bool) {
    let found = match target(cfg) {
        Err(f) => f,
        Ok(to) if daemon => probe_running(to).await,
        Ok(to) => probe_stopped(cfg, to).await,
    };
    let to = target(cfg).ok();
    let (level, msg, advice) = verdict(found, to, lan_url(cfg).as_deref());
    r.add("router", level, msg, advice);
}

/// What is wrong with `turn.external_ip` on its face, as one log line with the fix (`None`: nothing visible).
/// `ponte doctor` says the same in its `address` line; the daemon says it once at start.
pub fn external_ip_problem(ip: IpAddr) -> Option<String> {
    use super::AddressClass::*;
    match super::classify(ip) {
        Private | Loopback | LinkLocal => Some(format!(
            "turn.external_ip {ip} is not a public address: people outside cannot reach the relay; set it to the \
             router's public address (what https://ifconfig.me shows from this network)"
        )),
        Cgnat => Some(format!(
            "turn.external_ip {ip} is in 100.64.0.0/10, your provider's carrier-grade NAT: port forwards on your router \
             cannot be reached from outside; ask the provider for a public IPv4 address, use IPv6, or run ponte on a \
             server with a public address"
        )),
        _ => None,
    }
}

/// At start-up (the listeners are bound, so the request waits in the socket buffer even if the TURN task has
/// not read yet): log the same line once.
pub async fn log_at_startup(cfg: Config) {
    if let Some(problem) = cfg.turn.external_ip.filter(|_| cfg.turn.enabled).and_then(external_ip_problem) {
        tracing::warn!("{problem}");
    }
    let Ok(to) = target(&cfg) else { return };
    let found = probe_running(to).await;
    let (level, msg, advice) = verdict(found, Some(to), lan_url(&cfg).as_deref());
    let advice = advice.map(|a| format!(" → {a}")).unwrap_or_default();
    match level {
        Level::Ok => tracing::info!("router: {msg}"),
        _ => tracing::warn!("router: {msg}{advice}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_lines() {
        let ext: SocketAddr = "198.51.100.21:3478".parse().unwrap();
        let (l, m, a) = verdict(Loopback::NoAnswer, Some(ext), Some("http://10.77.1.10:8080"));
        assert_eq!(l, Level::Warn);
        assert!(m.contains("no NAT loopback") && m.contains("198.51.100.21:3478"), "{m}");
        let a = a.unwrap();
        assert!(a.contains("http://10.77.1.10:8080") && a.contains("/diag"), "{a}");
        let (l, m, a) = verdict(Loopback::Works, Some(ext), None);
        assert_eq!(l, Level::Ok);
        assert!(m.contains("does NAT loopback"), "{m}");
        assert!(a.is_none());
        assert_eq!(verdict(Loopback::OwnAddress, Some(ext), None).0, Level::Ok);
        assert_eq!(verdict(Loopback::NotConfigured, None, None).0, Level::Ok);
    }

    #[test]
    fn external_ip_sanity() {
        let p = external_ip_problem("10.77.1.10".parse().unwrap()).unwrap();
        assert!(p.contains("not a public address") && p.contains("10.77.1.10"), "{p}");
        let p = external_ip_problem("100.64.3.4".parse().unwrap()).unwrap();
        assert!(p.contains("carrier-grade NAT"), "{p}");
        assert_eq!(external_ip_problem("8.8.8.8".parse().unwrap()), None);
        // The lab's TEST-NET addresses are the documentation class: the address check warns about those.
        assert_eq!(external_ip_problem("198.51.100.21".parse().unwrap()), None);
    }

    #[test]
    fn targets() {
        let mut cfg = Config::default();
        assert_eq!(target(&cfg), Err(Loopback::NotConfigured));
        // An address of this host (loopback is one): no router in between.
        cfg.turn.external_ip = Some("127.0.0.1".parse().unwrap());
        assert_eq!(target(&cfg), Err(Loopback::OwnAddress));
        cfg.turn.external_ip = Some("198.51.100.21".parse().unwrap());
        cfg.turn.listen_udp = vec!["0.0.0.0:18478".parse().unwrap()];
        assert_eq!(target(&cfg), Ok("198.51.100.21:18478".parse().unwrap()));
        cfg.turn.enabled = false;
        assert_eq!(target(&cfg), Err(Loopback::NotConfigured));
    }

    #[test]
    fn lan_url_is_the_private_relay_address() {
        let mut cfg = Config::default();
        cfg.turn.relay_ip = Some("10.77.1.10".parse().unwrap());
        assert_eq!(lan_url(&cfg).as_deref(), Some("http://10.77.1.10:8080"));
        cfg.turn.relay_ip = Some("198.51.100.10".parse().unwrap());
        assert_eq!(lan_url(&cfg), None);
    }

    #[tokio::test]
    async fn probe_sees_a_request_come_back_or_not() {
        // Towards our own running STUN answerer on loopback: "comes back".
        let srv = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let at = srv.local_addr().unwrap();
        tokio::spawn(async move {
            let mut b = vec![0u8; 1500];
            while let Ok((n, from)) = srv.recv_from(&mut b).await {
                let txid = codec::transaction_id(&b[..n]);
                let _ = srv.send_to(&codec::binding_success(&txid, from, None, true), from).await;
            }
        });
        assert_eq!(probe_running(at).await, Loopback::Works);
        // A port where nothing answers: silence.
        let quiet = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert_eq!(probe_running(quiet.local_addr().unwrap()).await, Loopback::NoAnswer);
    }
}
