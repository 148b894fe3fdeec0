//! The doctor's report: one line per check (ok, WARN or FAIL) with advice, as text or JSON.

use serde::Serialize;

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
    pub(super) fn add(
        &mut self,
        check: impl Into<String>,
        status: Level,
        message: impl Into<String>,
        advice: Option<String>,
    ) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
