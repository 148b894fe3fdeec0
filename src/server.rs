//! Daemon lifecycle: binding every listener up front, `run()` supervising the core tasks, graceful shutdown.
//!
//! `run` takes already-bound sockets and a shutdown token so that tests start the real server on port 0 and
//! never sleep waiting for it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Secret};
use crate::health::{Component, Health, Status};
pub use crate::listeners::{Addrs, BindError, Listeners};
use crate::live::LiveConfig;

/// How long tasks get to finish after shutdown is requested, inside `run` (the CLI adds its own hard deadline).
const DRAIN: Duration = Duration::from_secs(4);

/// What the daemon holds for its whole life: the start-up config, the running one, and facts settled at start
/// (secrets, keys, bound addresses). It stays here: each subsystem gets only the narrow handle it needs
/// (`turn::Deps`, `signaling::Deps`, `http::Deps`), built by the methods below.
#[derive(Debug)]
pub struct Daemon {
    /// The configuration the daemon started with. What can change while running is read through [`Daemon::live`].
    pub config: Config,
    /// Replaced by a successful reload (SIGHUP); subsystems hold [`LiveConfig`] read handles on it.
    live_tx: tokio::sync::watch::Sender<Arc<Config>>,
    live: LiveConfig,
    /// The TURN REST secret that mints new credentials.
    pub turn_secret: Secret,
    /// Every secret the TURN server accepts (`turn_secret` first, then `turn.accept_secrets`).
    pub turn_secrets: Vec<Secret>,
    /// Signs reconnect tokens and pairing tickets; the same after a restart unless it is random (see its source).
    pub signaling_key: crate::signaling::keys::SigningKey,
    pub signaling_key_source: crate::signaling::keys::KeySource,
    pub health: Arc<Health>,
    /// Counters of every component, rendered at `/metrics`.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Where each listener actually listens (port 0 resolved).
    pub addrs: Addrs,
    /// The certificate in use, when TLS is on (reloaded on SIGHUP and when the files change).
    pub certs: Option<Arc<crate::tls::Certs>>,
    /// The answers to ACME validation requests, when `tls.acme` is set.
    pub acme_challenges: Option<Arc<crate::challenges::Challenges>>,
    acme_stats: Arc<crate::acme::AcmeStats>,
}

impl Daemon {
    /// Settle what the config leaves open: the TURN secret (configured, from file, or generated for this run),
    /// the signaling key, the certificates.
    pub fn new(config: Config, listeners: &Listeners) -> anyhow::Result<Daemon> {
        let configured = crate::config::read_secret(&config.turn).map_err(|p| anyhow::anyhow!("{p}"))?;
        let turn_secret = match &configured {
            Some(s) => s.clone(),
            None => {
                if config.turn.enabled {
                    tracing::info!(
                        "generated a random TURN secret for this run (set turn.secret or turn.secret_file to keep \
                         credentials valid across restarts or to share it with an external TURN server)"
                    );
                }
                Secret::generate()
            }
        };
        let (signaling_key, signaling_key_source) = crate::signaling::keys::SigningKey::from_config(
            &config,
            configured.as_ref().map(|_| turn_secret.expose()),
        )?;
        let certs = match (&config.tls.cert, &config.tls.key, &config.tls.acme) {
            (Some(c), Some(k), _) => Some(crate::tls::Certs::load(c, k)?),
            (_, _, Some(acme)) => Some(crate::acme::initial_certs(acme)?),
            _ => None,
        };
        let metrics = Arc::new(crate::metrics::Metrics::new());
        if let Some(c) = &certs {
            metrics.register(c.clone());
        }
        let acme_stats = Arc::new(crate::acme::AcmeStats::default());
        if config.tls.acme.is_some() {
            metrics.register(acme_stats.clone());
        }
        let mut turn_secrets = vec![turn_secret.clone()];
        turn_secrets.extend(config.turn.accept_secrets.iter().cloned());
        let (live_tx, live) = LiveConfig::new(config.clone());
        Ok(Daemon {
            live_tx,
            live,
            turn_secret,
            turn_secrets,
            signaling_key,
            signaling_key_source,
            health: Arc::default(),
            metrics,
            addrs: listeners.addrs(),
            certs,
            acme_challenges: config.tls.acme.as_ref().map(|_| Arc::default()),
            acme_stats,
            config,
        })
    }

    /// The current configuration (the startup one until a reload replaces it).
    pub fn live(&self) -> Arc<Config> {
        self.live.current()
    }

    /// Put an already validated configuration in place, as `config::reload`'s table says: live keys apply at
    /// once, restart-only keys are reported and keep their running values.
    pub fn reload(&self, new: Config) -> ReloadReport {
        let old = self.live();
        let mut diff = crate::config::reload::diff(&old, new);
        if diff.applied.contains(&"log.level") && !crate::logging::set_level(&diff.merged.log.level) {
            diff.applied.retain(|k| *k != "log.level");
            tracing::info!(
                "log.level changed but RUST_LOG pins the log filter; unset RUST_LOG to control it from the config"
            );
        }
        self.live_tx.send_replace(Arc::new(diff.merged));
        ReloadReport { applied: diff.applied, need_restart: diff.need_restart }
    }

    /// What the TURN server needs; `tls_streams` brings it the TURN-over-TLS connections of the TLS listeners.
    pub fn turn_deps(
        &self,
        tls_streams: Option<tokio::sync::mpsc::Receiver<crate::turn::TlsConn>>,
    ) -> crate::turn::Deps {
        crate::turn::Deps {
            config: self.config.turn.clone(),
            live: self.live.clone(),
            secrets: self.turn_secrets.clone(),
            health: self.health.clone(),
            metrics: self.metrics.clone(),
            cluster_peers: None,
            tls_streams,
        }
    }

    /// What signaling needs: the live config, the token key, ponte's own STUN/TURN servers for ICE lists, and
    /// the identity store (opened here, so call this once per run).
    pub fn signaling_deps(
        &self,
        cluster: Option<crate::signaling::ClusterDeps>,
    ) -> anyhow::Result<crate::signaling::Deps> {
        let ports = |v: &[SocketAddr]| v.iter().map(|a| a.port()).collect();
        let state_dir = crate::signaling::keys::state_dir(&self.config);
        // Clustered, the identity table is shared through Redis (loaded by the cluster task), not kept in a file
        // of one node.
        let identities = match &cluster {
            Some(_) => crate::signaling::store::Opened::in_memory(),
            None => crate::signaling::store::open(state_dir.as_deref())?,
        };
        Ok(crate::signaling::Deps {
            live: self.live.clone(),
            key: self.signaling_key.clone(),
            health: self.health.clone(),
            metrics: self.metrics.clone(),
            own_ice: crate::signaling::OwnIceServers {
                enabled: self.config.turn.enabled,
                udp_ports: ports(&self.addrs.turn_udp),
                tcp_ports: ports(&self.addrs.turn_tcp),
                tls_port: self.addrs.tls.map(|a| a.port()),
                listen: self.addrs.turn_udp.iter().chain(&self.addrs.turn_tcp).copied().collect(),
                stun_alt_port: self.config.turn.stun_alt_listen.map(|a| a.port()),
                family_hosts: crate::signaling::family_hosts(
                    &self.config.turn,
                    &self.addrs.turn_udp.iter().chain(&self.addrs.turn_tcp).copied().collect::<Vec<_>>(),
                ),
                secret: self.turn_secret.clone(),
            },
            identities,
            cluster,
        })
    }

    /// What the HTTP server needs.
    pub fn http_deps(&self) -> crate::http::Deps {
        crate::http::Deps {
            web: self.config.http.clone(),
            redirect_to_tls: match self.config.tls.redirect_http {
                true => self.addrs.tls.map(|a| a.port()),
                false => None,
            },
            live: self.live.clone(),
            health: self.health.clone(),
            metrics: self.metrics.clone(),
            acme_challenges: self.acme_challenges.clone(),
        }
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

type TaskResult = (&'static str, anyhow::Result<()>);

/// Run the daemon on already-bound listeners until `shutdown` is cancelled (→ `Ok`) or a core task fails
/// (→ `Err`, after stopping the others: never a half-alive process).
pub async fn run(config: Config, listeners: Listeners, shutdown: CancellationToken) -> anyhow::Result<()> {
    let daemon = Arc::new(Daemon::new(config, &listeners)?);
    run_with(daemon, listeners, shutdown).await
}

/// Like [`run`], with a daemon the caller built (tests use it to read the generated secret and to reload).
pub async fn run_with(daemon: Arc<Daemon>, listeners: Listeners, shutdown: CancellationToken) -> anyhow::Result<()> {
    let Listeners { http, metrics, tls, turns, turn_udp, turn_tcp, stun_alt } = listeners;
    let mut tasks: JoinSet<TaskResult> = JoinSet::new();

    // `[cluster]`: the Redis link to the other nodes. Not configured: nothing of it exists.
    let mut cluster_deps = None;
    let mut cluster_peers = None;
    if daemon.config.cluster.enabled() {
        let c = &daemon.config.cluster;
        let mut addresses = c.public_addresses.clone();
        if addresses.is_empty() {
            addresses.extend(daemon.config.turn.external_ip.or(daemon.config.turn.relay_ip));
        }
        let relay_ports = (daemon.config.turn.relay_port_min, daemon.config.turn.relay_port_max);
        let cluster = crate::cluster::Cluster::new(c, addresses, relay_ports, daemon.health.clone(), &daemon.metrics)?;
        cluster_peers = Some(cluster.peers);
        cluster_deps = Some(crate::signaling::ClusterDeps {
            link: cluster.link,
            inbound: cluster.inbound,
            ttl: Duration::from_secs(c.presence_ttl_secs),
        });
        let (runner, shutdown) = (cluster.runner, shutdown.clone());
        tasks.spawn(async move { ("cluster", runner.run(shutdown).await) });
    }
    let hub = crate::signaling::Hub::new(daemon.signaling_deps(cluster_deps)?);
    {
        let (hub, shutdown) = (hub.clone(), shutdown.clone());
        tasks.spawn(async move { ("signaling", hub.run(shutdown).await) });
    }
    // HTTPS connections from the TLS port join the plain HTTP server, so both share routing and graceful shutdown.
    let (https_tx, https_rx) = tokio::sync::mpsc::channel(256);
    {
        let (deps, hub, shutdown) = (daemon.http_deps(), hub.clone(), shutdown.clone());
        tasks.spawn(async move { ("http", crate::http::serve(deps, hub, http, Some(https_rx), shutdown).await) });
    }
    // TURN-over-TLS streams accepted by the TLS listeners, for the TURN server.
    let (turns_tx, turns_rx) = tokio::sync::mpsc::channel(256);
    if let (Some(certs), Some(tls)) = (daemon.certs.clone(), tls) {
        let acme = daemon.config.tls.acme.clone();
        let alpn_challenges = match &acme {
            Some(a) if a.challenge == crate::config::AcmeChallenge::TlsAlpn01 => daemon.acme_challenges.clone(),
            _ => None,
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(crate::tls::server_config(certs.clone(), alpn_challenges)?);
        match (acme, daemon.acme_challenges.clone()) {
            // Not a core task: the CA being unreachable must never take the daemon down.
            (Some(acme), Some(challenges)) => {
                tokio::spawn(crate::acme::run(acme, certs, challenges, daemon.acme_stats.clone(), shutdown.clone()));
            }
            _ => {
                tokio::spawn(crate::tls::watch(certs, shutdown.clone()));
            }
        }
        let listeners = std::iter::once((tls, crate::tls::Role::Shared))
            .chain(turns.into_iter().map(|l| (l, crate::tls::Role::TurnOnly)));
        for (listener, role) in listeners {
            let (acceptor, shutdown, https_tx, turn_tx) =
                (acceptor.clone(), shutdown.clone(), https_tx.clone(), turns_tx.clone());
            let turn_on = daemon.config.turn.enabled;
            tasks.spawn(async move {
                let dispatch = move |proto, stream, client, local| match proto {
                    crate::tls::Protocol::Http => {
                        let _ = https_tx.try_send((stream, client));
                    }
                    crate::tls::Protocol::Stun if turn_on => {
                        let conn = crate::turn::TlsConn { stream: Box::new(stream), client, local };
                        let _ = turn_tx.try_send(conn);
                    }
                    crate::tls::Protocol::Stun => {}
                };
                ("tls", crate::tls::serve(listener, acceptor, role, shutdown, dispatch).await)
            });
        }
    }
    drop((https_tx, turns_tx));
    if let Some(listener) = metrics {
        let (metrics, shutdown) = (daemon.metrics.clone(), shutdown.clone());
        tasks.spawn(async move { ("metrics", crate::http::serve_metrics(metrics, listener, shutdown).await) });
    }
    if daemon.config.turn.enabled {
        // The doctor's router check (NAT loopback, external_ip), run once at start for the log.
        tokio::spawn(crate::doctor::router::log_at_startup(daemon.config.clone()));
        let (mut deps, shutdown) = (daemon.turn_deps(Some(turns_rx)), shutdown.clone());
        deps.cluster_peers = cluster_peers;
        let sockets = crate::turn::Sockets { udp: turn_udp, tcp: turn_tcp, stun_alt };
        tasks.spawn(async move { ("turn", crate::turn::serve(deps, sockets, shutdown).await) });
    } else {
        daemon.health.set(Component::Turn, Status::Disabled);
        tracing::info!("embedded STUN/TURN disabled (turn.enabled = false)");
    }

    tokio::spawn(crate::systemd::watchdog(shutdown.clone()));
    {
        // READY only once every component is up (systemd orders dependent units on it); a component that
        // fails first ends the daemon through the supervision loop below instead.
        let (daemon, shutdown) = (daemon.clone(), shutdown.clone());
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while Component::ALL.iter().any(|c| daemon.health.get(*c) == Status::Starting) {
                if shutdown.is_cancelled() || tokio::time::Instant::now() > deadline {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let mut status = format!("web on http://{}", daemon.addrs.http);
            if let Some(tls) = daemon.addrs.tls {
                status.push_str(&format!(" and https://{tls}"));
            }
            if daemon.config.turn.enabled {
                let list = |v: &[SocketAddr]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(" ");
                status.push_str(&format!(
                    "; STUN/TURN udp {} tcp {}",
                    list(&daemon.addrs.turn_udp),
                    list(&daemon.addrs.turn_tcp)
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
                daemon.health.set(c, Status::Failed);
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
