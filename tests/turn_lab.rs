//! Interop with coturn's own clients (`turnutils_uclient`, `turnutils_stunclient`, `turnutils_peer`) against the
//! real ponte binary inside the network-namespace lab (`tests/lab/netlab.sh`): ponte on 198.51.100.10 (relay
//! address auto-detected), the echo peer on the public-looking 198.51.100.30, clients in a home behind a NAT.
//!
//! Needs root, `ip`, `iptables` and coturn's utilities; outside CI a missing one skips with a loud message,
//! with CI=true it fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::{in_ci, require_tool};

const SECRET: &str = "lab-secret-0123456789abcdef";
const SERVER: &str = "198.51.100.10";
const PEER: &str = "198.51.100.30";

fn prerequisites() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        if in_ci() {
            panic!("the TURN lab tests need root (network namespaces) and CI=true");
        }
        eprintln!("SKIPPED: the TURN lab tests need root for network namespaces");
        return false;
    }
    ["ip", "iptables", "turnutils_uclient", "turnutils_peer", "turnutils_stunclient", "bash"]
        .iter()
        .all(|t| require_tool(t))
}

/// A lab with ponte and an echo peer running; everything is torn down on drop, also when a test fails.
struct Lab {
    prefix: String,
    children: Vec<Child>,
    dir: tempfile::TempDir,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/lab/netlab.sh")
}

impl Lab {
    fn start(extra_turn_toml: &str) -> Lab {
        static N: AtomicU32 = AtomicU32::new(0);
        let prefix = format!("tl{}x{}", std::process::id() % 100_000, N.fetch_add(1, Ordering::Relaxed));
        let dir = tempfile::tempdir().unwrap();
        let mut lab = Lab { prefix, children: Vec::new(), dir };
        let st = Command::new("bash").arg(script()).args(["up", &lab.prefix]).status().expect("run netlab.sh");
        assert!(st.success(), "netlab.sh up failed");

        let cfg = lab.dir.path().join("ponte.toml");
        // self_test = false: the tests count allocations exactly, and the start-up self-test makes two of its own.
        std::fs::write(
            &cfg,
            format!(
                "[http]\nlisten = \"127.0.0.1:8080\"\n[metrics]\nlisten = \"127.0.0.1:9477\"\n[turn]\nlisten_udp = [\"0.0.0.0:3478\"]\n\
                 listen_tcp = [\"0.0.0.0:3478\"]\nsecret = \"{SECRET}\"\n\
                 allow_peers = [\"198.51.100.0/24\"]\nself_test = false\n{extra_turn_toml}\n"
            ),
        )
        .unwrap();
        let log = lab.dir.path().join("ponte.log");
        let child = lab
            .cmd("srv", env!("CARGO_BIN_EXE_ponte"), &["-c", cfg.to_str().unwrap()])
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(lab.dir.path().join("ponte.err")).unwrap())
            .spawn()
            .unwrap();
        lab.children.push(child);
        let peer = lab
            .cmd("peer", "turnutils_peer", &["-L", PEER, "-p", "3480"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        lab.children.push(peer);
        // Ready when both listeners are logged (the log goes to stdout or stderr depending on the format).
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let text = lab.log();
            if text.contains("STUN/TURN listening on tcp://") {
                break;
            }
            assert!(Instant::now() < deadline, "ponte did not start in the lab:\n{text}");
            std::thread::sleep(Duration::from_millis(50));
        }
        lab
    }

    fn log(&self) -> String {
        let a = std::fs::read_to_string(self.dir.path().join("ponte.log")).unwrap_or_default();
        let b = std::fs::read_to_string(self.dir.path().join("ponte.err")).unwrap_or_default();
        a + &b
    }

    fn cmd(&self, node: &str, prog: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &format!("{}-{node}", self.prefix), prog]).args(args);
        c
    }

    /// Run a client command in a home behind NAT 1, bounded in time.
    fn run(&self, node: &str, prog: &str, args: &[&str]) -> String {
        let mut full = vec!["60", prog];
        full.extend_from_slice(args);
        let Output { stdout, stderr, .. } = self.cmd(node, "timeout", &full).output().unwrap();
        String::from_utf8_lossy(&stdout).to_string() + &String::from_utf8_lossy(&stderr)
    }

    fn uclient(&self, args: &[&str]) -> String {
        let mut a = args.to_vec();
        a.push(SERVER);
        self.run("h1", "turnutils_uclient", &a)
    }

    /// ponte's metric `name` (Prometheus text) read from inside the server namespace.
    fn metric(&self, name: &str) -> u64 {
        let out = self.run(
            "srv",
            "bash",
            &[
                "-c",
                "exec 3<>/dev/tcp/127.0.0.1/9477; printf 'GET /metrics HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n' >&3; cat <&3",
            ],
        );
        out.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')).map(|v| v.trim().parse().unwrap()))
            .unwrap_or_else(|| panic!("metric {name} not found in:\n{out}"))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("bash").arg(script()).args(["down", &self.prefix]).status();
    }
}

/// Parse uclient's summary: (sent, received, lost).
fn summary(out: &str) -> (u64, u64, u64) {
    let num = |s: &str, key: &str| -> Option<u64> {
        let i = s.find(key)? + key.len();
        s[i..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    };
    let line = out
        .lines()
        .rev()
        .find(|l| l.contains("tot_send_msgs=") && !l.contains("msz="))
        .unwrap_or_else(|| panic!("no summary in:\n{out}"));
    let lost_line = out
        .lines()
        .rev()
        .find(|l| l.contains("Total lost packets"))
        .unwrap_or_else(|| panic!("no loss line in:\n{out}"));
    (
        num(line, "tot_send_msgs=").unwrap(),
        num(line, "tot_recv_msgs=").unwrap(),
        num(lost_line, "Total lost packets ").unwrap(),
    )
}

/// `-c`: no RTCP allocations (they need EVEN-PORT reservations, which ponte answers with 508 as RFC 8656 allows).
fn relay_no_loss(extra: &[&str]) {
    if !prerequisites() {
        return;
    }
    let lab = Lab::start("");
    let (clients, msgs) = (4u64, 50u64);
    let (m, n) = (clients.to_string(), msgs.to_string());
    let mut args = vec!["-c", "-W", SECRET, "-e", PEER, "-r", "3480", "-m", &m, "-n", &n, "-l", "180"];
    args.extend_from_slice(extra);
    let out = lab.uclient(&args);
    let (sent, recv, lost) = summary(&out);
    assert_eq!(
        (sent, recv, lost),
        (clients * msgs, clients * msgs, 0),
        "uclient {extra:?}:\n{out}\nponte:\n{}",
        lab.log()
    );
    assert!(lab.metric("ponte_turn_relayed_packets_total{direction=\"peer_to_client\"}") >= clients * msgs);
}

#[test]
fn uclient_udp_channeldata_rest_auth_no_loss() {
    relay_no_loss(&[]);
}

#[test]
fn uclient_udp_send_indications_no_loss() {
    relay_no_loss(&["-s"]);
}

#[test]
fn uclient_tcp_channeldata_no_loss() {
    relay_no_loss(&["-t"]);
}

#[test]
fn uclient_tcp_send_indications_no_loss() {
    relay_no_loss(&["-t", "-s"]);
}

/// uclient's default mode: an RTP allocation with EVEN-PORT (R=1) and an RTCP allocation that claims the
/// reserved port with its RESERVATION-TOKEN, for every client.
#[test]
fn uclient_default_rtp_and_rtcp_with_reservation_tokens_no_loss() {
    if !prerequisites() {
        return;
    }
    let lab = Lab::start("");
    let out = lab.uclient(&["-W", SECRET, "-e", PEER, "-r", "3480", "-m", "3", "-n", "40", "-l", "160"]);
    let (sent, recv, lost) = summary(&out);
    // uclient counts RTP and RTCP messages together, so only equality and a lower bound are fixed.
    assert!(sent >= 120 && recv == sent && lost == 0, "{out}\nponte:\n{}", lab.log());
    // At least an RTP and an RTCP allocation per client (the RTCP one through the RESERVATION-TOKEN).
    assert!(lab.metric("ponte_turn_allocations_created_total") >= 6);
}

#[test]
fn uclient_client_to_client_through_two_relays() {
    if !prerequisites() {
        return;
    }
    let lab = Lab::start("");
    let out = lab.uclient(&["-c", "-y", "-W", SECRET, "-m", "2", "-n", "30", "-l", "100"]);
    let (sent, recv, lost) = summary(&out);
    assert_eq!((sent, recv, lost), (60, 60, 0), "{out}");
}

#[test]
fn stunclient_gets_the_nat_mapped_address() {
    if !prerequisites() {
        return;
    }
    let lab = Lab::start("");
    let out = lab.run("h1", "turnutils_stunclient", &[SERVER]);
    // The home computer (10.77.1.2) is seen as its router's WAN address.
    assert!(out.contains("UDP reflexive addr: 198.51.100.21:"), "{out}");
}

#[test]
fn private_loopback_and_metadata_peers_refused_403() {
    if !prerequisites() {
        return;
    }
    let lab = Lab::start("");
    for peer in ["10.77.1.2", "127.0.0.1", "169.254.169.254"] {
        let out = lab.uclient(&["-c", "-W", SECRET, "-e", peer, "-r", "3480", "-n", "3"]);
        assert!(out.contains("error 403"), "peer {peer} must be refused:\n{out}");
    }
    assert_eq!(lab.metric("ponte_turn_denied_peers_total"), 3);
    assert_eq!(lab.metric("ponte_turn_relayed_packets_total{direction=\"client_to_peer\"}"), 0);
}

#[test]
fn own_address_reachable_only_at_relay_ports() {
    if !prerequisites() {
        return;
    }
    let lab = Lab::start("");
    // The server's own address is a legal peer (relay-to-relay between two browsers on this server), but
    // nothing reaches its other services: here the HTTP port.
    let out = lab.uclient(&["-c", "-W", SECRET, "-e", SERVER, "-r", "8080", "-n", "5"]);
    let (sent, recv, _) = summary(&out);
    assert_eq!((sent, recv), (5, 0), "{out}");
    assert_eq!(lab.metric("ponte_turn_relayed_packets_total{direction=\"client_to_peer\"}"), 0);
}

#[test]
fn wrong_and_expired_credentials_get_401() {
    if !prerequisites() {
        return;
    }
    let lab = Lab::start("");
    let out = lab.uclient(&["-c", "-W", "not-the-secret-at-all", "-e", PEER, "-r", "3480", "-n", "3"]);
    assert!(out.contains("Cannot complete Allocation"), "{out}");
    let failures = lab.metric("ponte_turn_auth_failures_total");
    assert!(failures >= 1, "wrong secret must count as auth failure");
    // A REST username that expired an hour ago, with its correct password.
    let user = format!("{}:lab", ponte::credentials::unix_now() - 3600);
    let pass = ponte::credentials::password_for(&ponte::config::Secret::new(SECRET), &user);
    let out = lab.uclient(&["-c", "-u", &user, "-w", &pass, "-e", PEER, "-r", "3480", "-n", "3"]);
    assert!(out.contains("Cannot complete Allocation"), "{out}");
    assert!(lab.metric("ponte_turn_auth_failures_total") > failures);
    assert_eq!(lab.metric("ponte_turn_allocations_created_total"), 0);
    // The same user with a valid expiry works (so the failures above were about credentials).
    let user = format!("{}:lab", ponte::credentials::unix_now() + 3600);
    let pass = ponte::credentials::password_for(&ponte::config::Secret::new(SECRET), &user);
    let out = lab.uclient(&["-c", "-u", &user, "-w", &pass, "-e", PEER, "-r", "3480", "-n", "3"]);
    assert_eq!(summary(&out).2, 0, "{out}");
}

/// Real browser: Debian's Chromium in a home behind NAT gathers a server-reflexive candidate from ponte's STUN
/// and relay candidates from its TURN over UDP and over TCP (driven by `tests/turn-browser/gather.mjs`).
#[test]
fn chromium_gathers_srflx_and_relay_candidates_udp_and_tcp() {
    if !prerequisites() || !require_tool("node") || !require_tool("chromium") {
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/turn-browser");
    if !dir.join("node_modules/playwright-core").is_dir() {
        let msg = "tests/turn-browser/node_modules is missing: run `npm ci` in tests/turn-browser (as .ci/run does)";
        if in_ci() {
            panic!("{msg}");
        }
        eprintln!("SKIPPED: {msg}");
        return;
    }
    let lab = Lab::start("");
    let wrapper = lab.dir.path().join("chromium-in-h1");
    std::fs::write(&wrapper, format!("#!/bin/sh\nexec ip netns exec {}-h1 /usr/bin/chromium \"$@\"\n", lab.prefix))
        .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let cred =
        ponte::credentials::mint(&ponte::config::Secret::new(SECRET), "browser", ponte::credentials::unix_now(), 3600);
    let turn = |transport: &str| {
        serde_json::json!({
            "iceServers": [{ "urls": [format!("turn:{SERVER}:3478?transport={transport}")], "username": cred.username, "credential": cred.password }],
            "iceTransportPolicy": "relay",
        })
    };
    let config = serde_json::json!({
        "chromium": wrapper,
        "scenarios": {
            "stun": { "iceServers": [{ "urls": [format!("stun:{SERVER}:3478")] }] },
            "udp": turn("udp"),
            "tcp": turn("tcp"),
        },
    });
    let out = Command::new("timeout")
        .args(["120", "node", "gather.mjs"])
        .current_dir(&dir)
        .env("GATHER_CONFIG", config.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "gather.mjs failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let got: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("JSON from gather.mjs");
    let has = |scenario: &str, ty: &str, addr: &str, relay_proto: Option<&str>| {
        got[scenario]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == ty && c["address"] == addr && relay_proto.is_none_or(|p| c["relayProtocol"] == p))
    };
    assert!(has("stun", "srflx", "198.51.100.21", None), "no srflx candidate at the NAT's address: {got:#}");
    // This Chromium leaves relayProtocol empty for UDP; the candidate's URL says which server entry it came from.
    assert!(
        got["udp"].as_array().unwrap().iter().any(|c| c["type"] == "relay"
            && c["address"] == SERVER
            && (c["relayProtocol"] == "udp" || c["url"].as_str().is_some_and(|u| u.ends_with("transport=udp")))),
        "no relay candidate over UDP: {got:#}"
    );
    assert!(has("tcp", "relay", SERVER, Some("tcp")), "no relay candidate over TCP: {got:#}");
    assert!(lab.metric("ponte_turn_allocations_created_total") >= 2);
}
