//! The relay self-test: two allocations on our own TURN server relay a packet to each other, through the real listener, authentication, relay sockets and relay-to-relay path.
//!
//! Used by `ponte doctor` and, once at start, by the daemon (`turn.self_test`). It needs no peer policy
//! exception: relay↔relay traffic between live allocations is always allowed (see `Core::relay_aliases`), so a
//! pass means exactly what two relayed browsers would get from this server.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::client::{Client, ClientError};
use crate::config::{Secret, TurnConfig};
use crate::health::{Component, Health, Status};

/// How long each relayed packet may take to arrive.
const RELAY_WAIT: Duration = Duration::from_secs(2);

/// A TURN username and password.
#[derive(Clone)]
pub struct Credential {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential").field("username", &self.username).field("password", &"***").finish()
    }
}

impl Credential {
    /// A TURN REST credential for `id`, minted with `secret`, valid for five minutes.
    pub fn mint(secret: &crate::config::Secret, id: &str) -> Credential {
        let c = crate::credentials::mint(secret, id, crate::credentials::unix_now(), 300);
        Credential { username: c.username, password: c.password }
    }
}

/// A passed self-test.
#[derive(Debug, Clone)]
pub struct Passed {
    /// The two relayed addresses, as the server announced them (the advertised address).
    pub relays: [SocketAddr; 2],
    /// Time for the packet A→B plus the answer B→A.
    pub round_trip: Duration,
}

/// A failed self-test: the step that failed, what happened, and what to do about it.
#[derive(Debug, Clone)]
pub struct Failed {
    pub step: &'static str,
    pub error: String,
    pub advice: String,
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} failed: {}", self.step, self.error)
    }
}

/// Where to send STUN/TURN to reach a listener bound on `listen`: the loopback address for a wildcard.
pub fn reach(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), listen.port()),
        IpAddr::V6(v6) if v6.is_unspecified() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), listen.port()),
        _ => listen,
    }
}

/// Run the self-test against the TURN UDP listener at `server` with one credential per allocation (they may be
/// the same). `cfg` only shapes the advice. Both allocations are released at the end, pass or fail.
pub async fn run(server: SocketAddr, creds: [&Credential; 2], cfg: &TurnConfig) -> Result<Passed, Failed> {
    run_family(server, creds, cfg, None).await
}

/// [`run`] with relays of one family (`Some(true)`: IPv6, asked with REQUESTED-ADDRESS-FAMILY), whatever the
/// family of the listener at `server` (RFC 8656 allows any client family with any relay family).
pub async fn run_family(
    server: SocketAddr,
    creds: [&Credential; 2],
    cfg: &TurnConfig,
    v6: Option<bool>,
) -> Result<Passed, Failed> {
    let any: SocketAddr = if server.is_ipv4() { "0.0.0.0:0".parse().unwrap() } else { "[::]:0".parse().unwrap() };
    let mut clients = Vec::new();
    for c in creds {
        let client = Client::bind(any, server, &c.username, &c.password).await.map_err(|e| Failed {
            step: "open a client socket",
            error: e.to_string(),
            advice: "this host refused a UDP socket; check the open-file limit".into(),
        })?;
        clients.push(client);
    }
    let result = relay_between(server, &mut clients, cfg, v6).await;
    for c in &mut clients {
        let _ = c.release().await;
    }
    result
}

async fn relay_between(
    server: SocketAddr,
    clients: &mut [Client],
    cfg: &TurnConfig,
    v6: Option<bool>,
) -> Result<Passed, Failed> {
    let ports = format!("{}-{}", cfg.relay_port_min, cfg.relay_port_max);
    let mut relays = Vec::new();
    for (i, c) in clients.iter_mut().enumerate() {
        let step = if i == 0 { "allocate relay A" } else { "allocate relay B" };
        let relay = c.allocate_family(v6).await.map_err(|e| Failed {
            step,
            advice: match &e {
                ClientError::Timeout { .. } => format!(
                    "nothing answered STUN/TURN at udp://{server}: is ponte running with this config, and does a \
                     firewall on this host drop UDP to port {}?",
                    server.port()
                ),
                ClientError::Refused { code: 401, .. } => "the TURN server refused the credentials: the running \
                    ponte uses another secret than this config (changed turn.secret or turn.secret_file without a \
                    restart?); restart ponte or fix the config"
                    .into(),
                ClientError::Refused { code: 440, .. } => format!(
                    "the server refused the address family (440): it has no {} relay address; set {} to an \
                     address of this host in that family, or remove the listeners of a family you do not relay",
                    family_name(v6),
                    if v6 == Some(true) { "turn.relay_ip6" } else { "turn.relay_ip" }
                ),
                ClientError::Refused { code: 486, .. } => "the per-user quota refused the allocation: \
                    turn.max_allocations_per_user is reached (or too low; the self-test needs 2)"
                    .into(),
                ClientError::Refused { code: 508, .. } => format!(
                    "the server is at capacity: turn.max_allocations is reached (or too low; the self-test needs 2), \
                     or no relay port is free in turn.relay_port_min..max ({ports}) on the relay address (widen the \
                     range, or set turn.relay_ip to an address of this host); the daemon's log says which"
                ),
                _ => "see the error; run with log.level = \"debug\" for the server's side".into(),
            },
            error: e.to_string(),
        })?;
        relays.push(relay);
    }
    let (a, b) = (relays[0], relays[1]);
    for (i, peer, step) in [(0, b, "permission on A for B"), (1, a, "permission on B for A")] {
        clients[i].permit(peer).await.map_err(|e| Failed {
            step,
            error: e.to_string(),
            advice: format!(
                "the server refused its own relay address {} as a peer; check turn.external_ip and turn.relay_ip \
                 (they must be this server's addresses)",
                peer.ip()
            ),
        })?;
    }
    let lost = |dir: &'static str, to: SocketAddr| Failed {
        step: dir,
        error: format!("the packet did not arrive within {}s", RELAY_WAIT.as_secs()),
        advice: format!(
            "relayed packets get lost between relay ports on this host: is {} an address of this host \
             (turn.relay_ip / turn.external_ip)? Does a local firewall drop UDP {ports}?",
            to.ip()
        ),
    };
    let token: u64 = rand::random();
    let ping = format!("ponte self-test {token:016x} ping");
    let pong = format!("ponte self-test {token:016x} pong");
    let started = Instant::now();
    clients[0].send(b, ping.as_bytes()).await.map_err(|e| Failed {
        step: "relay A → B",
        error: e.to_string(),
        advice: "sending to the TURN listener failed".into(),
    })?;
    let (from, data) = recv_expect(&mut clients[1], ping.as_bytes()).await.map_err(|_| lost("relay A → B", b))?;
    if from != a {
        return Err(Failed {
            step: "relay A → B",
            error: format!("the packet arrived from {from}, not from relay A at {a}"),
            advice: "the server rewrote the peer address wrongly; please report this".into(),
        });
    }
    debug_assert_eq!(data, ping.as_bytes());
    clients[1].send(a, pong.as_bytes()).await.map_err(|e| Failed {
        step: "relay B → A",
        error: e.to_string(),
        advice: "sending to the TURN listener failed".into(),
    })?;
    recv_expect(&mut clients[0], pong.as_bytes()).await.map_err(|_| lost("relay B → A", a))?;
    Ok(Passed { relays: [a, b], round_trip: started.elapsed() })
}

/// "IPv4"/"IPv6" for a family asked with REQUESTED-ADDRESS-FAMILY (none asked: the server's default, IPv4).
pub fn family_name(v6: Option<bool>) -> &'static str {
    if v6 == Some(true) {
        "IPv6"
    } else {
        "IPv4"
    }
}

/// Receive until `want` arrives (skipping anything else relayed to us), within [`RELAY_WAIT`].
async fn recv_expect(c: &mut Client, want: &[u8]) -> Result<(SocketAddr, Vec<u8>), ClientError> {
    let deadline = Instant::now() + RELAY_WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (from, data) = c.recv(left).await?;
        if data == want {
            return Ok((from, data));
        }
    }
}

/// One line describing a pass, for logs and `ponte doctor`.
pub fn describe(p: &Passed) -> String {
    format!(
        "relayed a packet both ways between relays {} and {} (round trip {:.1} ms)",
        p.relays[0],
        p.relays[1],
        p.round_trip.as_secs_f64() * 1000.0
    )
}

/// The daemon's self-test at start: once the TURN listeners are up, relay a packet through ourselves and log
/// the result. Runs beside the daemon, so it never delays READY, and its failure is only a warning.
/// `listen` are the bound `turn.listen_udp` addresses, `secret` the one that mints credentials. Every family
/// the server relays is tested (REQUESTED-ADDRESS-FAMILY), through a listener of that family when there is one.
pub async fn at_start(
    cfg: TurnConfig,
    listen: Vec<SocketAddr>,
    secret: Secret,
    health: Arc<Health>,
    shutdown: CancellationToken,
) {
    if !cfg.enabled || !cfg.self_test {
        return;
    }
    let Some(first) = listen.first().copied() else {
        tracing::info!("TURN self-test skipped: it runs over UDP and turn.listen_udp is empty");
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while health.get(Component::Turn) != Status::Ok {
        if shutdown.is_cancelled() || Instant::now() > deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let a = Credential::mint(&secret, "ponte-self-test-a");
    let b = Credential::mint(&secret, "ponte-self-test-b");
    let families: Vec<bool> = {
        let mut f: Vec<bool> = super::relay_ips(&cfg, &listen).iter().map(|ip| ip.is_ipv6()).collect();
        f.dedup();
        f
    };
    for v6 in families {
        let via = listen.iter().copied().find(|l| l.is_ipv6() == v6).unwrap_or(first);
        let name = family_name(Some(v6));
        let test = run_family(reach(via), [&a, &b], &cfg, Some(v6));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = test => match r {
                Ok(p) => tracing::info!("TURN self-test passed: {} ({name} relays)", describe(&p)),
                Err(f) => tracing::warn!("TURN self-test failed ({name} relays): {f} — {}", f.advice),
            },
        }
    }
}
