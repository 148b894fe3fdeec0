//! Logging setup: `tracing` to stderr as text (colours only on a terminal, so journald gets clean lines) or JSON,
//! with a filter that a config reload (SIGHUP) can change while running.

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

use crate::config::{LogConfig, LogFormat};

static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Install the global subscriber. `RUST_LOG`, when set, overrides `log.level` (and later reloads of it).
pub fn init(cfg: &LogConfig) {
    let (filter, handle) = reload::Layer::new(initial_filter(&cfg.level));
    // Under systemd, journald stamps each line itself; a second timestamp is noise.
    let under_journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let output = match cfg.format {
        LogFormat::Json => fmt.json().with_current_span(false).boxed(),
        LogFormat::Text if under_journald => fmt.with_ansi(false).without_time().boxed(),
        LogFormat::Text => fmt.with_ansi(std::io::stderr().is_terminal()).boxed(),
    };
    if tracing_subscriber::registry().with(filter).with(output).try_init().is_ok() {
        let _ = FILTER.set(handle);
    }
}

fn initial_filter(level: &str) -> EnvFilter {
    std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info")))
}

/// Change the log filter of a running daemon. Returns false when `RUST_LOG` pins it or logging is not ours.
pub fn set_level(level: &str) -> bool {
    if std::env::var_os("RUST_LOG").is_some() {
        return false;
    }
    match (FILTER.get(), EnvFilter::try_new(level)) {
        (Some(handle), Ok(filter)) => handle.reload(filter).is_ok(),
        _ => false,
    }
}
