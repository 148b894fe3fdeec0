//! The `ponte` binary as a process: check-config exit codes, SIGTERM shutdown, port clashes, defaults, log formats.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ponte");

fn example() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml")
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// A running daemon whose stderr lines arrive on a channel; killed on drop.
struct Daemon {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Daemon {
    fn spawn(cmd: &mut Command) -> Daemon {
        let mut child =
            cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn ponte");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Daemon { child, lines, seen: Vec::new() }
    }

    /// Wait (bounded) for a log line containing `needle`; returns it.
    fn wait_for(&mut self, needle: &str) -> String {
        // Tasks start concurrently, so their lines come in any order: look at what was already read first.
        if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => break,
            }
        }
        panic!("no log line containing {needle:?}; got:\n{}", self.seen.join("\n"));
    }

    fn http_addr(&mut self) -> SocketAddr {
        let line = self.wait_for("HTTP listening on http://");
        let rest = line.split("http://").nth(1).unwrap();
        rest.split_whitespace().next().unwrap().parse().unwrap()
    }

    /// Wait up to `limit` for exit; returns the exit code and all remaining stderr.
    fn wait_exit(&mut self, limit: Duration) -> (Option<i32>, String) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Drain what is left of stderr.
                while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(500)) {
                    self.seen.push(l);
                }
                return (status.code(), self.seen.join("\n"));
            }
            if Instant::now() > deadline {
                panic!("ponte did not exit within {limit:?}; log:\n{}", self.seen.join("\n"));
            }
            while let Ok(l) = self.lines.try_recv() {
                self.seen.push(l);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, sig: i32) {
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const LOOPBACK_CONFIG: &str = r#"
[http]
listen = "127.0.0.1:0"
[turn]
listen_udp = ["127.0.0.1:0"]
listen_tcp = ["127.0.0.1:0"]
relay_ip = "127.0.0.1"
[metrics]
listen = "127.0.0.1:0"
"#;

fn blocking_get(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn check_config_accepts_the_example() {
    let out = Command::new(BIN).arg("check-config").arg(example()).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}

#[test]
fn check_config_reports_problems_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    for (text, expect) in [
        ("[http]\nlisten = \"0.0.0.0:8080\"\ncolour = \"blue\"\n", vec!["http.colour", "unknown field", "line 3"]),
        ("[http]\nlisten = \"localhost-ish\"\n", vec!["http.listen", "\"localhost-ish\"", "IP:PORT"]),
        ("[turn]\nrelay_port_min = 6000\nrelay_port_max = 5000\n", vec!["turn.relay_port_min", "inverted"]),
        ("[turn]\nexternal_ip = \"127.0.0.1\"\n", vec!["turn.external_ip"]),
        ("[signaling]\nping_interval_secs = 1\n[log]\nformat = \"xml\"\n", vec!["log.format"]),
        ("this is not toml", vec!["line 1"]),
    ] {
        let f = write(&dir, "bad.toml", text);
        let out = Command::new(BIN).arg("check-config").arg(&f).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {err}");
        assert!(out.stdout.is_empty(), "nothing on stdout for a bad file");
        for e in expect {
            assert!(err.contains(e), "{text:?}: expected {e:?} in:\n{err}");
        }
    }
    // Several problems are all reported, one per line, each with the file name.
    let f = write(
        &dir,
        "multi.toml",
        "[turn]\nrelay_port_min = 6000\nrelay_port_max = 5000\nrealm = \"\"\n[signaling]\nping_interval_secs = 1\n",
    );
    let out = Command::new(BIN).arg("check-config").arg(&f).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 3, "{err}");
    assert!(err.lines().all(|l| l.starts_with(f.to_str().unwrap())), "{err}");
}

#[test]
fn config_from_env_and_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(&dir, "bad.toml", "[turn]\nnope = 1\n");
    let out = Command::new(BIN).arg("check-config").env("PONTE_CONFIG", &f).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("turn.nope"));

    // Running the daemon with a bad config refuses to start, with the same message.
    let out = Command::new(BIN).env("PONTE_CONFIG", &f).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("turn.nope"));

    let out = Command::new(BIN).args(["-c", "/nonexistent/ponte.toml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config file /nonexistent/ponte.toml"));
}

#[test]
fn version_and_help() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("ponte {}", env!("CARGO_PKG_VERSION")));
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in ["--config", "PONTE_CONFIG", "check-config", "3478"] {
        assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
    }
}

#[test]
fn sigterm_shuts_down_gracefully_with_exit_0() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(&dir, "ponte.toml", LOOPBACK_CONFIG);
    let mut d = Daemon::spawn(Command::new(BIN).arg("-c").arg(&cfg).env_remove("RUST_LOG"));
    let addr = d.http_addr();
    d.wait_for("STUN/TURN listening on udp://127.0.0.1:");
    assert!(blocking_get(addr, "/healthz").starts_with("HTTP/1.1 200"));
    // Keep a connection open: shutdown must not wait on idle clients.
    let _idle = std::net::TcpStream::connect(addr).unwrap();

    let t = Instant::now();
    d.signal(libc::SIGTERM);
    let (code, log) = d.wait_exit(Duration::from_secs(5));
    assert_eq!(code, Some(0), "{log}");
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(log.contains("SIGTERM received"), "{log}");
    assert!(log.contains("ponte stopped"), "{log}");
    assert!(!log.contains('\x1b'), "no ANSI colour codes when stderr is not a terminal");
    assert!(std::net::TcpStream::connect(addr).is_err(), "port released");
}

#[test]
fn sigint_also_shuts_down() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(&dir, "ponte.toml", LOOPBACK_CONFIG);
    let mut d = Daemon::spawn(Command::new(BIN).arg("-c").arg(&cfg));
    d.http_addr();
    d.signal(libc::SIGINT);
    let (code, log) = d.wait_exit(Duration::from_secs(5));
    assert_eq!(code, Some(0), "{log}");
}

#[test]
fn port_in_use_fails_with_one_clear_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        &dir,
        "ponte.toml",
        &LOOPBACK_CONFIG.replace("127.0.0.1:0\"\n[turn]", &format!("{}\"\n[turn]", taken.local_addr().unwrap())),
    );
    let mut d = Daemon::spawn(Command::new(BIN).arg("-c").arg(&cfg));
    let (code, log) = d.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(1), "{log}");
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "{log}");
    assert!(errors[0].contains("http.listen") && errors[0].contains("already uses this port"), "{log}");
}

#[test]
fn json_log_format() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(&dir, "ponte.toml", &format!("{LOOPBACK_CONFIG}\n[log]\nformat = \"json\"\n"));
    let mut d = Daemon::spawn(Command::new(BIN).arg("-c").arg(&cfg).env_remove("RUST_LOG"));
    let line = d.wait_for("HTTP listening");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!(v["level"], "INFO");
    assert!(v["fields"]["message"].as_str().unwrap().contains("HTTP listening on http://127.0.0.1:"));
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(5)).0, Some(0));
}

/// With no config at all ponte must come up on its documented defaults (8080, 3478). Fixed ports are only safe
/// in a network namespace of our own, so the daemon runs in one and the test connects from inside it.
#[test]
fn runs_with_no_config_on_default_ports() {
    if !common::require_tool("ip") {
        return;
    }
    if unsafe { libc::geteuid() } != 0 {
        assert!(!common::in_ci(), "CI must run the suite as root");
        eprintln!("SKIPPED: needs root for a network namespace");
        return;
    }
    let ns = format!("ponte-defaults-{}", std::process::id());
    let ok = |c: &mut Command| assert!(c.status().unwrap().success());
    ok(Command::new("ip").args(["netns", "add", &ns]));
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let _cleanup = Cleanup(ns.clone());
    ok(Command::new("ip").args(["-n", &ns, "link", "set", "lo", "up"]));

    let mut d = Daemon::spawn(Command::new("ip").args(["netns", "exec", &ns, BIN]).env_remove("PONTE_CONFIG"));
    assert_eq!(d.http_addr(), "0.0.0.0:8080".parse().unwrap());
    d.wait_for("STUN/TURN listening on udp://0.0.0.0:3478");
    d.wait_for("STUN/TURN listening on tcp://0.0.0.0:3478");
    d.wait_for("metrics listening on http://127.0.0.1:9477/metrics");
    let gen = d.seen.iter().any(|l| l.contains("generated a random TURN secret"));
    assert!(gen, "the generated secret is announced (never printed): {:?}", d.seen);

    // Connect from inside the namespace: a thread switches its network namespace, then uses plain sockets.
    let ns2 = ns.clone();
    let (index, health) = std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/var/run/netns/{ns2}")).unwrap();
        let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns failed");
        let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        (blocking_get(addr, "/"), blocking_get(addr, "/healthz"))
    })
    .join()
    .unwrap();
    assert!(index.starts_with("HTTP/1.1 200") && index.contains("<title>ponte"), "{index}");
    assert!(health.starts_with("HTTP/1.1 200") && health.contains("\"status\":\"ok\""), "{health}");

    d.signal(libc::SIGTERM);
    let (code, log) = d.wait_exit(Duration::from_secs(5));
    assert_eq!(code, Some(0), "{log}");
}

#[test]
fn sighup_reloads_live_settings_and_rejects_a_broken_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(&dir, "ponte.toml", LOOPBACK_CONFIG);
    let mut d = Daemon::spawn(Command::new(BIN).arg("-c").arg(&cfg).env_remove("RUST_LOG"));
    let addr = d.http_addr();
    d.wait_for("STUN/TURN listening on udp://");

    // A valid change: live settings apply, listen addresses are reported as needing a restart.
    let changed = LOOPBACK_CONFIG.replacen("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:1\"", 1)
        + "[signaling]\nmessages_per_sec = 7\n[log]\nlevel = \"debug\"\n";
    std::fs::write(&cfg, changed).unwrap();
    d.signal(libc::SIGHUP);
    let line = d.wait_for("configuration reloaded");
    assert!(line.contains("signaling.messages_per_sec") && line.contains("log.level"), "{line}");
    let line = d.wait_for("only applied after a restart");
    assert!(line.contains("http.listen"), "{line}");
    let health = blocking_get(addr, "/healthz");
    assert!(health.starts_with("HTTP/1.1 200"), "still serving on the old address: {health}");

    // A broken file is rejected and the daemon keeps running.
    std::fs::write(&cfg, "[turn]\nrelay_port_min = 9\nrelay_port_max = 8\n").unwrap();
    d.signal(libc::SIGHUP);
    let line = d.wait_for("config reload rejected");
    assert!(line.contains("turn.relay_port_min"), "{line}");
    assert!(blocking_get(addr, "/healthz").starts_with("HTTP/1.1 200"));

    d.signal(libc::SIGTERM);
    let (code, log) = d.wait_exit(Duration::from_secs(5));
    assert_eq!(code, Some(0), "{log}");
}
