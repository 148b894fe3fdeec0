//! `ponte doctor`: checks the config, that every listener can be bound, the advertised relay address, and runs the relay self-test, printing one line of plain advice per check.
//!
//! Exit code: 0 when nothing failed (warnings do not fail), 1 when a check failed. The checks only touch
//! this host: the listeners are bound and released, a running ponte is asked at `/healthz` (and `/ws` for
//! TURN credentials when the secret is per process), and the relay self-test runs on loopback against the
//! running daemon's TURN server, or against one started in-process for the test.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError, Secret, TlsConfig};
use crate::health::{Component, Status};
use crate::server::{BindError, Listeners};
use crate::turn::selftest::{self, Credential};

pub mod router;

/// How long a probe of a running daemon may take.
const PROBE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

/// One check's result.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked: `config`, `daemon`, a listener's key (`turn.listen_udp[0]`), `address`, `relay`.
    pub check: String,
    pub status: Level,
    pub message: String,
    /// What to do, when there is something to do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advice: Option<String>,
}

/// Every check, in the order run.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// The config file checked (`None`: the built-in defaults).
    pub config: Option<String>,
    /// False when a check failed.
    pub ok: bool,
    pub checks: Vec<Check>,
}

impl Report {
    fn add(&mut self, check: impl Into<String>, status: Level, message: impl Into<String>, advice: Option<String>) {
        self.checks.push(Check { check: check.into(), status, message: message.into(), advice });
        self.ok = !self.failed();
    }

    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.status == Level::Fail)
    }

    /// The plain-text rendering: one line per check, advice indented under it, a summary line.
    pub fn to_text(&self) -> String {
        let mut out = match &self.config {
            Some(f) => format!("ponte doctor: checking {f}\n\n"),
            None => "ponte doctor: checking the built-in defaults (no config file)\n\n".to_string(),
        };
        let width = self.checks.iter().map(|c| c.check.len()).max().unwrap_or(0).max(8);
        for c in &self.checks {
            let tag = match c.status {
                Level::Ok => "ok  ",
                Level::Warn => "WARN",
                Level::Fail => "FAIL",
            };
            out.push_str(&format!("{tag}  {:width$}  {}\n", c.check, c.message));
            if let Some(a) = &c.advice {
                out.push_str(&format!("      {:width$}  → {a}\n", ""));
            }
        }
        let warns = self.checks.iter().filter(|c| c.status == Level::Warn).count();
        let fails = self.checks.iter().filter(|c| c.status == Level::Fail).count();
        let plural = |n: usize, w: &str| format!("{n} {w}{}", if n == 1 { "" } else { "s" });
        out.push_str(&format!(
            "\n{}, {} failed{}\n",
            plural(warns, "warning"),
            fails,
            if fails == 0 { "" } else { ": fix the FAIL lines above" }
        ));
        out
    }
}

/// Run every check for the config in `file` (the built-in defaults when `None`).
pub async fn diagnose(file: Option<&Path>) -> Report {
    let mut r = Report { config: file.map(|f| f.display().to_string()), ok: true, checks: Vec::new() };
    let config = match file {
        None => {
            r.add("config", Level::Ok, "no config file: the built-in defaults are what `ponte` runs with", None);
            Config::default()
        }
        Some(f) => match Config::load(f) {
            Ok(c) => {
                r.add("config", Level::Ok, format!("{} is valid", f.display()), None);
                c
            }
            Err(ConfigError::Invalid { problems, .. }) => {
                for p in problems {
                    r.add(p.key, Level::Fail, p.message, None);
                }
                r.add(
                    "config",
                    Level::Fail,
                    format!("{} is invalid; the other checks need a valid config", f.display()),
                    Some("fix the keys above, then run `ponte doctor` again".into()),
                );
                return r;
            }
            Err(e) => {
                r.add(
                    "config",
                    Level::Fail,
                    e.to_string(),
                    Some(
                        "fix the file (config.example.toml documents every key), then run `ponte doctor` again".into(),
                    ),
                );
                return r;
            }
        },
    };

    let daemon = check_daemon(&mut r, &config).await;
    check_listeners(&mut r, &config, daemon.is_some()).await;
    check_address(&mut r, &config);
    router::check(&mut r, &config, daemon.is_some()).await;
    check_relay(&mut r, &config, daemon.as_ref()).await;
    r
}

/// What a running ponte said at `/healthz`.
#[derive(Debug, Clone)]
struct Daemon {
    http: SocketAddr,
    version: String,
    turn: String,
}

async fn check_daemon(r: &mut Report, cfg: &Config) -> Option<Daemon> {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Tcp,
    Udp,
}

/// Every listener the config asks for, with its key and what serves on it.
fn listeners(cfg: &Config) -> Vec<(String, SocketAddr, Proto, &'static str)> {
    let mut v = vec![("http.listen".to_string(), cfg.http.listen, Proto::Tcp, "http")];
    if cfg.metrics.enabled {
        v.push(("metrics.listen".into(), cfg.metrics.listen, Proto::Tcp, "metrics"));
    }
    if cfg.tls.enabled() {
        v.push(("tls.listen".into(), cfg.tls.listen, Proto::Tcp, "tls"));
        if cfg.turn.enabled {
            for (i, a) in cfg.tls.turns_listen.iter().enumerate() {
                v.push((format!("tls.turns_listen[{i}]"), *a, Proto::Tcp, "tls"));
            }
        }
    }
    if cfg.turn.enabled {
        for (i, a) in cfg.turn.listen_udp.iter().enumerate() {
            v.push((format!("turn.listen_udp[{i}]"), *a, Proto::Udp, "stun"));
        }
        for (i, a) in cfg.turn.listen_tcp.iter().enumerate() {
            v.push((format!("turn.listen_tcp[{i}]"), *a, Proto::Tcp, "stun"));
        }
    }
    v
}

async fn check_listeners(r: &mut Report, cfg: &Config, daemon: bool) {
    for (key, addr, proto, role) in listeners(cfg) {
        let p = if proto == Proto::Tcp { "tcp" } else { "udp" };
        if addr.port() == 0 {
            r.add(key, Level::Ok, format!("{addr}/{p}: port 0, any free port is taken at start"), None);
            continue;
        }
        let bound = match proto {
            Proto::Tcp => crate::server::bind_tcp(addr).map(drop),
            Proto::Udp => crate::server::bind_udp(addr).map(drop),
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
                        "http" => true,
                        "metrics" => metrics_answer(selftest::reach(addr)).await,
                        "stun" => stun_answers(selftest::reach(addr), proto).await,
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

/// What kind of address an IP is, for the advertised-address advice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    Public,
    /// RFC 1918 or IPv6 unique-local: a LAN address.
    Private,
    /// 100.64.0.0/10: the provider's carrier-grade NAT (or a VPN such as Tailscale).
    Cgnat,
    Loopback,
    LinkLocal,
    /// TEST-NET-1/2/3, 2001:db8::/32, 3fff::/20: examples and test labs.
    Documentation,
    /// Anything else no Internet host can have (benchmarking, reserved, multicast, unspecified…).
    Special,
}

/// Classify `ip` (IPv4-mapped IPv6 as the IPv4 it carries).
pub fn classify(ip: IpAddr) -> AddressClass {
    use AddressClass::*;
    match crate::turn::policy::canonical(ip) {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_loopback() {
                Loopback
            } else if v4.is_private() {
                Private
            } else if o[0] == 100 && (o[1] & 0xC0) == 64 {
                Cgnat
            } else if v4.is_link_local() {
                LinkLocal
            } else if v4.is_documentation() {
                Documentation
            } else if v4.is_unspecified()
                || o[0] == 0
                || v4.is_multicast()
                || o[0] >= 240
                || (o[0] == 198 && (o[1] & 0xFE) == 18)
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
            {
                Special
            } else {
                Public
            }
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if v6.is_loopback() {
                Loopback
            } else if (s[0] & 0xfe00) == 0xfc00 {
                Private
            } else if (s[0] & 0xffc0) == 0xfe80 {
                LinkLocal
            } else if (s[0] == 0x2001 && s[1] == 0x0db8) || (s[0] & 0xfff0) == 0x3ff0 {
                Documentation
            } else if (s[0] & 0xe000) == 0x2000 {
                Public
            } else {
                Special
            }
        }
    }
}

/// The ports a router must forward to this host, as one phrase.
fn forward_list(cfg: &Config) -> String {
    let mut parts = vec![format!("TCP {} (http.listen)", cfg.http.listen.port())];
    if cfg.tls.enabled() {
        parts.push(format!("TCP {} (tls.listen)", cfg.tls.listen.port()));
    }
    let mut udp: Vec<u16> = cfg.turn.listen_udp.iter().map(|a| a.port()).collect();
    let mut tcp: Vec<u16> = cfg.turn.listen_tcp.iter().map(|a| a.port()).collect();
    udp.sort_unstable();
    udp.dedup();
    tcp.sort_unstable();
    tcp.dedup();
    let join = |v: &[u16]| v.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
    if !udp.is_empty() && udp == tcp {
        parts.push(format!("UDP and TCP {} (turn.listen_udp, turn.listen_tcp)", join(&udp)));
    } else {
        if !udp.is_empty() {
            parts.push(format!("UDP {} (turn.listen_udp)", join(&udp)));
        }
        if !tcp.is_empty() {
            parts.push(format!("TCP {} (turn.listen_tcp)", join(&tcp)));
        }
    }
    parts.push(format!(
        "UDP {}-{} (turn.relay_port_min..relay_port_max)",
        cfg.turn.relay_port_min, cfg.turn.relay_port_max
    ));
    parts.join(", ")
}

fn check_address(r: &mut Report, cfg: &Config) {
    let t = &cfg.turn;
    if !t.enabled {
        r.add("address", Level::Ok, "turn.enabled = false: no relay address to advertise", None);
        return;
    }
    let listen: Vec<SocketAddr> = t.listen_udp.iter().chain(&t.listen_tcp).copied().collect();
    let relay_ips = crate::turn::relay_ips(t, &listen);
    let relay = relay_ips[0];
    let advertised = crate::turn::public_ip(t, &listen);
    let source = match t.external_ip {
        Some(_) => "turn.external_ip".to_string(),
        None if t.relay_ip.is_some() => "turn.relay_ip; turn.external_ip is not set".to_string(),
        None => "detected from this host's routes; turn.external_ip is not set".to_string(),
    };
    let forward = forward_list(cfg);
    let behind_nat = t.external_ip.is_some() && classify(relay) != AddressClass::Public && relay != advertised;
    let (level, what, advice) = match classify(advertised) {
        AddressClass::Public => (
            Level::Ok,
            "public: browsers anywhere can reach the relay".to_string(),
            Some(if behind_nat {
                format!("the router must forward {forward} to this host ({relay})")
            } else {
                format!("a firewall must let in {forward}")
            }),
        ),
        AddressClass::Private if t.external_ip.is_some() => (
            Level::Warn,
            "a private LAN address: only devices on that network can reach the relay".to_string(),
            Some("turn.external_ip should be the router's public address unless everybody chats from this LAN".into()),
        ),
        AddressClass::Private => (
            Level::Warn,
            "a private LAN address: only devices on this network can reach the relay".to_string(),
            Some(format!(
                "behind a home router, set turn.external_ip to the router's public address and forward {forward} \
                 to this host ({relay})"
            )),
        ),
        AddressClass::Cgnat => (
            Level::Warn,
            "in 100.64.0.0/10: your provider's carrier-grade NAT (or a VPN such as Tailscale)".to_string(),
            Some(
                "port forwarding cannot get through a provider's NAT, so people outside cannot reach the relay; ask \
                 the provider for a public IPv4 address, use IPv6, or run ponte on a small server with a public address"
                    .into(),
            ),
        ),
        AddressClass::Loopback => (
            Level::Warn,
            "loopback: only programs on this machine can reach the relay".to_string(),
            Some("set turn.relay_ip to this host's LAN or public address (and turn.external_ip behind a router)".into()),
        ),
        AddressClass::LinkLocal => (
            Level::Warn,
            "link-local: not even other networks of this site can reach the relay".to_string(),
            Some("set turn.relay_ip to a routable address of this host".into()),
        ),
        AddressClass::Documentation => (
            Level::Warn,
            "in a documentation range (TEST-NET or 2001:db8::/32) that no real network routes".to_string(),
            Some(
                "fine in a test lab; for real use set turn.external_ip to your public address (the lab also needs \
                 turn.allow_peers for its peers)"
                    .into(),
            ),
        ),
        AddressClass::Special => (
            Level::Warn,
            "a special-purpose address no Internet host can reach".to_string(),
            Some("set turn.external_ip to your public address".into()),
        ),
    };
    let relay_note = if relay != advertised { format!("; relay sockets bind on {relay}") } else { String::new() };
    r.add("address", level, format!("advertised relay address {advertised} ({source}) is {what}{relay_note}"), advice);
}

async fn check_relay(r: &mut Report, cfg: &Config, daemon: Option<&Daemon>) {
    let t = &cfg.turn;
    if !t.enabled {
        r.add("relay", Level::Ok, "self-test skipped: turn.enabled = false", None);
        return;
    }
    let Some(listen) = t.listen_udp.first().copied() else {
        r.add(
            "relay",
            Level::Warn,
            "self-test skipped: it runs over UDP and turn.listen_udp is empty",
            Some("browsers relay over UDP when they can; add a turn.listen_udp address".into()),
        );
        return;
    };
    let outcome = match daemon {
        Some(d) if listen.port() != 0 => {
            if d.turn != "ok" {
                r.add(
                    "relay",
                    Level::Fail,
                    format!("the running ponte {} reports its TURN server as {}", d.version, d.turn),
                    Some("look at `journalctl -u ponte`; with turn.enabled = false in its config, restart it with this one".into()),
                );
                return;
            }
            let creds = match daemon_credentials(cfg, d.http).await {
                Ok(c) => c,
                Err(why) => {
                    r.add("relay", Level::Warn, format!("self-test skipped: {why}"), Some(
                        "set turn.secret_file so that doctor can mint credentials, or open /diag in a browser to test TURN".into(),
                    ));
                    return;
                }
            };
            let res = selftest::run(selftest::reach(listen), [&creds[0], &creds[1]], t).await;
            ("against the running ponte", res, None)
        }
        _ => match in_process(cfg, listen).await {
            Ok((res, note)) => ("on a TURN server started for the test (no ponte running)", res, note),
            Err(e) => {
                r.add(
                    "relay",
                    Level::Fail,
                    format!("self-test could not start a TURN server: {e:#}"),
                    Some("fix the problem above (often a listener or relay address that is not this host's)".into()),
                );
                return;
            }
        },
    };
    match outcome {
        (how, Ok(p), note) => {
            r.add("relay", Level::Ok, format!("self-test {how} passed: {}", selftest::describe(&p)), note)
        }
        (how, Err(f), _) => r.add("relay", Level::Fail, format!("self-test {how}: {f}"), Some(f.advice)),
    }
}

/// Two credentials the running daemon accepts: minted with the configured secret, a static user, or (with a
/// per-process random secret) the ones the daemon hands to browsers in its `welcome`.
async fn daemon_credentials(cfg: &Config, http: SocketAddr) -> Result<[Credential; 2], String> {
    let secret = if let Some(s) = &cfg.turn.secret {
        Some(s.clone())
    } else if let Some(f) = &cfg.turn.secret_file {
        let text =
            std::fs::read_to_string(f).map_err(|e| format!("cannot read turn.secret_file {}: {e}", f.display()))?;
        Some(Secret::new(text.lines().next().unwrap_or("").trim()))
    } else {
        None
    };
    if let Some(s) = secret {
        return Ok([Credential::mint(&s, "ponte-doctor-a"), Credential::mint(&s, "ponte-doctor-b")]);
    }
    if let Some(u) = cfg.turn.users.first() {
        let c = Credential { username: u.username.clone(), password: u.password.expose().to_string() };
        return Ok([c.clone(), c]);
    }
    let c = welcome_credential(http).await?;
    Ok([c.clone(), c])
}

/// The TURN credential of ponte's own `turn:` entry in the `welcome` the daemon sends a new client.
async fn welcome_credential(http: SocketAddr) -> Result<Credential, String> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let session = async {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{http}/ws"))
            .await
            .map_err(|e| format!("the daemon's secret is random per start and /ws refused doctor: {e}"))?;
        ws.send(Message::Text(r#"{"type":"hello","v":1}"#.into())).await.map_err(|e| e.to_string())?;
        let found = loop {
            let Some(Ok(msg)) = ws.next().await else {
                break Err("the daemon closed /ws before its welcome".to_string());
            };
            let Message::Text(text) = msg else { continue };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else { continue };
            if v["type"] != "welcome" {
                continue;
            }
            let servers = v["ice_servers"].as_array().cloned().unwrap_or_default();
            let own = servers.iter().find(|s| {
                s["urls"]
                    .as_array()
                    .is_some_and(|u| u.iter().any(|u| u.as_str().is_some_and(|u| u.starts_with("turn:"))))
                    && s["username"].is_string()
            });
            break match own {
                Some(s) => Ok(Credential {
                    username: s["username"].as_str().unwrap_or_default().to_string(),
                    password: s["credential"].as_str().unwrap_or_default().to_string(),
                }),
                None => Err("the daemon's welcome has no turn: server with credentials".to_string()),
            };
        };
        let _ = ws.close(None).await;
        found
    };
    tokio::time::timeout(Duration::from_secs(5), session)
        .await
        .map_err(|_| "no welcome from /ws within 5 s".to_string())?
}

/// Start the TURN server of `cfg` in-process (UDP only, on `listen`, or on a free port of the same address when
/// that one cannot be bound) with a fresh secret, run the self-test against it, and stop it.
async fn in_process(
    cfg: &Config,
    listen: SocketAddr,
) -> anyhow::Result<(Result<selftest::Passed, selftest::Failed>, Option<String>)> {
    let mut c = cfg.clone();
    // The relay address stays what the daemon would use, whatever the test listener is.
    let all: Vec<SocketAddr> = cfg.turn.listen_udp.iter().chain(&cfg.turn.listen_tcp).copied().collect();
    c.turn.relay_ip = crate::turn::relay_ips(&cfg.turn, &all)
        .into_iter()
        .find(|ip| ip.is_ipv4() == listen.is_ipv4())
        .or(cfg.turn.relay_ip);
    c.http.listen = "127.0.0.1:0".parse()?;
    c.metrics.enabled = false;
    c.tls = TlsConfig::default();
    c.turn.secret = Some(Secret::generate());
    c.turn.secret_file = None;
    c.turn.listen_udp = vec![listen];
    c.turn.listen_tcp = Vec::new();
    let mut note = None;
    let listeners = match Listeners::bind(&c) {
        Ok(l) => l,
        Err(e) if listen.port() != 0 => {
            note = Some(format!(
                "{} could not be bound ({}), so the test used a free port on the same address",
                listen, e.source
            ));
            c.turn.listen_udp = vec![SocketAddr::new(listen.ip(), 0)];
            Listeners::bind(&c)?
        }
        Err(e) => return Err(e.into()),
    };
    let server = selftest::reach(listeners.turn_udp_addrs()[0]);
    let ctx = Arc::new(crate::server::Context::new(c, &listeners)?);
    let Listeners { turn_udp, turn_tcp, .. } = listeners;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(crate::turn::serve(ctx.clone(), turn_udp, turn_tcp, shutdown.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while ctx.health.get(Component::Turn) != Status::Ok {
        if task.is_finished() || tokio::time::Instant::now() > deadline {
            shutdown.cancel();
            return match task.await {
                Ok(Err(e)) => Err(e),
                _ => Err(anyhow::anyhow!("the TURN server did not come up within 5 s")),
            };
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let secret = ctx.turn_secret.clone();
    let (a, b) = (Credential::mint(&secret, "ponte-doctor-a"), Credential::mint(&secret, "ponte-doctor-b"));
    let res = selftest::run(server, [&a, &b], &cfg.turn).await;
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(3), task).await;
    Ok((res, note))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_classes() {
        use AddressClass::*;
        for (ip, class) in [
            ("8.8.8.8", Public),
            ("2a00:1450::1", Public),
            ("::ffff:9.9.9.9", Public),
            ("10.77.1.2", Private),
            ("172.16.0.1", Private),
            ("192.168.1.10", Private),
            ("fd12::1", Private),
            ("::ffff:192.168.1.1", Private),
            ("100.64.0.1", Cgnat),
            ("100.127.255.254", Cgnat),
            ("127.0.0.1", Loopback),
            ("::1", Loopback),
            ("169.254.1.1", LinkLocal),
            ("fe80::1", LinkLocal),
            ("192.0.2.1", Documentation),
            ("198.51.100.10", Documentation),
            ("203.0.113.7", Documentation),
            ("2001:db8::1", Documentation),
            ("3fff::1", Documentation),
            ("198.18.0.1", Special),
            ("240.0.0.1", Special),
            ("0.0.0.0", Special),
            ("224.0.0.1", Special),
            ("ff02::1", Special),
        ] {
            assert_eq!(classify(ip.parse().unwrap()), class, "{ip}");
        }
        // Just outside CGNAT's /10.
        assert_eq!(classify("100.128.0.1".parse().unwrap()), Public);
    }

    #[test]
    fn forward_list_names_every_port_and_key() {
        let mut c = Config::default();
        assert_eq!(
            forward_list(&c),
            "TCP 8080 (http.listen), UDP and TCP 3478 (turn.listen_udp, turn.listen_tcp), UDP 49152-65535 \
             (turn.relay_port_min..relay_port_max)"
        );
        c.turn.listen_tcp = vec!["0.0.0.0:443".parse().unwrap()];
        c.turn.relay_port_min = 50000;
        c.turn.relay_port_max = 50100;
        let s = forward_list(&c);
        assert!(s.contains("UDP 3478 (turn.listen_udp), TCP 443 (turn.listen_tcp), UDP 50000-50100"), "{s}");
    }

    #[test]
    fn report_text_and_exit_status() {
        let mut r = Report { config: Some("x.toml".into()), ok: true, checks: Vec::new() };
        r.add("config", Level::Ok, "x.toml is valid", None);
        r.add("address", Level::Warn, "private", Some("set turn.external_ip".into()));
        assert!(!r.failed() && r.ok);
        let t = r.to_text();
        assert!(t.contains("ok    config    x.toml is valid\n"), "{t}");
        assert!(t.contains("WARN  address   private\n                → set turn.external_ip\n"), "{t}");
        assert!(t.ends_with("1 warning, 0 failed\n"), "{t}");
        r.add("relay", Level::Fail, "self-test failed", None);
        assert!(r.failed() && !r.ok);
        assert!(r.to_text().ends_with("1 warning, 1 failed: fix the FAIL lines above\n"));
    }
}
