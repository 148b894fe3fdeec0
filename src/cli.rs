//! Command line (clap): `ponte [-c FILE]`, `ponte check-config [FILE]`, `ponte doctor [FILE]`, and the process entry that runs the daemon.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};

/// How long a graceful shutdown may take before the process exits anyway.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(5);

#[derive(Debug, Parser)]
#[command(
    name = "ponte",
    version,
    about = "Self-hosted P2P chat: web client, WebSocket signaling and a STUN/TURN relay in one daemon",
    long_about = "ponte serves a browser chat client, introduces browsers to each other over WebSocket signaling, \
and relays their WebRTC traffic through its embedded STUN/TURN server when no direct path exists.\n\n\
With no config file it runs on defaults: HTTP on 0.0.0.0:8080, STUN/TURN on UDP+TCP 3478, relay ports 49152-65535.",
    after_help = "Examples:\n  ponte                         run on defaults\n  ponte -c /etc/ponte/ponte.toml run with a config file\n  ponte check-config ponte.toml  validate a config file (exit 2 on problems)\n  ponte doctor -c ponte.toml     check config, ports, addresses and the relay (exit 1 on a failed check)"
)]
pub struct Cli {
    /// Config file (TOML). Without one, ponte runs on its embedded defaults.
    #[arg(short, long, value_name = "FILE", env = "PONTE_CONFIG", global = true)]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (the default).
    Run,
    /// Validate a config file: prints "ok" or every problem; exit code 2 on error.
    CheckConfig {
        /// The file to check (defaults to --config / PONTE_CONFIG).
        file: Option<PathBuf>,
    },
    /// Check this host for running ponte: config, listeners, advertised address, and a relay self-test.
    ///
    /// Prints one line per check (ok, WARN or FAIL) with advice. Exit code 0 when nothing failed (warnings
    /// included), 1 when a check failed.
    Doctor {
        /// The config to check (defaults to --config / PONTE_CONFIG, else the built-in defaults).
        file: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Entry point used by `main.rs`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::CheckConfig { file }) => check_config(file.or(cli.config).as_deref()),
        Some(Command::Doctor { file, json }) => doctor(file.or(cli.config).as_deref(), json),
        Some(Command::Run) | None => run_daemon(cli.config.as_deref()),
    }
}

fn check_config(file: Option<&Path>) -> ExitCode {
    let Some(file) = file else {
        eprintln!("ponte check-config: name a file (ponte check-config FILE) or set --config / PONTE_CONFIG");
        return ExitCode::from(2);
    };
    match Config::load(file) {
        Ok(_) => {
            println!("ok");
            ExitCode::SUCCESS
        }
        Err(e) => {
            for line in e.lines() {
                eprintln!("{line}");
            }
            ExitCode::from(2)
        }
    }
}

fn doctor(file: Option<&Path>, json: bool) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ponte doctor: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = runtime.block_on(crate::doctor::diagnose(file));
    if json {
        println!("{}", serde_json::to_string_pretty(&report).expect("the report serialises"));
    } else {
        print!("{}", report.to_text());
    }
    runtime.shutdown_timeout(Duration::from_millis(200));
    if report.failed() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
    match file {
        Some(f) => Config::load(f),
        None => Ok(Config::default()),
    }
}

fn run_daemon(file: Option<&Path>) -> ExitCode {
    let config = match load(file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ponte: {e}");
            return ExitCode::from(2);
        }
    };
    crate::logging::init(&config.log);
    match file {
        Some(f) => tracing::info!(version = env!("CARGO_PKG_VERSION"), config = %f.display(), "ponte starting"),
        None => tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            "ponte starting with embedded defaults (no config file)"
        ),
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("ponte").build() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async move {
        let listeners = match crate::server::Listeners::bind(&config) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        };
        let daemon = match crate::server::Daemon::new(config, &listeners) {
            Ok(c) => std::sync::Arc::new(c),
            Err(e) => {
                tracing::error!("{e:#}");
                return ExitCode::FAILURE;
            }
        };
        let shutdown = CancellationToken::new();
        // Install the handlers before `run` reports READY, so that no early SIGTERM/SIGHUP hits the default
        // action (which would kill the process).
        let signals = match Signals::install() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cannot install signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        };
        tokio::spawn(watch_signals(signals, shutdown.clone(), daemon.clone(), file.map(Path::to_path_buf)));
        // Here rather than in `server::run`: in-process test servers must not get two extra allocations that
        // race with what the tests count.
        tokio::spawn(crate::turn::selftest::at_start(
            daemon.config.turn.clone(),
            daemon.addrs.turn_udp.clone(),
            daemon.turn_secret.clone(),
            daemon.health.clone(),
            shutdown.clone(),
        ));
        let running = crate::server::run_with(daemon, listeners, shutdown.clone());
        tokio::pin!(running);
        let result = tokio::select! {
            r = &mut running => r,
            _ = shutdown.cancelled() => {
                // Graceful shutdown has begun: give it the deadline, then leave regardless.
                match tokio::time::timeout(SHUTDOWN_DEADLINE, &mut running).await {
                    Ok(r) => r,
                    Err(_) => {
                        tracing::warn!("shutdown did not finish within {}s; exiting anyway", SHUTDOWN_DEADLINE.as_secs());
                        Ok(())
                    }
                }
            }
        };
        match result {
            Ok(()) => {
                tracing::info!("ponte stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!("ponte failed: {e:#}");
                ExitCode::FAILURE
            }
        }
    });
    // Do not wait for stray blocking tasks (e.g. a slow disk read) past the deadline.
    runtime.shutdown_timeout(Duration::from_millis(200));
    code
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

/// Cancel `shutdown` on SIGINT or SIGTERM (a second one exits at once); reload the config file on SIGHUP.
async fn watch_signals(
    mut sig: Signals,
    shutdown: CancellationToken,
    daemon: std::sync::Arc<crate::server::Daemon>,
    file: Option<PathBuf>,
) {
    let name = loop {
        tokio::select! {
            _ = sig.term.recv() => break "SIGTERM",
            _ = sig.int.recv() => break "SIGINT",
            _ = sig.hup.recv() => reload(&daemon, file.as_deref()),
            // A core task failed: the daemon is stopping on its own.
            _ = shutdown.cancelled() => break "",
        }
    };
    if !name.is_empty() {
        tracing::info!("{name} received: shutting down gracefully");
        crate::systemd::stopping();
        shutdown.cancel();
    }
    tokio::select! {
        _ = sig.term.recv() => {},
        _ = sig.int.recv() => {},
    }
    tracing::warn!("second signal: exiting now");
    std::process::exit(130);
}

/// SIGHUP: re-read and validate the config file; a bad file is rejected and the running config stays.
fn reload(daemon: &crate::server::Daemon, file: Option<&Path>) {
    let Some(file) = file else {
        tracing::warn!("SIGHUP received, but ponte was started without a config file: nothing to reload");
        return;
    };
    crate::systemd::reloading();
    match Config::load(file) {
        Err(e) => {
            // One line per event keeps journald readable.
            tracing::error!(
                "config reload rejected, the running configuration stays in effect: {}",
                e.lines().join("; ")
            );
        }
        Ok(new) => {
            let report = daemon.reload(new);
            if report.applied.is_empty() && report.need_restart.is_empty() {
                tracing::info!(config = %file.display(), "configuration reloaded: nothing changed");
            } else if !report.applied.is_empty() {
                tracing::info!(config = %file.display(), "configuration reloaded; now in effect: {}", report.applied.join(", "));
            }
            // Certificates are re-read on every reload (renewed files keep their paths).
            if let Some(certs) = &daemon.certs {
                match certs.reload(true) {
                    Ok(_) => tracing::info!("TLS certificate reloaded"),
                    Err(e) => tracing::error!("TLS certificate reload rejected, keeping the one in use: {e:#}"),
                }
            }
            if !report.need_restart.is_empty() {
                tracing::warn!(
                    "changed in {} but only applied after a restart (systemctl restart ponte): {}",
                    file.display(),
                    report.need_restart.join(", ")
                );
            }
        }
    }
    crate::systemd::ready("configuration reloaded");
}
