//! systemd integration: the shipped unit verifies, and the daemon sends READY/STOPPING on NOTIFY_SOCKET.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ponte");

#[test]
fn unit_file_verifies() {
    if !common::require_tool("systemd-analyze") {
        return;
    }
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/ponte.service")).unwrap();
    for needle in [
        "Type=notify",
        "ExecStartPre=/usr/bin/ponte check-config /etc/ponte/ponte.toml",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "SystemCallFilter=@system-service",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "LimitNOFILE=",
        "Restart=on-failure",
    ] {
        assert!(unit.contains(needle), "unit lacks {needle}");
    }
    // Verify with the binary path pointing at the one we built (verify checks that ExecStart exists).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ponte.service");
    std::fs::write(&path, unit.replace("/usr/bin/ponte", BIN)).unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg(&path).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let relevant: Vec<&str> = text.lines().filter(|l| l.contains("ponte.service")).collect();
    assert!(out.status.success() && relevant.is_empty(), "systemd-analyze verify complained:\n{text}");
}

#[test]
fn notifies_ready_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let cfg = dir.path().join("ponte.toml");
    std::fs::write(
        &cfg,
        "[http]\nlisten = \"127.0.0.1:0\"\n[turn]\nlisten_udp = [\"127.0.0.1:0\"]\nlisten_tcp = [\"127.0.0.1:0\"]\nrelay_ip = \"127.0.0.1\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .arg("-c")
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &sock_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("READY notification");
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg}");
    assert!(msg.contains("STATUS=web on http://127.0.0.1:"), "{msg}");

    // A reload (SIGHUP) is bracketed by RELOADING=1 ... READY=1.
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    let n = sock.recv(&mut buf).expect("RELOADING notification");
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.lines().any(|l| l == "RELOADING=1"), "{msg}");
    assert!(msg.lines().any(|l| l.starts_with("MONOTONIC_USEC=")), "{msg}");
    let n = sock.recv(&mut buf).expect("READY after reload");
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg}");

    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let n = sock.recv(&mut buf).expect("STOPPING notification");
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.lines().any(|l| l == "STOPPING=1"), "{msg}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert_eq!(status.code(), Some(0));
            break;
        }
        assert!(Instant::now() < deadline, "no exit within 5 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}
