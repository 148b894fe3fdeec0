//! Daemon lifecycle: binding every listener up front, `run()` supervising the core tasks, graceful shutdown.
//!
//! `run` takes already-bound sockets and a shutdown token so that tests start the real server on port 0 and
//! never sleep waiting for it.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Secret};
use crate::health::{Component, Health, Status};

/// How long tasks get to finish after shutdown is requested, inside `run` (the CLI adds its own hard deadline).
const DRAIN: Duration = Duration::from_secs(4);

/// Every socket the daemon serves on, bound before `run` so that a port clash is reported before anything starts.
#[derive(Debug)]
pub struct Listeners {
    pub http: TcpListener,
    /// `/metrics`, when `metrics.enabled`.
    pub metrics: Option<TcpListener>,
    /// The shared HTTPS/WSS/TURNS port, when TLS is configured.
    pub tls: Option<TcpListener>,
    /// TURNS-only ports (`tls.turns_listen`).
    pub turns: Vec<TcpListener>,
    pub turn_udp: Vec<UdpSocket>,
    pub turn_tcp: Vec<TcpListener>,
}

/// A listener that could not be bound, naming the config key that chose the address.
#[derive(Debug, thiserror::Error)]
#[error("cannot bind {key} = \"{addr}\": {source}{hint}")]
pub struct BindError {
    pub key: String,
    pub addr: SocketAddr,
    pub source: std::io::Error,
    hint: &'static str,
}

impl BindError {
    pub(crate) fn new(key: String, addr: SocketAddr, source: std::io::Error) -> Self {
        let hint = match source.kind() {
            std::io::ErrorKind::AddrInUse => {
                " — another program (or another ponte) already uses this port; stop it or change the address"
            }
            std::io::ErrorKind::PermissionDenied => {
                " — ports below 1024 need CAP_NET_BIND_SERVICE (the systemd unit grants it) or a higher port"
            }
            std::io::ErrorKind::AddrNotAvailable => {
                " — this host has no such address; use one of its interface addresses or 0.0.0.0"
            }
            _ => "",
        };
        BindError { key, addr, source, hint }
    }
}

impl Listeners {
    /// Bind every listener the config asks for.
    pub fn bind(config: &Config) -> Result<Listeners, BindError> {
        let http =
            bind_tcp(config.http.listen).map_err(|e| BindError::new("http.listen".into(), config.http.listen, e))?;
        let metrics = match config.metrics.enabled {
            true => Some(
                bind_tcp(config.metrics.listen)
                    .map_err(|e| BindError::new("metrics.listen".into(), config.metrics.listen, e))?,
            ),
            false => None,
        };
        let mut tls = None;
        let mut turns = Vec::new();
        if config.tls.enabled() {
            let a = config.tls.listen;
            tls = Some(bind_tcp(a).map_err(|e| BindError::new("tls.listen".into(), a, e))?);
            if config.turn.enabled {
                for (i, a) in config.tls.turns_listen.iter().enumerate() {
                    turns.push(bind_tcp(*a).map_err(|e| BindError::new(format!("tls.turns_listen[{i}]"), *a, e))?);
                }
            }
        }
        let mut turn_udp = Vec::new();
        let mut turn_tcp = Vec::new();
        if config.turn.enabled {
            let workers = udp_workers(config.turn.udp_workers);
            for (i, a) in config.turn.listen_udp.iter().enumerate() {
                let group =
                    bind_udp_group(*a, workers).map_err(|e| BindError::new(format!("turn.listen_udp[{i}]"), *a, e))?;
                turn_udp.extend(group);
            }
            for (i, a) in config.turn.listen_tcp.iter().enumerate() {
                turn_tcp.push(bind_tcp(*a).map_err(|e| BindError::new(format!("turn.listen_tcp[{i}]"), *a, e))?);
            }
        }
        Ok(Listeners { http, metrics, tls, turns, turn_udp, turn_tcp })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http.local_addr().expect("bound socket has an address")
    }
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls.as_ref().and_then(|l| l.local_addr().ok())
    }
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }
    /// One entry per `turn.listen_udp` address (the sockets of one SO_REUSEPORT group share it).
    pub fn turn_udp_addrs(&self) -> Vec<SocketAddr> {
        let mut addrs: Vec<SocketAddr> = Vec::new();
        for a in self.turn_udp.iter().filter_map(|s| s.local_addr().ok()) {
            if !addrs.contains(&a) {
                addrs.push(a);
            }
        }
        addrs
    }
    pub fn turn_tcp_addrs(&self) -> Vec<SocketAddr> {
        self.turn_tcp.iter().filter_map(|s| s.local_addr().ok()).collect()
    }
}

fn new_socket(addr: SocketAddr, ty: Type, proto: Protocol) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        // `[::]:port` serves IPv4 too, as people expect from a dual-stack wildcard.
        socket.set_only_v6(false)?;
    }
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// A TCP listener with SO_REUSEADDR (a restart must not fail on TIME_WAIT) and a deep accept queue.
pub fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = new_socket(addr, Type::STREAM, Protocol::TCP)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// `turn.udp_workers` resolved: 0 means one per CPU, at most 8.
pub fn udp_workers(configured: usize) -> usize {
    match configured {
        0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(8),
        n => n,
    }
}

/// `n` UDP sockets on one address sharing it through SO_REUSEPORT (one plain socket when `n` is 1).
///
/// SO_REUSEPORT would also let a second ponte started by mistake join the group silently (the kernel only asks for
/// the same user) and steal half the clients; so the address is first bound once without it, which fails with
/// "address in use" exactly like a single socket would, and also resolves port 0.
pub fn bind_udp_group(addr: SocketAddr, n: usize) -> std::io::Result<Vec<UdpSocket>> {
    if n <= 1 {
        return Ok(vec![bind_udp(addr)?]);
    }
    let probe = bind_udp(addr)?;
    let addr = probe.local_addr()?;
    drop(probe);
    (0..n)
        .map(|_| {
            let socket = new_socket(addr, Type::DGRAM, Protocol::UDP)?;
            socket.set_reuse_port(true)?;
            let _ = socket.set_recv_buffer_size(4 << 20);
            let _ = socket.set_send_buffer_size(4 << 20);
            socket.bind(&addr.into())?;
            Ok(socket.into())
        })
        .collect()
}

/// A UDP socket with large buffers: a busy STUN/TURN port drops packets with the default 208 KiB.
pub fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = new_socket(addr, Type::DGRAM, Protocol::UDP)?;
    // Best effort: the kernel caps these at net.core.{r,w}mem_max.
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// What every component shares: the validated config plus facts settled at start.
#[derive(Debug)]
pub struct Context {
    /// The configuration the daemon started with. Settings that can change while running (see [`Context::reload`])
    /// are read through [`Context::live`] instead.
    pub config: Config,
    /// The current configuration, replaced by a successful reload (SIGHUP).
    live: tokio::sync::watch::Sender<Arc<Config>>,
    /// The TURN REST secret that mints new credentials.
    pub turn_secret: Secret,
    /// Every secret the TURN server accepts (`turn_secret` first, then `turn.accept_secrets`).
    pub turn_secrets: Vec<Secret>,
    /// Signs reconnect tokens and pairing tickets; the same after a restart unless it is random (see its source).
    pub signaling_key: crate::signaling::keys::SigningKey,
    pub signaling_key_source: crate::signaling::keys::KeySource,
    pub health: Health,
    /// Counters of every component, rendered at `/metrics`.
    pub metrics: crate::metrics::Metrics,
    /// Where HTTP actually listens (port 0 resolved).
    pub http_addr: SocketAddr,
    /// Where STUN/TURN actually listens (port 0 resolved); empty when TURN is disabled.
    pub turn_udp_addrs: Vec<SocketAddr>,
    pub turn_tcp_addrs: Vec<SocketAddr>,
    /// Where the shared TLS port actually listens, when TLS is on.
    pub tls_addr: Option<SocketAddr>,
    /// The certificate in use, when TLS is on (reloaded on SIGHUP and when the files change).
    pub certs: Option<Arc<crate::tls::Certs>>,
    /// The answers to ACME validation requests, when `tls.acme` is set.
    pub acme_challenges: Option<Arc<crate::acme::Challenges>>,
    acme_stats: Arc<crate::acme::AcmeStats>,
    /// TURN-over-TLS streams accepted by the TLS listeners, for the TURN server to take at start.
    turns_streams: parking_lot::Mutex<Option<tokio::sync::mpsc::Receiver<TurnStream>>>,
    turns_sender: tokio::sync::mpsc::Sender<TurnStream>,
}

/// A decrypted TURN-over-TLS stream with its client and local addresses.
pub type TurnStream = (crate::tls::Prefixed<crate::tls::TlsStream>, SocketAddr, SocketAddr);

impl Context {
    /// Build the context: settle the TURN secret (configured, from file, or generated for this run).
    pub fn new(config: Config, listeners: &Listeners) -> anyhow::Result<Context> {
        let configured_secret = config.turn.secret.is_some() || config.turn.secret_file.is_some();
        let turn_secret = if let Some(s) = &config.turn.secret {
            s.clone()
        } else if let Some(path) = &config.turn.secret_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("turn.secret_file: cannot read {}", path.display()))?;
            let first = text.lines().next().map(str::trim).unwrap_or("");
            anyhow::ensure!(
                !first.is_empty(),
                "turn.secret_file: {} is empty; write the secret on its first line",
                path.display()
            );
            Secret::new(first)
        } else {
            if config.turn.enabled {
                tracing::info!(
                    "generated a random TURN secret for this run (set turn.secret or turn.secret_file to keep \
                     credentials valid across restarts or to share it with an external TURN server)"
                );
            }
            Secret::generate()
        };
        let (signaling_key, signaling_key_source) =
            crate::signaling::keys::SigningKey::from_config(&config, configured_secret.then(|| turn_secret.expose()))?;
        let certs = match (&config.tls.cert, &config.tls.key, &config.tls.acme) {
            (Some(c), Some(k), _) => Some(crate::tls::Certs::load(c, k)?),
            (_, _, Some(acme)) => Some(crate::acme::initial_certs(acme)?),
            _ => None,
        };
        let metrics = crate::metrics::Metrics::new();
        if let Some(c) = &certs {
            metrics.register(c.clone());
        }
        let acme_stats = Arc::new(crate::acme::AcmeStats::default());
        if config.tls.acme.is_some() {
            metrics.register(acme_stats.clone());
        }
        let (turns_sender, turns_rx) = tokio::sync::mpsc::channel(256);
        let mut turn_secrets = vec![turn_secret.clone()];
        turn_secrets.extend(config.turn.accept_secrets.iter().cloned());
        Ok(Context {
            live: tokio::sync::watch::Sender::new(Arc::new(config.clone())),
            turn_secret,
            turn_secrets,
            signaling_key,
            signaling_key_source,
            health: Health::default(),
            metrics,
            http_addr: listeners.http_addr(),
            turn_udp_addrs: listeners.turn_udp_addrs(),
            turn_tcp_addrs: listeners.turn_tcp_addrs(),
            tls_addr: listeners.tls_addr(),
            certs,
            acme_challenges: config.tls.acme.as_ref().map(|_| Arc::default()),
            acme_stats,
            turns_streams: parking_lot::Mutex::new(Some(turns_rx)),
            turns_sender,
            config,
        })
    }
}

/// What a reload did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Keys whose new values are in effect now.
    pub applied: Vec<&'static str>,
    /// Keys that changed but only take effect after a restart.
    pub need_restart: Vec<&'static str>,
}

impl Context {
    /// The TURN server takes the stream of TURN-over-TLS connections once, at start.
    pub fn take_turns_streams(&self) -> Option<tokio::sync::mpsc::Receiver<TurnStream>> {
        self.turns_streams.lock().take()
    }

    /// The current configuration (the startup one until a reload replaces it).
    pub fn live(&self) -> Arc<Config> {
        self.live.borrow().clone()
    }

    /// Be told whenever a reload replaces the configuration.
    pub fn watch_config(&self) -> tokio::sync::watch::Receiver<Arc<Config>> {
        self.live.subscribe()
    }

    /// Put an already validated configuration in place. Live settings (log level, signaling limits and ICE
    /// servers, TURN peer policy and quotas, credential lifetime) apply at once; listen addresses and other
    /// socket-level settings are reported as needing a restart and keep their running values.
    pub fn reload(&self, new: Config) -> ReloadReport {
        let old = self.live();
        let mut report = ReloadReport::default();
        macro_rules! diff {
            ($list:ident, $($key:literal => $($field:ident).+),* $(,)?) => {
                $( if old.$($field).+ != new.$($field).+ { report.$list.push($key); } )*
            };
        }
        diff!(need_restart,
            "http.listen" => http.listen,
            "http.web_root" => http.web_root,
            "metrics.enabled" => metrics.enabled,
            "metrics.listen" => metrics.listen,
            "turn.enabled" => turn.enabled,
            "turn.listen_udp" => turn.listen_udp,
            "turn.udp_workers" => turn.udp_workers,
            "turn.stun_alt_listen" => turn.stun_alt_listen,
            "turn.listen_tcp" => turn.listen_tcp,
            "turn.realm" => turn.realm,
            "turn.secret" => turn.secret,
            "turn.secret_file" => turn.secret_file,
            "turn.accept_secrets" => turn.accept_secrets,
            "turn.users" => turn.users,
            "turn.relay_ip" => turn.relay_ip,
            "turn.external_ip" => turn.external_ip,
            "turn.relay_port_min" => turn.relay_port_min,
            "turn.relay_port_max" => turn.relay_port_max,
            "log.format" => log.format,
            "tls.cert" => tls.cert,
            "tls.key" => tls.key,
            "tls.listen" => tls.listen,
            "tls.turns_listen" => tls.turns_listen,
            "tls.redirect_http" => tls.redirect_http,
            "tls.acme" => tls.acme,
            "signaling.state_dir" => signaling.state_dir,
        );
        diff!(applied,
            "http.public_url" => http.public_url,
            "http.allowed_origins" => http.allowed_origins,
            "http.trusted_proxies" => http.trusted_proxies,
            "turn.credential_ttl_secs" => turn.credential_ttl_secs,
            "turn.allow_peers" => turn.allow_peers,
            "turn.deny_peers" => turn.deny_peers,
            "turn.max_allocations" => turn.max_allocations,
            "turn.max_allocations_per_user" => turn.max_allocations_per_user,
            "turn.max_permissions_per_allocation" => turn.max_permissions_per_allocation,
            "turn.max_channels_per_allocation" => turn.max_channels_per_allocation,
            "turn.max_bandwidth_per_allocation" => turn.max_bandwidth_per_allocation,
            "turn.unauthenticated_rate_per_ip" => turn.unauthenticated_rate_per_ip,
            "turn.software" => turn.software,
            "signaling.reconnect_grace_secs" => signaling.reconnect_grace_secs,
            "signaling.request_timeout_secs" => signaling.request_timeout_secs,
            "signaling.max_message_bytes" => signaling.max_message_bytes,
            "signaling.messages_per_sec" => signaling.messages_per_sec,
            "signaling.connect_requests_per_min" => signaling.connect_requests_per_min,
            "signaling.max_connections_per_ip" => signaling.max_connections_per_ip,
            "signaling.max_connections" => signaling.max_connections,
            "signaling.ping_interval_secs" => signaling.ping_interval_secs,
            "signaling.ice_servers" => signaling.ice_servers,
            "signaling.token_max_age_secs" => signaling.token_max_age_secs,
        );
        if old.log.level != new.log.level {
            if crate::logging::set_level(&new.log.level) {
                report.applied.push("log.level");
            } else {
                tracing::info!(
                    "log.level changed but RUST_LOG pins the log filter; unset RUST_LOG to control it from the config"
                );
            }
        }
        // Socket-level settings keep their running values, so that `live()` always describes what is running.
        let mut merged = new;
        merged.http.listen = old.http.listen;
        merged.http.web_root = old.http.web_root.clone();
        merged.metrics = old.metrics.clone();
        merged.turn.enabled = old.turn.enabled;
        merged.turn.listen_udp = old.turn.listen_udp.clone();
        merged.turn.udp_workers = old.turn.udp_workers;
        merged.turn.listen_tcp = old.turn.listen_tcp.clone();
        merged.turn.realm = old.turn.realm.clone();
        merged.turn.secret = old.turn.secret.clone();
        merged.turn.secret_file = old.turn.secret_file.clone();
        merged.turn.accept_secrets = old.turn.accept_secrets.clone();
        merged.turn.users = old.turn.users.clone();
        merged.turn.relay_ip = old.turn.relay_ip;
        merged.turn.external_ip = old.turn.external_ip;
        merged.turn.relay_port_min = old.turn.relay_port_min;
        merged.turn.relay_port_max = old.turn.relay_port_max;
        merged.log.format = old.log.format;
        merged.tls = old.tls.clone();
        merged.signaling.state_dir = old.signaling.state_dir.clone();
        self.live.send_replace(Arc::new(merged));
        report
    }
}

type TaskResult = (&'static str, anyhow::Result<()>);

/// Run the daemon on already-bound listeners until `shutdown` is cancelled (→ `Ok`) or a core task fails
/// (→ `Err`, after stopping the others: never a half-alive process).
pub async fn run(config: Config, listeners: Listeners, shutdown: CancellationToken) -> anyhow::Result<()> {
    let ctx = Arc::new(Context::new(config, &listeners)?);
    run_with_context(ctx, listeners, shutdown).await
}

/// Like [`run`], with a context the caller built (tests use it to read the generated secret).
pub async fn run_with_context(
    ctx: Arc<Context>,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let Listeners { http, metrics, tls, turns, turn_udp, turn_tcp } = listeners;
    let mut tasks: JoinSet<TaskResult> = JoinSet::new();

    let hub = crate::signaling::Hub::new(ctx.clone());
    {
        let (hub, shutdown) = (hub.clone(), shutdown.clone());
        tasks.spawn(async move { ("signaling", hub.run(shutdown).await) });
    }
    // HTTPS connections from the TLS port join the plain HTTP server, so both share routing and graceful shutdown.
    let (https_tx, https_rx) = tokio::sync::mpsc::channel(256);
    {
        let (ctx, hub, shutdown) = (ctx.clone(), hub.clone(), shutdown.clone());
        tasks.spawn(async move { ("http", crate::http::serve(ctx, hub, http, Some(https_rx), shutdown).await) });
    }
    if let (Some(certs), Some(tls)) = (ctx.certs.clone(), tls) {
        let acme = ctx.config.tls.acme.clone();
        let alpn_challenges = match &acme {
            Some(a) if a.challenge == crate::config::AcmeChallenge::TlsAlpn01 => ctx.acme_challenges.clone(),
            _ => None,
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(crate::tls::server_config(certs.clone(), alpn_challenges)?);
        match (acme, ctx.acme_challenges.clone()) {
            // Not a core task: the CA being unreachable must never take the daemon down.
            (Some(acme), Some(challenges)) => {
                tokio::spawn(crate::acme::run(acme, certs, challenges, ctx.acme_stats.clone(), shutdown.clone()));
            }
            _ => {
                tokio::spawn(crate::tls::watch(certs, shutdown.clone()));
            }
        }
        let listeners = std::iter::once((tls, crate::tls::Role::Shared))
            .chain(turns.into_iter().map(|l| (l, crate::tls::Role::TurnOnly)));
        for (listener, role) in listeners {
            let (ctx2, acceptor, shutdown, https_tx) =
                (ctx.clone(), acceptor.clone(), shutdown.clone(), https_tx.clone());
            let turn_tx = ctx.turns_sender.clone();
            let turn_on = ctx.config.turn.enabled;
            tasks.spawn(async move {
                let dispatch = move |proto, stream, client, local| match proto {
                    crate::tls::Protocol::Http => {
                        let _ = https_tx.try_send((stream, client));
                    }
                    crate::tls::Protocol::Stun if turn_on => {
                        let _ = turn_tx.try_send((stream, client, local));
                    }
                    crate::tls::Protocol::Stun => {}
                };
                ("tls", crate::tls::serve(ctx2, listener, acceptor, role, shutdown, dispatch).await)
            });
        }
    }
    drop(https_tx);
    if let Some(listener) = metrics {
        let (ctx, shutdown) = (ctx.clone(), shutdown.clone());
        tasks.spawn(async move { ("metrics", crate::http::serve_metrics(ctx, listener, shutdown).await) });
    }
    if ctx.config.turn.enabled {
        tokio::spawn(crate::doctor::router::log_at_startup(ctx.config.clone()));
        let (ctx, shutdown) = (ctx.clone(), shutdown.clone());
        tasks.spawn(async move { ("turn", crate::turn::serve(ctx, turn_udp, turn_tcp, shutdown).await) });
    } else {
        ctx.health.set(Component::Turn, Status::Disabled);
        tracing::info!("embedded STUN/TURN disabled (turn.enabled = false)");
    }

    tokio::spawn(crate::systemd::watchdog(shutdown.clone()));
    {
        // READY only once every component is up (systemd orders dependent units on it); a component that
        // fails first ends the daemon through the supervision loop below instead.
        let (ctx, shutdown) = (ctx.clone(), shutdown.clone());
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while Component::ALL.iter().any(|c| ctx.health.get(*c) == Status::Starting) {
                if shutdown.is_cancelled() || tokio::time::Instant::now() > deadline {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let mut status = format!("web on http://{}", ctx.http_addr);
            if let Some(tls) = ctx.tls_addr {
                status.push_str(&format!(" and https://{tls}"));
            }
            if ctx.config.turn.enabled {
                let list = |v: &[SocketAddr]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(" ");
                status.push_str(&format!(
                    "; STUN/TURN udp {} tcp {}",
                    list(&ctx.turn_udp_addrs),
                    list(&ctx.turn_tcp_addrs)
                ));
            }
            crate::systemd::ready(&status);
        });
    }

    let mut failure: Option<anyhow::Error> = None;
    while let Some(joined) = tasks.join_next().await {
        let (name, result) = match joined {
            Ok(r) => r,
            Err(e) => ("a core task", Err(anyhow::anyhow!("panicked: {e}"))),
        };
        if shutdown.is_cancelled() {
            if let Err(e) = result {
                tracing::warn!("{name} reported an error while stopping: {e:#}");
            }
            continue;
        }
        // A core task ended while we were supposed to be running: bring everything down so that the
        // supervisor (systemd) restarts a whole process rather than leaving a half-alive one.
        let err = match result {
            Ok(()) => anyhow::anyhow!("{name} stopped unexpectedly"),
            Err(e) => e.context(format!("{name} failed")),
        };
        tracing::error!("{err:#}; stopping ponte");
        for c in crate::health::Component::ALL {
            if c.name() == name {
                ctx.health.set(c, Status::Failed);
            }
        }
        failure = Some(err);
        crate::systemd::stopping();
        shutdown.cancel();
        break;
    }
    if !tasks.is_empty()
        && tokio::time::timeout(DRAIN, async { while tasks.join_next().await.is_some() {} }).await.is_err()
    {
        tracing::warn!("some tasks did not stop within {}s", DRAIN.as_secs());
        tasks.abort_all();
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
