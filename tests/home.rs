//! ponte on a home server (issue #13), the parts that need the real binary: the start-up advice names the ports
//! really configured; the STUN-only second port (`turn.stun_alt_listen`) answers Binding and nothing else. (The
//! home-router topology itself is tested in the NAT lab: tests/browser/home.test.mjs.)

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    // Free on both UDP and TCP on loopback (TURN listens on both).
    loop {
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let p = u.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

#[test]
fn private_relay_warning_names_the_configured_ports() {
    let dir = tempfile::tempdir().unwrap();
    let (udp, tcp) = (free_port(), free_port());
    let cfg = dir.path().join("ponte.toml");
    std::fs::write(
        &cfg,
        format!(
            "[http]\nlisten = \"127.0.0.1:0\"\n[metrics]\nenabled = false\n[turn]\nlisten_udp = [\"127.0.0.1:{udp}\"]\n\
             listen_tcp = [\"127.0.0.1:{tcp}\"]\nrelay_port_min = 50000\nrelay_port_max = 50100\nself_test = false\n\
             [signaling]\nstate_dir = \"{}\"\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ponte"))
        .args(["-c", cfg.to_str().unwrap()])
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    for r in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(r).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut log = Vec::new();
    while Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            let done = l.contains("STUN/TURN listening");
            log.push(l);
            if done {
                break;
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let log = log.join("\n");
    let warn =
        log.lines().find(|l| l.contains("turn.external_ip is not set")).unwrap_or_else(|| panic!("no warning:\n{log}"));
    assert!(warn.contains(&format!("forward UDP {udp} and 50000-50100, TCP {tcp}")), "{warn}");
    assert!(!warn.contains("3478"), "the warning names the default port, not the configured one: {warn}");
}

#[tokio::test]
async fn stun_alt_port_answers_binding_only() {
    use ponte::turn::codec;
    let alt = free_port();
    let mut cfg = common::test_config();
    cfg.turn.stun_alt_listen = Some(format!("127.0.0.1:{alt}").parse().unwrap());
    let srv = common::TestServer::start(cfg).await;
    let alt: std::net::SocketAddr = format!("127.0.0.1:{alt}").parse().unwrap();
    let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut buf = vec![0u8; 1500];
    // The port is bound by the TURN task after start: retry the first request briefly.
    let txid = [3u8; 12];
    let req = codec::message(codec::METHOD_BINDING, 0, txid).raw;
    let mut answer = None;
    for _ in 0..20 {
        s.send_to(&req, alt).await.unwrap();
        if let Ok(Ok((n, _))) = tokio::time::timeout(Duration::from_millis(200), s.recv_from(&mut buf)).await {
            answer = Some(buf[..n].to_vec());
            break;
        }
    }
    let a = answer.expect("the STUN-only port answers a Binding request");
    assert_eq!(codec::method_and_class(&a), (codec::METHOD_BINDING, 2));
    assert_eq!(codec::transaction_id(&a), txid);
    let mut m = stun::message::Message::new();
    m.raw = a;
    m.decode().unwrap();
    let mut x = stun::xoraddr::XorMappedAddress::default();
    stun::message::Getter::get_from(&mut x, &m).unwrap();
    assert_eq!(std::net::SocketAddr::new(x.ip, x.port), s.local_addr().unwrap());
    // An Allocate there gets no answer at all (the main port would answer 401): no relay on this port.
    let alloc = codec::message(codec::METHOD_ALLOCATE, 0, [4u8; 12]).raw;
    s.send_to(&alloc, alt).await.unwrap();
    let r = tokio::time::timeout(Duration::from_millis(500), s.recv_from(&mut buf)).await;
    assert!(r.is_err(), "the STUN-only port answered an Allocate");
    s.send_to(&alloc, srv.turn_udp[0]).await.unwrap();
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), s.recv_from(&mut buf)).await.unwrap().unwrap();
    assert_eq!(codec::method_and_class(&buf[..n]), (codec::METHOD_ALLOCATE, 3), "main port challenges");
    srv.stop().await.unwrap();
}
