//! The relay self-test: two allocations relay a packet through the running ponte's TURN server, or through one
//! started in-process for the test when no ponte runs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::probes::Daemon;
use super::report::{Level, Report};
use crate::config::{Config, Secret, TlsConfig};
use crate::health::{Component, Status};
use crate::listeners::Listeners;
use crate::turn::selftest::{self, Credential};

pub(super) async fn check_relay(r: &mut Report, cfg: &Config, daemon: Option<&Daemon>) {
    let t = &cfg.turn;
    if !t.enabled {
        r.add("relay", Level::Ok, "self-test skipped: turn.enabled = false", None);
        return;
    }
    let Some(first) = t.listen_udp.first().copied() else {
        r.add(
            "relay",
            Level::Warn,
            "self-test skipped: it runs over UDP and turn.listen_udp is empty",
            Some("browsers relay over UDP when they can; add a turn.listen_udp address".into()),
        );
        return;
    };
    // One self-test per relay family (REQUESTED-ADDRESS-FAMILY), through a UDP listener of that family when there
    // is one (RFC 8656 lets any client family use any relay family).
    let all: Vec<SocketAddr> = t.listen_udp.iter().chain(&t.listen_tcp).copied().collect();
    let mut families: Vec<bool> = crate::turn::relay_ips(t, &all).iter().map(|ip| ip.is_ipv6()).collect();
    families.dedup();
    let mut creds = None;
    for v6 in families {
        let listen = t.listen_udp.iter().copied().find(|l| l.is_ipv6() == v6).unwrap_or(first);
        if !relay_family(r, cfg, daemon, listen, v6, &mut creds).await {
            return;
        }
    }
}

/// The self-test for one relay family; false when the other families need not be tried (no credentials, the
/// daemon's TURN is down).
async fn relay_family(
    r: &mut Report,
    cfg: &Config,
    daemon: Option<&Daemon>,
    listen: SocketAddr,
    v6: bool,
    creds: &mut Option<[Credential; 2]>,
) -> bool {
    let t = &cfg.turn;
    let family = selftest::family_name(Some(v6));
    let outcome = match daemon {
        Some(d) if listen.port() != 0 => {
            if d.turn != "ok" {
                r.add(
                    "relay",
                    Level::Fail,
                    format!("the running ponte {} reports its TURN server as {}", d.version, d.turn),
                    Some("look at `journalctl -u ponte`; with turn.enabled = false in its config, restart it with this one".into()),
                );
                return false;
            }
            if creds.is_none() {
                match daemon_credentials(cfg, d.http).await {
                    Ok(c) => *creds = Some(c),
                    Err(why) => {
                        r.add("relay", Level::Warn, format!("self-test skipped: {why}"), Some(
                            "set turn.secret_file so that doctor can mint credentials, or open /diag in a browser to test TURN".into(),
                        ));
                        return false;
                    }
                }
            }
            let c = creds.as_ref().expect("set above");
            let res = selftest::run_family(selftest::reach(listen), [&c[0], &c[1]], t, Some(v6)).await;
            ("against the running ponte", res, None)
        }
        _ => match in_process(cfg, listen, v6).await {
            Ok((res, note)) => ("on a TURN server started for the test (no ponte running)", res, note),
            Err(e) => {
                r.add(
                    "relay",
                    Level::Fail,
                    format!("self-test could not start a TURN server: {e:#}"),
                    Some("fix the problem above (often a listener or relay address that is not this host's)".into()),
                );
                return true;
            }
        },
    };
    match outcome {
        (how, Ok(p), note) => r.add(
            "relay",
            Level::Ok,
            format!("self-test {how} passed: {} ({family} relays)", selftest::describe(&p)),
            note,
        ),
        (how, Err(f), _) => {
            r.add("relay", Level::Fail, format!("self-test {how} ({family} relays): {f}"), Some(f.advice))
        }
    }
    true
}

/// Two credentials the running daemon accepts: minted with the configured secret, a static user, or (with a
/// per-process random secret) the ones the daemon hands to browsers in its `welcome`.
async fn daemon_credentials(cfg: &Config, http: SocketAddr) -> Result<[Credential; 2], String> {
    if let Some(s) = crate::config::read_secret(&cfg.turn).map_err(|p| p.to_string())? {
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
    v6: bool,
) -> anyhow::Result<(Result<selftest::Passed, selftest::Failed>, Option<String>)> {
    let mut c = cfg.clone();
    // The relay address of the family under test stays what the daemon would use, whatever the test listener is.
    let all: Vec<SocketAddr> = cfg.turn.listen_udp.iter().chain(&cfg.turn.listen_tcp).copied().collect();
    c.turn.relay_ip = crate::turn::relay_ips(&cfg.turn, &all).into_iter().find(|ip| ip.is_ipv6() == v6);
    c.turn.relay_ip6 = None;
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
    let secret = c.turn.secret.clone().expect("set above");
    let health = Arc::new(crate::health::Health::default());
    let deps = crate::turn::Deps {
        config: c.turn.clone(),
        live: crate::live::LiveConfig::new(c).1,
        secrets: vec![secret.clone()],
        health: health.clone(),
        metrics: Arc::default(),
        cluster_peers: None,
        tls_streams: None,
    };
    let Listeners { turn_udp, turn_tcp, .. } = listeners;
    let shutdown = CancellationToken::new();
    let sockets = crate::turn::Sockets { udp: turn_udp, tcp: turn_tcp, stun_alt: None };
    let task = tokio::spawn(crate::turn::serve(deps, sockets, shutdown.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while health.get(Component::Turn) != Status::Ok {
        if task.is_finished() || tokio::time::Instant::now() > deadline {
            shutdown.cancel();
            return match task.await {
                Ok(Err(e)) => Err(e),
                _ => Err(anyhow::anyhow!("the TURN server did not come up within 5 s")),
            };
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (a, b) = (Credential::mint(&secret, "ponte-doctor-a"), Credential::mint(&secret, "ponte-doctor-b"));
    let res = selftest::run_family(server, [&a, &b], &cfg.turn, Some(v6)).await;
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(3), task).await;
    Ok((res, note))
}
