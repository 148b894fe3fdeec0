//! The running configuration, shared read-only: subsystems read the current value and may wait for the next
//! one; only the daemon (src/server.rs) replaces it, after a reload has been diffed by `config::reload`.

use std::sync::Arc;

use tokio::sync::watch;

use crate::config::Config;

/// A cheap, cloneable read handle on the running configuration.
#[derive(Debug, Clone)]
pub struct LiveConfig(watch::Receiver<Arc<Config>>);

impl LiveConfig {
    /// A handle and the sender that replaces the value (kept by the daemon).
    pub fn new(config: Config) -> (watch::Sender<Arc<Config>>, LiveConfig) {
        let (tx, rx) = watch::channel(Arc::new(config));
        (tx, LiveConfig(rx))
    }

    /// The configuration in effect now.
    pub fn current(&self) -> Arc<Config> {
        self.0.borrow().clone()
    }

    /// A receiver that wakes on every reload (its `changed()` fails once the daemon is gone).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Config>> {
        let mut rx = self.0.clone();
        rx.mark_unchanged();
        rx
    }
}
