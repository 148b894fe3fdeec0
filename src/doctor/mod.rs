//! `ponte doctor`: checks the config, that every listener can be bound, the advertised relay address, and runs the
//! relay self-test, printing one line of plain advice per check.
//!
//! Exit code: 0 when nothing failed (warnings do not fail), 1 when a check failed. The checks only touch
//! this host: the listeners are bound and released, a running ponte is asked at `/healthz` (and `/ws` for
//! TURN credentials when the secret is per process), and the relay self-test runs on loopback against the
//! running daemon's TURN server, or against one started in-process for the test.
//!
//! Layout: `report` (the lines and their rendering), `probes` (running daemon, listeners), `address` (the
//! advertised relay address and the ports to forward), `relay` (the self-test).

mod address;
mod probes;
mod relay;
mod report;
pub mod router;

use std::path::Path;
use std::time::Duration;

use crate::config::{Config, ConfigError};

pub use crate::addr::{classify, AddressClass};
pub use report::{Check, Level, Report};

/// How long a probe of a running daemon may take.
const PROBE: Duration = Duration::from_secs(2);

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

    let daemon = probes::check_daemon(&mut r, &config).await;
    probes::check_listeners(&mut r, &config, daemon.is_some()).await;
    address::check_address(&mut r, &config);
    router::check(&mut r, &config, daemon.is_some()).await;
    relay::check_relay(&mut r, &config, daemon.as_ref()).await;
    r
}
