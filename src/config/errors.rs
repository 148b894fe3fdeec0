//! Why a config could not be loaded, and turning toml's parse errors into lines that name the key and the fix.

use std::fmt;
use std::path::PathBuf;

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Full key path, e.g. `turn.relay_port_min`.
    pub key: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Why a config could not be loaded. Callers branch on it (check-config prints every problem, exit 2).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: invalid configuration:\n{}", problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid { path: PathBuf, problems: Vec<Problem> },
}

impl ConfigError {
    /// Every problem as a line, for `check-config`.
    pub fn lines(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid { path, problems } => {
                problems.iter().map(|p| format!("{}: {p}", path.display())).collect()
            }
            other => vec![other.to_string()],
        }
    }
}

/// Turns toml's error into "line N, column M: message", naming the key where toml knows it.
pub(super) fn describe_toml_error(e: &toml::de::Error, text: &str) -> String {
    let mut msg = e.message().trim().to_string();
    if let Some(span) = e.span() {
        let before = text.get(..span.start).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
        let key = enclosing_key(text, span.start);
        let value =
            text.get(span.clone()).map(str::trim).filter(|v| !v.is_empty() && v.len() <= 80 && !v.contains('\n'));
        if let (Some(key), Some(value)) = (&key, value.filter(|_| !msg.contains("unknown field"))) {
            msg = format!("line {line}, column {col}: {key} = {value}: {msg}{}", value_hint(key, &msg));
        } else if let Some(key) = key {
            msg = format!("line {line}, column {col}: {key}: {msg}");
        } else {
            msg = format!("line {line}, column {col}: {msg}");
        }
    }
    if msg.contains("unknown field") {
        msg.push_str(" (remove or rename the key; see config.example.toml for every key)");
    }
    msg
}

/// How to write a value whose syntax serde rejected.
fn value_hint(key: &str, msg: &str) -> &'static str {
    if key.ends_with("_peers") || key.ends_with("trusted_proxies") {
        "; write a network in CIDR form, like \"192.168.1.0/24\" or \"2001:db8::/32\""
    } else if msg.contains("socket address") {
        "; write IP:PORT, like \"0.0.0.0:8080\" or \"[::]:8080\""
    } else if msg.contains("IP address") {
        "; write an IP address, like \"203.0.113.7\" or \"2001:db8::1\""
    } else {
        ""
    }
}

/// Best-effort full key path (`section.key`) for the byte offset of an error, from the nearest `[section]`
/// header above it and the key on the error's line.
fn enclosing_key(text: &str, offset: usize) -> Option<String> {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let line_start = text[..offset].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line_end = text[offset..].find('\n').map(|i| offset + i).unwrap_or(text.len());
    let line = text[line_start..line_end].trim();
    let mut section: Option<String> = None;
    for l in text[..line_start].lines() {
        let l = l.trim();
        if l.starts_with('[') {
            section = Some(l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
        }
    }
    if line.starts_with('[') {
        return Some(line.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    }
    let key = line.split('=').next()?.trim();
    if key.is_empty() || !line.contains('=') {
        return section;
    }
    Some(match section {
        Some(s) => format!("{s}.{key}"),
        None => key.to_string(),
    })
}
