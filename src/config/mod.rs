//! Configuration: one TOML file, loaded in three steps, each in its own file:
//!
//! - `schema.rs`: the serde structs (unknown keys rejected) and their embedded defaults;
//! - `validate.rs`: the pure rules serde cannot express, one validator per section;
//! - `files.rs`: the files and folders the config names (certificates, the TURN secret file, web_root);
//!
//! plus `errors.rs` (problems and toml errors rendered with the key and the fix) and `reload.rs` (what a reload
//! may change while running). Every error names the full key path, the offending value and the fix.

mod errors;
mod files;
pub mod reload;
mod schema;
mod validate;

use std::path::Path;

pub use errors::{ConfigError, Problem};
pub use files::read_secret;
pub use schema::*;
pub use validate::domain_problem;

impl Config {
    /// Read, parse and check a config file: the rules and the files it names. Every problem is reported at once.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let config = Config::parse_only(&text, path)?;
        match config.problems() {
            problems if problems.is_empty() => Ok(config),
            problems => Err(ConfigError::Invalid { path: path.to_owned(), problems }),
        }
    }

    /// Parse config text and apply the pure rules (no file is read); `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config = Config::parse_only(text, path)?;
        match config.validate() {
            problems if problems.is_empty() => Ok(config),
            problems => Err(ConfigError::Invalid { path: path.to_owned(), problems }),
        }
    }

    fn parse_only(text: &str, path: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: path.to_owned(), message: errors::describe_toml_error(&e, text) })
    }

    /// Every problem: the rules ([`Config::validate`]) then the files ([`Config::check_files`]).
    pub fn problems(&self) -> Vec<Problem> {
        let mut p = self.validate();
        p.extend(self.check_files());
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse(s, Path::new("test.toml"))
    }

    #[test]
    fn stun_alt_listen_needs_its_own_port() {
        assert_eq!(Config::default().turn.stun_alt_listen, None);
        assert!(parse("[turn]\nstun_alt_listen = \"0.0.0.0:3479\"\n").is_ok());
        for bad in ["0.0.0.0:3478", "0.0.0.0:0"] {
            match parse(&format!("[turn]\nstun_alt_listen = \"{bad}\"\n")) {
                Err(ConfigError::Invalid { problems, .. }) => {
                    assert!(
                        problems.iter().any(|p| p.key == "turn.stun_alt_listen" && p.message.contains(bad)),
                        "{problems:?}"
                    )
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn udp_workers_default_to_auto_and_are_bounded() {
        assert_eq!(Config::default().turn.udp_workers, 0);
        assert!(parse("[turn]\nudp_workers = 2\n").is_ok());
        match parse("[turn]\nudp_workers = 1000\n") {
            Err(ConfigError::Invalid { problems, .. }) => {
                assert!(problems.iter().any(|p| p.key == "turn.udp_workers"), "{problems:?}")
            }
            other => panic!("udp_workers = 1000 accepted: {other:?}"),
        }
    }

    #[test]
    fn empty_file_is_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
        assert!(Config::default().validate().is_empty());
    }

    #[test]
    fn unknown_key_names_full_path_and_line() {
        let e = parse("[turn]\nrealm = \"x\"\nrelay_prot_min = 5\n").unwrap_err().to_string();
        assert!(e.contains("line 3"), "{e}");
        assert!(e.contains("turn.relay_prot_min"), "{e}");
        assert!(e.contains("unknown field"), "{e}");
    }

    #[test]
    fn bad_address_names_key() {
        let e = parse("[http]\nlisten = \"nonsense\"\n").unwrap_err().to_string();
        assert!(e.contains("http.listen"), "{e}");
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn inverted_port_range_names_key_and_fix() {
        let e = parse("[turn]\nrelay_port_min = 60000\nrelay_port_max = 50000\n").unwrap_err();
        let lines = e.lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("turn.relay_port_min"), "{lines:?}");
        assert!(lines[0].contains("60000 > turn.relay_port_max 50000"), "{lines:?}");
    }

    #[test]
    fn all_problems_reported_at_once() {
        let e =
            parse("[turn]\nrelay_port_min = 60000\nrelay_port_max = 50000\nrealm = \"\"\n[log]\nlevel = \"loud[\"\n")
                .unwrap_err();
        let keys: Vec<_> = match &e {
            ConfigError::Invalid { problems, .. } => problems.iter().map(|p| p.key.clone()).collect(),
            _ => panic!("{e}"),
        };
        assert_eq!(keys, ["turn.relay_port_min", "turn.realm", "log.level"]);
    }

    #[test]
    fn secrets_never_printed() {
        let c = parse("[turn]\nsecret = \"supersecretvalue-0123456789\"\n[[turn.users]]\nusername = \"bob\"\npassword = \"hunter2hunter2\"\n").unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("supersecretvalue"), "{dbg}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("***"));
        assert_eq!(c.turn.secret.as_ref().unwrap().expose(), "supersecretvalue-0123456789");
    }

    #[test]
    fn short_secret_rejected() {
        let e = parse("[turn]\nsecret = \"short\"\n").unwrap_err().to_string();
        assert!(e.contains("turn.secret"), "{e}");
        assert!(!e.contains("short\""), "the secret itself must not be echoed: {e}");
    }

    #[test]
    fn origins() {
        assert_eq!(parse_origin("https://Chat.Example.org/").as_deref(), Some("https://chat.example.org"));
        assert_eq!(parse_origin("https://x.org:443").as_deref(), Some("https://x.org"));
        assert_eq!(parse_origin("http://x.org:8080/a").as_deref(), Some("http://x.org:8080"));
        assert_eq!(parse_origin("ftp://x.org"), None);
        assert_eq!(parse_origin("x.org"), None);
        let e = parse("[http]\nallowed_origins = [\"evil\"]\n").unwrap_err().to_string();
        assert!(e.contains("http.allowed_origins[0]"), "{e}");
    }

    #[test]
    fn generated_secrets_differ() {
        let a = Secret::generate();
        assert_ne!(a, Secret::generate());
        assert!(a.expose().len() >= 40);
    }
}
