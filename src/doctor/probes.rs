//! Probes of this host: is a ponte running (asked at `/healthz`), can every listener the config asks for be bound,
//! and if a port is taken, does ponte hold it (asked in the port's own protocol)?

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::report::{Level, Report};
use super::PROBE;
use crate::config::Config;
use crate::listeners::{plan, BindError, Proto, Role};
use crate::turn::selftest;

/// What a running ponte said at `/healthz`.
#[derive(Debug, Clone)]
pub(super) struct Daemon {
    pub(super) http: SocketAddr,
    pub(super) version: String,
    pub(super) turn: String,
}

pub(super) async fn check_daemon(r: &mut Report, cfg: &Config) -> Option<Daemon> {
    if cfg.http.listen.port() == 0 {
        r.add(
            "daemon",
            Level::Ok,
            "http.listen has port 0, so a running ponte cannot be found; checks run as if none runs",
            None,
        );
        return None;
    }
    let http = selftest::reach(cfg.http.listen);
    let Some(health) = healthz(http).await else {
        r.add(
            "daemon",
            Level::Ok,
            format!("no ponte answers at http://{http}/healthz: the checks bind the ports and start TURN themselves"),
            None,
        );
        return None;
    };
    let version = health["version"].as_str().unwrap_or("?").to_string();
    let turn = health["components"]["turn"].as_str().unwrap_or("?").to_string();
    let status = health["status"].as_str().unwrap_or("?");
    if status == "ok" {
        r.add("daemon", Level::Ok, format!("ponte {version} is running at http://{http} (health ok)"), None);
    } else {
        r.add(
            "daemon",
            Level::Warn,
            format!("ponte {version} is running at http://{http} but reports {status}: {}", health["components"]),
            Some("look at `journalctl -u ponte` for the component that is not ok".into()),
        );
    }
    Some(Daemon { http, version, turn })
}

/// `GET /healthz` answered with ponte's JSON, or `None`.
async fn healthz(addr: SocketAddr) -> Option<serde_json::Value> {
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(format!("GET /healthz HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: ponte-doctor\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.take(64 * 1024).read_to_end(&mut buf).await.ok()?;
        let split = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
        let v: serde_json::Value = serde_json::from_slice(&buf[split + 4..]).ok()?;
        (v["version"].is_string() && v["components"].is_object()).then_some(v)
    };
    tokio::time::timeout(PROBE, fetch).await.ok().flatten()
}

pub(super) async fn check_listeners(r: &mut Report, cfg: &Config, daemon: bool) {
    for p in plan(cfg) {
        let (key, addr, proto, role) = (p.key, p.addr, p.proto, p.role);
        let p = if proto == Proto::Tcp { "tcp" } else { "udp" };
        if addr.port() == 0 {
            r.add(key, Level::Ok, format!("{addr}/{p}: port 0, any free port is taken at start"), None);
            continue;
        }
        let bound = match proto {
            Proto::Tcp => crate::listeners::bind_tcp(addr).map(drop),
            Proto::Udp => crate::listeners::bind_udp(addr).map(drop),
        };
        let e = match bound {
            Ok(()) => {
                let msg = if daemon {
                    format!("{addr}/{p} is free: the running ponte does not use it (started with another config?)")
                } else {
                    format!("{addr}/{p} can be bound")
                };
                r.add(key, if daemon { Level::Warn } else { Level::Ok }, msg, None);
                continue;
            }
            Err(e) => e,
        };
        let kind = e.kind();
        let text = BindError::new(key.clone(), addr, e).to_string();
        match kind {
            std::io::ErrorKind::AddrInUse => {
                // Ask the port in its own protocol: the daemon found at http.listen may not be what holds it.
                let ours = daemon
                    && match role {
                        Role::Http => true,
                        Role::Metrics => metrics_answer(selftest::reach(addr)).await,
                        Role::Stun => stun_answers(selftest::reach(addr), proto).await,
                        _ => true,
                    };
                if ours {
                    r.add(key, Level::Ok, format!("{addr}/{p} is in use by the running ponte"), None);
                } else {
                    let who = if daemon {
                        "another program (it does not answer like ponte)"
                    } else {
                        "another program (no ponte answers at http.listen)"
                    };
                    r.add(
                        key.clone(),
                        Level::Fail,
                        format!("{addr}/{p} is in use by {who}"),
                        Some(format!(
                            "find it with `sudo ss -l{}np 'sport = :{}'`, then stop it or change {key}",
                            if proto == Proto::Tcp { "t" } else { "u" },
                            addr.port()
                        )),
                    );
                }
            }
            std::io::ErrorKind::PermissionDenied if addr.port() < 1024 => r.add(
                key,
                Level::Warn,
                format!("{addr}/{p}: this user may not bind ports below 1024"),
                Some(
                    "the systemd unit gives ponte CAP_NET_BIND_SERVICE, so the daemon can; run `sudo ponte doctor` \
                     to check the port itself"
                        .into(),
                ),
            ),
            _ => r.add(key, Level::Fail, text, None),
        }
    }
}

/// A `GET /metrics` on `addr` that returns ponte's metrics.
async fn metrics_answer(addr: SocketAddr) -> bool {
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.take(1 << 20).read_to_end(&mut buf).await.ok()?;
        Some(String::from_utf8_lossy(&buf).contains("ponte_"))
    };
    tokio::time::timeout(PROBE, fetch).await.ok().flatten().unwrap_or(false)
}

/// Whether a STUN Binding request to `addr` gets a Binding answer.
async fn stun_answers(addr: SocketAddr, proto: Proto) -> bool {
    use crate::turn::codec;
    use stun::message::Setter;
    let txid: [u8; 12] = rand::random();
    let mut m = codec::message(codec::METHOD_BINDING, 0, txid);
    let _ = stun::fingerprint::FINGERPRINT.add_to(&mut m);
    let is_answer = |b: &[u8]| {
        codec::classify(b) == codec::Kind::Stun
            && codec::transaction_id(b) == txid
            && codec::method_and_class(b).0 == codec::METHOD_BINDING
    };
    let probe = async {
        let mut buf = vec![0u8; 2048];
        match proto {
            Proto::Udp => {
                let any = if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
                let s = tokio::net::UdpSocket::bind(any).await.ok()?;
                for _ in 0..3 {
                    s.send_to(&m.raw, addr).await.ok()?;
                    if let Ok(Ok((n, _))) =
                        tokio::time::timeout(Duration::from_millis(300), s.recv_from(&mut buf)).await
                    {
                        if is_answer(&buf[..n]) {
                            return Some(true);
                        }
                    }
                }
                Some(false)
            }
            Proto::Tcp => {
                let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
                s.write_all(&m.raw).await.ok()?;
                let mut got = 0;
                while got < codec::STUN_HEADER {
                    let n = s.read(&mut buf[got..]).await.ok()?;
                    if n == 0 {
                        return Some(false);
                    }
                    got += n;
                }
                Some(is_answer(&buf[..got]))
            }
        }
    };
    tokio::time::timeout(PROBE, probe).await.ok().flatten().unwrap_or(false)
}
