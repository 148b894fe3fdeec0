//! IPv6 and dual stack through the real daemon's sockets on loopback (issue #19): a server that listens and
//! relays on IPv6 only (a DS-Lite home) serves clients that ask for no family, a dual-stack server gives one
//! allocation a relay of each family (ADDITIONAL-ADDRESS-FAMILY) and relays across families.

mod common;

use std::net::SocketAddr;

use common::turn_client::{code, peer_attr, Client, Conn, T};
use common::{test_config, TestServer};
use ponte::config::Config;
use ponte::turn::codec::{self, *};
use stun::attributes::AttrType;
use stun::message::Message;
use tokio::net::UdpSocket;

fn have_ipv6() -> bool {
    if std::net::UdpSocket::bind("[::1]:0").is_ok() {
        return true;
    }
    assert!(!common::in_ci(), "IPv6 loopback is unavailable (CI=true)");
    eprintln!("SKIPPED: no IPv6 loopback on this machine");
    false
}

/// Both families on loopback, loopback peers allowed.
fn dual_config() -> Config {
    let mut c = test_config();
    c.turn.listen_udp = vec!["127.0.0.1:0".parse().unwrap(), "[::1]:0".parse().unwrap()];
    c.turn.listen_tcp = vec![];
    c.turn.relay_ip = Some("127.0.0.1".parse().unwrap());
    c.turn.relay_ip6 = Some("::1".parse().unwrap());
    c.turn.allow_peers = vec!["127.0.0.1/32".parse().unwrap(), "::1/128".parse().unwrap()];
    c.turn.relay_port_min = 30000;
    c.turn.relay_port_max = 30999;
    c
}

fn relays(r: &Message) -> Vec<SocketAddr> {
    r.attributes
        .0
        .iter()
        .filter(|a| a.typ.0 == ATTR_XOR_RELAYED_ADDRESS)
        .map(|a| codec::decode_xor_addr(&a.value, &r.transaction_id.0).unwrap())
        .collect()
}

async fn client_on(local: &str, server: SocketAddr, srv: &TestServer) -> Client {
    Client::with(Conn::Udp(UdpSocket::bind(local).await.unwrap(), server), srv)
}

/// Send `payload` to `peer` with a Send indication and check it arrives from `relay`; answer back and check the
/// client gets it as a Data indication.
async fn round_trip(c: &mut Client, peer: &UdpSocket, relay: SocketAddr, payload: &[u8]) {
    let to = peer.local_addr().unwrap();
    let mut m = codec::message(METHOD_SEND, 1, rand::random());
    peer_attr(&mut m, to);
    m.add(AttrType(ATTR_DATA), payload);
    c.send_raw(&m.raw).await;
    let mut b = [0u8; 200];
    let (n, from) = tokio::time::timeout(T, peer.recv_from(&mut b)).await.unwrap().unwrap();
    assert_eq!((&b[..n], from), (payload, relay), "the peer hears the relay of its own family");
    peer.send_to(b"back", relay).await.unwrap();
    let d = c.recv_stun().await;
    assert_eq!(d.get(AttrType(ATTR_DATA)).unwrap(), b"back");
}

/// The issue's report: ponte on `[::1]` with the relay on `::1`, and a client (like every browser) that asks for
/// no address family. It used to get 440; it gets the IPv6 relay.
#[tokio::test]
async fn an_ipv6_only_server_relays_for_clients_that_ask_for_no_family() {
    if !have_ipv6() {
        return;
    }
    let mut cfg = dual_config();
    cfg.turn.listen_udp = vec!["[::1]:0".parse().unwrap()];
    cfg.turn.relay_ip = Some("::1".parse().unwrap());
    cfg.turn.relay_ip6 = None;
    let srv = TestServer::start(cfg).await;
    let mut c = client_on("[::1]:0", srv.turn_udp[0], &srv).await;
    let relay = c.allocate().await;
    assert_eq!(relay.ip().to_string(), "::1");
    let peer = UdpSocket::bind("[::1]:0").await.unwrap();
    let r = c.request(METHOD_CREATE_PERMISSION, &|m| peer_attr(m, peer.local_addr().unwrap())).await;
    assert_eq!(code(&r), None);
    round_trip(&mut c, &peer, relay, b"ds-lite").await;
    srv.stop().await.unwrap();
}

/// ADDITIONAL-ADDRESS-FAMILY over the real sockets: one allocation, an IPv4 and an IPv6 relay, each talking to
/// peers of its family; deleting the allocation closes both relay sockets.
#[tokio::test]
async fn a_dual_allocation_relays_to_peers_of_both_families() {
    if !have_ipv6() {
        return;
    }
    let srv = TestServer::start(dual_config()).await;
    let v6_listener = srv.turn_udp.iter().copied().find(|a| a.is_ipv6()).unwrap();
    let mut c = client_on("[::1]:0", v6_listener, &srv).await;
    let r = c
        .request(METHOD_ALLOCATE, &|m| {
            m.add(AttrType(ATTR_REQUESTED_TRANSPORT), &[17, 0, 0, 0]);
            m.add(AttrType(ATTR_ADDITIONAL_ADDRESS_FAMILY), &[2, 0, 0, 0]);
        })
        .await;
    assert_eq!(code(&r), None, "{r}");
    let got = relays(&r);
    assert_eq!(got.len(), 2, "{r}");
    let (r4, r6) = (got[0], got[1]);
    assert_eq!((r4.ip().to_string(), r6.ip().to_string()), ("127.0.0.1".into(), "::1".into()));
    assert!(r.get(AttrType(ATTR_ADDRESS_ERROR_CODE)).is_err(), "both families allocated");
    let p4 = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let p6 = UdpSocket::bind("[::1]:0").await.unwrap();
    let (a4, a6) = (p4.local_addr().unwrap(), p6.local_addr().unwrap());
    let r = c
        .request(METHOD_CREATE_PERMISSION, &move |m| {
            peer_attr(m, a4);
            peer_attr(m, a6);
        })
        .await;
    assert_eq!(code(&r), None, "{r}");
    round_trip(&mut c, &p4, r4, b"to v4").await;
    round_trip(&mut c, &p6, r6, b"to v6").await;
    let r = c.request(METHOD_REFRESH, &|m| m.add(AttrType(ATTR_LIFETIME), &0u32.to_be_bytes())).await;
    assert_eq!(code(&r), None);
    // Both relay ports are free again.
    for relay in [r4, r6] {
        let mut bound = false;
        for _ in 0..50 {
            if std::net::UdpSocket::bind(relay).is_ok() {
                bound = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(bound, "relay {relay} still held after the allocation was deleted");
    }
    srv.stop().await.unwrap();
}

/// Cross-family, both ways: a client over IPv4 with an IPv6 relay, a client over IPv6 with an IPv4 relay.
#[tokio::test]
async fn relaying_across_families() {
    if !have_ipv6() {
        return;
    }
    let srv = TestServer::start(dual_config()).await;
    let v4_listener = srv.turn_udp.iter().copied().find(|a| a.is_ipv4()).unwrap();
    let v6_listener = srv.turn_udp.iter().copied().find(|a| a.is_ipv6()).unwrap();
    for (local, listener, v6) in [("127.0.0.1:0", v4_listener, true), ("[::1]:0", v6_listener, false)] {
        let mut c = client_on(local, listener, &srv).await;
        let r = c
            .request(METHOD_ALLOCATE, &|m| {
                m.add(AttrType(ATTR_REQUESTED_TRANSPORT), &[17, 0, 0, 0]);
                m.add(AttrType(ATTR_REQUESTED_ADDRESS_FAMILY), &[if v6 { 2 } else { 1 }, 0, 0, 0]);
            })
            .await;
        assert_eq!(code(&r), None, "{r}");
        let relay = relays(&r)[0];
        assert_eq!(relay.is_ipv6(), v6);
        let peer = UdpSocket::bind(if v6 { "[::1]:0" } else { "127.0.0.1:0" }).await.unwrap();
        let pa = peer.local_addr().unwrap();
        assert_eq!(code(&c.request(METHOD_CREATE_PERMISSION, &move |m| peer_attr(m, pa)).await), None);
        round_trip(&mut c, &peer, relay, b"across").await;
    }
    srv.stop().await.unwrap();
}

/// The welcome of a WebSocket opened like a browser on the page at `http://{http}/` (Origin = the page).
async fn welcome_over(http: SocketAddr) -> serde_json::Value {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{http}/ws").into_client_request().unwrap();
    req.headers_mut().insert("origin", format!("http://{http}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.expect("the page's own origin is allowed over IPv6");
    let hello = serde_json::json!({"type": "hello", "v": 1}).to_string();
    ws.send(tokio_tungstenite::tungstenite::Message::text(hello)).await.unwrap();
    loop {
        let m = tokio::time::timeout(T, ws.next()).await.unwrap().unwrap().unwrap();
        if let Ok(text) = m.to_text() {
            let v: serde_json::Value = serde_json::from_str(text).unwrap();
            if v["type"] == "welcome" {
                return v;
            }
        }
    }
}

fn urls(welcome: &serde_json::Value) -> Vec<String> {
    welcome["ice_servers"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["urls"].as_array().unwrap().iter().map(|u| u.as_str().unwrap().to_string()))
        .collect()
}

/// A dual-stack server hands every browser STUN/TURN URLs in both families (IPv6 literals bracketed), and a
/// page opened over IPv6 (`http://[::1]:port/`, the share link's origin) gets its WebSocket.
#[tokio::test]
async fn ice_servers_name_each_family_and_the_page_works_over_ipv6() {
    if !have_ipv6() {
        return;
    }
    let mut cfg = dual_config();
    cfg.http.listen = "[::1]:0".parse().unwrap();
    cfg.turn.external_ip = Some("198.51.100.10".parse().unwrap());
    cfg.turn.external_ip6 = Some("2001:db8::10".parse().unwrap());
    let srv = TestServer::start(cfg).await;
    let udp4 = srv.turn_udp.iter().find(|a| a.is_ipv4()).unwrap().port();
    let udp6 = srv.turn_udp.iter().find(|a| a.is_ipv6()).unwrap().port();
    let w = welcome_over(srv.http).await;
    let got = urls(&w);
    for want in [
        format!("stun:198.51.100.10:{udp4}"),
        format!("stun:[2001:db8::10]:{udp6}"),
        format!("turn:198.51.100.10:{udp4}?transport=udp"),
        format!("turn:[2001:db8::10]:{udp6}?transport=udp"),
    ] {
        assert!(got.contains(&want), "{want} missing from {got:?}");
    }
    // A port only the IPv6 listener has is not offered at the IPv4 address, and the reverse.
    assert!(!got.contains(&format!("stun:198.51.100.10:{udp6}")), "{got:?}");
    assert!(!got.contains(&format!("stun:[2001:db8::10]:{udp4}")), "{got:?}");
    srv.stop().await.unwrap();
}

/// A home reachable only over IPv6 (DS-Lite): its IPv6 address as `turn.external_ip`, a `[::]` listener. The
/// URLs name the IPv6 address only: the IPv4 side is the provider's CGNAT, nobody outside reaches it.
#[tokio::test]
async fn an_ipv6_only_home_hands_out_ipv6_urls_only() {
    if !have_ipv6() {
        return;
    }
    let mut cfg = dual_config();
    cfg.http.listen = "[::1]:0".parse().unwrap();
    cfg.turn.listen_udp = vec!["[::]:0".parse().unwrap()];
    cfg.turn.relay_ip = Some("::1".parse().unwrap());
    cfg.turn.relay_ip6 = None;
    cfg.turn.external_ip = Some("2001:db8:5::10".parse().unwrap());
    let srv = TestServer::start(cfg).await;
    let udp = srv.turn_udp[0].port();
    let got = urls(&welcome_over(srv.http).await);
    assert_eq!(got, [format!("stun:[2001:db8:5::10]:{udp}"), format!("turn:[2001:db8:5::10]:{udp}?transport=udp")]);
    srv.stop().await.unwrap();
}

/// Interop with coturn's client: `turnutils_uclient -x` asks for an IPv6 relay (REQUESTED-ADDRESS-FAMILY) and
/// echoes through `turnutils_peer` on `::1`, over a client connection of either family.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coturn_uclient_gets_an_ipv6_relay_and_echoes() {
    if !have_ipv6() || !common::require_tool("turnutils_uclient") || !common::require_tool("turnutils_peer") {
        return;
    }
    let srv = TestServer::start(dual_config()).await;
    let peer_port = std::net::UdpSocket::bind("[::1]:0").unwrap().local_addr().unwrap().port().to_string();
    let mut peer = std::process::Command::new("turnutils_peer")
        .args(["-L", "::1", "-p", &peer_port])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    for listener in [srv.turn_udp.iter().find(|a| a.is_ipv6()), srv.turn_udp.iter().find(|a| a.is_ipv4())] {
        let l = *listener.unwrap();
        let (host, port) = (l.ip().to_string(), l.port().to_string());
        let args = ["60", "turnutils_uclient", "-x", "-W", "test-secret-0123456789abcdef", "-e", "::1", "-r"]
            .into_iter()
            .map(String::from)
            .chain([peer_port.clone(), "-n".into(), "10".into(), "-m".into(), "1".into(), "-p".into(), port, host])
            .collect::<Vec<_>>();
        let out =
            tokio::task::spawn_blocking(move || std::process::Command::new("timeout").args(&args).output().unwrap())
                .await
                .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        let line = text
            .lines()
            .rev()
            .find(|l| l.contains("tot_send_msgs=") && !l.contains("msz="))
            .unwrap_or_else(|| panic!("no summary from uclient via {l}:\n{text}"));
        // uclient counts RTP and RTCP together (10 each). The peer listens on ::1 only and an IPv4 relay refuses
        // IPv6 peers (443), so every echo went through an IPv6 relay.
        assert!(line.contains("tot_send_msgs=20") && line.contains("tot_recv_msgs=20"), "via {l}: {line}\n{text}");
        assert!(text.contains("Total lost packets 0"), "via {l}:\n{text}");
    }
    let _ = peer.kill();
    let _ = peer.wait();
    srv.stop().await.unwrap();
}
