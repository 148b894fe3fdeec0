//! The second step of loading a config: the files and folders it names exist and hold what they should.
//!
//! Kept apart from the pure rules in `validate.rs` so that those run anywhere (fuzzer, reload diff) without
//! touching the disk; [`Config::load`] runs both.

use super::schema::{Config, Secret, TurnConfig};
use super::validate::Problems;
use super::Problem;

impl Config {
    /// Problems with the files the config names: `http.web_root`, `turn.secret_file`, `signaling.state_dir`,
    /// `tls.cert`/`tls.key` (readable, and the key matches the certificate), `tls.acme.ca_root`.
    pub fn check_files(&self) -> Vec<Problem> {
        let mut p = Problems::default();
        if let Some(root) = &self.http.web_root {
            if !root.is_dir() {
                p.bad(
                    "http.web_root",
                    format!("{} is not a directory; point it at a folder with index.html, or remove the key to serve the embedded client", root.display()),
                );
            }
        }
        if let Err(problem) = read_secret(&self.turn) {
            p.0.push(problem);
        }
        if let Some(dir) = &self.signaling.state_dir {
            if dir.exists() && !dir.is_dir() {
                p.bad(
                    "signaling.state_dir",
                    format!(
                        "{} is not a directory; name a directory ponte may write (e.g. /var/lib/ponte)",
                        dir.display()
                    ),
                );
            }
        }
        if let (Some(cert), Some(key)) = (&self.tls.cert, &self.tls.key) {
            if let Err(e) = crate::pem::load_certified_key(cert, key) {
                p.bad(e.key, e.message);
            }
        }
        if let Some(root) = self.tls.acme.as_ref().and_then(|a| a.ca_root.as_ref()) {
            if let Err(e) = crate::pem::load_root(root) {
                p.bad("tls.acme.ca_root", format!("{e}; remove the key (it is for tests)"));
            }
        }
        p.0
    }
}

/// The configured TURN REST secret: `turn.secret`, or the first line of `turn.secret_file`; `None` when neither is
/// set (the daemon then makes a random one per run). The one place the secret file is read.
pub fn read_secret(turn: &TurnConfig) -> Result<Option<Secret>, Problem> {
    if let Some(s) = &turn.secret {
        return Ok(Some(s.clone()));
    }
    let Some(path) = &turn.secret_file else { return Ok(None) };
    let problem = |message: String| Problem { key: "turn.secret_file".into(), message };
    let text = std::fs::read_to_string(path).map_err(|e| problem(format!("cannot read {}: {e}", path.display())))?;
    let first = text.lines().next().map(str::trim).unwrap_or("");
    if first.is_empty() {
        return Err(problem(format!("{} is empty; write the secret on its first line", path.display())));
    }
    Ok(Some(Secret::new(first)))
}
