//! What a config reload (SIGHUP) may change while ponte runs: one table that names every key once, as applied
//! live or as needing a restart. The diff and the merge both come from it, so a key cannot be reported as
//! applied while the running value stays (or the reverse), and a test checks that every key of
//! config.example.toml is in it.

use super::Config;

/// When a changed key takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Apply {
    /// At once (new connections, allocations and requests see the new value).
    Live,
    /// Only after a restart: the running value is kept, so the live config always describes what runs.
    Restart,
}

/// One row of the table: a config key, when it applies, and how to compare and keep it.
pub struct Key {
    pub name: &'static str,
    pub apply: Apply,
    changed: fn(&Config, &Config) -> bool,
    keep: fn(&mut Config, &Config),
}

macro_rules! table {
    ($($apply:ident $name:literal => $($field:ident).+ ;)*) => {
        /// Every config key with when it applies. Tables (`tls.acme`, `turn.users`, `signaling.ice_servers`) are one key.
        pub static KEYS: &[Key] = &[$(Key {
            name: $name,
            apply: Apply::$apply,
            changed: |old, new| old.$($field).+ != new.$($field).+,
            keep: |new, old| new.$($field).+ = old.$($field).+.clone(),
        }),*];
    };
}

table! {
    Restart "http.listen" => http.listen;
    Restart "http.web_root" => http.web_root;
    Live "http.public_url" => http.public_url;
    Live "http.allowed_origins" => http.allowed_origins;
    Live "http.trusted_proxies" => http.trusted_proxies;
    Live "http.max_connections_per_ip" => http.max_connections_per_ip;

    Restart "turn.enabled" => turn.enabled;
    Restart "turn.listen_udp" => turn.listen_udp;
    Restart "turn.listen_tcp" => turn.listen_tcp;
    Restart "turn.udp_workers" => turn.udp_workers;
    Restart "turn.stun_alt_listen" => turn.stun_alt_listen;
    Restart "turn.realm" => turn.realm;
    Restart "turn.secret" => turn.secret;
    Restart "turn.secret_file" => turn.secret_file;
    Restart "turn.accept_secrets" => turn.accept_secrets;
    Live "turn.credential_ttl_secs" => turn.credential_ttl_secs;
    Restart "turn.users" => turn.users;
    Restart "turn.relay_port_min" => turn.relay_port_min;
    Restart "turn.relay_port_max" => turn.relay_port_max;
    Restart "turn.relay_ip" => turn.relay_ip;
    Restart "turn.external_ip" => turn.external_ip;
    Restart "turn.relay_ip6" => turn.relay_ip6;
    Restart "turn.external_ip6" => turn.external_ip6;
    Live "turn.allow_peers" => turn.allow_peers;
    Live "turn.deny_peers" => turn.deny_peers;
    // Quotas, the answer budget and SOFTWARE reach the TURN core through its config watcher (Core::reload).
    Live "turn.max_allocations" => turn.max_allocations;
    Live "turn.max_allocations_per_user" => turn.max_allocations_per_user;
    Live "turn.max_permissions_per_allocation" => turn.max_permissions_per_allocation;
    Live "turn.max_channels_per_allocation" => turn.max_channels_per_allocation;
    Live "turn.max_bandwidth_per_allocation" => turn.max_bandwidth_per_allocation;
    Live "turn.unauthenticated_rate_per_ip" => turn.unauthenticated_rate_per_ip;
    Live "turn.software" => turn.software;
    Live "turn.max_allocations_per_ip" => turn.max_allocations_per_ip;
    Live "turn.relay_port_share_per_ip_percent" => turn.relay_port_share_per_ip_percent;
    Live "turn.max_tcp_connections_per_ip" => turn.max_tcp_connections_per_ip;
    Live "turn.tcp_setup_timeout_secs" => turn.tcp_setup_timeout_secs;
    // The self-test runs once, at start.
    Restart "turn.self_test" => turn.self_test;

    Live "signaling.reconnect_grace_secs" => signaling.reconnect_grace_secs;
    Live "signaling.request_timeout_secs" => signaling.request_timeout_secs;
    Live "signaling.max_message_bytes" => signaling.max_message_bytes;
    Live "signaling.messages_per_sec" => signaling.messages_per_sec;
    Live "signaling.connect_requests_per_min" => signaling.connect_requests_per_min;
    Live "signaling.max_connections_per_ip" => signaling.max_connections_per_ip;
    Live "signaling.max_connections" => signaling.max_connections;
    Live "signaling.ping_interval_secs" => signaling.ping_interval_secs;
    Live "signaling.ice_servers" => signaling.ice_servers;
    Restart "signaling.state_dir" => signaling.state_dir;
    Live "signaling.token_max_age_secs" => signaling.token_max_age_secs;
    Live "signaling.max_sessions_per_ip" => signaling.max_sessions_per_ip;
    Live "signaling.requests_to_one_client_per_min" => signaling.requests_to_one_client_per_min;
    Live "signaling.identity_forget_after_days" => signaling.identity_forget_after_days;
    Live "signaling.identity_registrations_per_hour" => signaling.identity_registrations_per_hour;
    Live "signaling.max_identities" => signaling.max_identities;

    Restart "tls.cert" => tls.cert;
    Restart "tls.key" => tls.key;
    Restart "tls.listen" => tls.listen;
    Restart "tls.turns_listen" => tls.turns_listen;
    Restart "tls.redirect_http" => tls.redirect_http;
    Restart "tls.acme" => tls.acme;

    Restart "metrics.enabled" => metrics.enabled;
    Restart "metrics.listen" => metrics.listen;

    // Applied by the daemon through the log filter handle (unless RUST_LOG pins it).
    Live "log.level" => log.level;
    Restart "log.format" => log.format;

    Restart "cluster.redis_url" => cluster.redis_url;
    Restart "cluster.node_name" => cluster.node_name;
    Restart "cluster.public_addresses" => cluster.public_addresses;
    Restart "cluster.key_prefix" => cluster.key_prefix;
    Restart "cluster.presence_ttl_secs" => cluster.presence_ttl_secs;
}

/// The outcome of comparing a running config with a new one.
#[derive(Debug)]
pub struct Diff {
    /// Changed keys whose new values are in effect in `merged`.
    pub applied: Vec<&'static str>,
    /// Changed keys that keep their running values in `merged` until a restart.
    pub need_restart: Vec<&'static str>,
    /// What runs from now on: the new config with every restart-only key kept at its running value.
    pub merged: Config,
}

/// Compare `old` (running) with `new` (validated) and merge them by the table.
pub fn diff(old: &Config, new: Config) -> Diff {
    let mut merged = new;
    let (mut applied, mut need_restart) = (Vec::new(), Vec::new());
    for key in KEYS {
        if !(key.changed)(old, &merged) {
            continue;
        }
        match key.apply {
            Apply::Live => applied.push(key.name),
            Apply::Restart => {
                (key.keep)(&mut merged, old);
                need_restart.push(key.name);
            }
        }
    }
    Diff { applied, need_restart, merged }
}

/// How a key applies, by its dotted name (`turn.allow_peers`).
pub fn apply_of(name: &str) -> Option<Apply> {
    KEYS.iter().find(|k| k.name == name).map(|k| k.apply)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key in config.example.toml (set, or commented out as `# key = …`), as `section.key`. A commented-out
    /// table header (`# [tls.acme]`) holds only the commented lines right after it.
    fn example_keys() -> Vec<String> {
        let text = include_str!("../../config.example.toml");
        let (mut section, mut commented_section) = (String::new(), None::<String>);
        let mut keys = Vec::new();
        for line in text.lines() {
            let commented = line.trim_start().starts_with('#');
            if !commented {
                commented_section = None;
            }
            let l = line.trim().trim_start_matches('#').trim();
            if let Some(h) = l.strip_prefix('[') {
                let name = h.trim_matches(|c| c == '[' || c == ']').trim().to_string();
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.') {
                    continue;
                }
                if name.contains('.') {
                    keys.push(name.clone());
                }
                match commented {
                    true => commented_section = Some(name),
                    false => section = name,
                }
                continue;
            }
            let Some((k, _)) = l.split_once(" = ") else { continue };
            if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            let in_section = if commented { commented_section.as_ref().unwrap_or(&section) } else { &section };
            keys.push(format!("{in_section}.{k}"));
        }
        keys
    }

    fn table_key(key: &str) -> &str {
        // `tls.acme.domains` belongs to the `tls.acme` row, `turn.users.username` to `turn.users`.
        let mut parts = key.splitn(3, '.');
        let (a, b) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        &key[..a.len() + 1 + b.len()]
    }

    #[test]
    fn every_example_key_is_classified() {
        let keys = example_keys();
        assert!(keys.len() > 40, "the example parser found too few keys: {keys:?}");
        for k in &keys {
            assert!(
                apply_of(table_key(k)).is_some(),
                "{k} (from config.example.toml) is missing from the reload table"
            );
        }
    }

    #[test]
    fn table_names_are_unique_and_in_the_example() {
        let example: Vec<String> = example_keys().iter().map(|k| table_key(k).to_string()).collect();
        for (i, k) in KEYS.iter().enumerate() {
            assert!(KEYS[..i].iter().all(|o| o.name != k.name), "{} twice", k.name);
            assert!(example.iter().any(|e| e == k.name), "{} is not documented in config.example.toml", k.name);
        }
    }

    #[test]
    fn restart_keys_keep_their_running_value() {
        let old = Config::default();
        let mut new = old.clone();
        new.http.listen = "127.0.0.1:1".parse().unwrap();
        new.signaling.messages_per_sec = 7;
        new.turn.self_test = false;
        let d = diff(&old, new);
        assert_eq!(d.applied, ["signaling.messages_per_sec"]);
        assert_eq!(d.need_restart, ["http.listen", "turn.self_test"]);
        assert_eq!(d.merged.http.listen, old.http.listen);
        assert!(d.merged.turn.self_test);
        assert_eq!(d.merged.signaling.messages_per_sec, 7);
        let same = diff(&old, old.clone());
        assert!(same.applied.is_empty() && same.need_restart.is_empty());
        assert_eq!(same.merged, old);
    }
}
