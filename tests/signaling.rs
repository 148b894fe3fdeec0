//! Signaling hub against the real server on port 0, driven by tokio-tungstenite clients (docs/protocol.md).

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use common::ws::*;
use common::{test_config, TestServer};
use futures_util::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use ponte::config::{Config, IceServerConfig, Secret};
use serde_json::{json, Value};
use sha1::Sha1;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// Open a WebSocket with extra request headers; `Err(status)` when the upgrade is refused.
async fn open_with(srv: &TestServer, headers: &[(&'static str, &str)]) -> Result<Ws, u16> {
    let mut req = srv.ws_url().into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(*k, v.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(WsError::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("unexpected WebSocket error: {e}"),
    }
}

async fn client(srv: &TestServer) -> Client {
    hello(open(srv).await, None).await
}

/// A and B with an accepted pairing (A initiated).
async fn paired(srv: &TestServer) -> (Client, Client) {
    let mut a = client(srv).await;
    let mut b = client(srv).await;
    send(&mut a.ws, json!({"type": "connect", "to": b.id})).await;
    expect(&mut b.ws, "incoming").await;
    expect(&mut a.ws, "request_sent").await;
    send(&mut b.ws, json!({"type": "accept", "from": a.id})).await;
    expect(&mut a.ws, "paired").await;
    expect(&mut b.ws, "paired").await;
    (a, b)
}

fn hmac_b64(secret: &str, username: &str) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn fast_config() -> Config {
    let mut c = test_config();
    c.signaling.request_timeout_secs = 1;
    c.signaling.reconnect_grace_secs = 1;
    c
}

const ALPHABET: &str = "23456789abcdefghjkmnpqrstuvwxyz";

/// Check a TURN REST credential the way coturn does: expiry in the username, HMAC recomputed here.
fn check_rest_credential(entry: &Value, secret: &str, id: &str, ttl: u64) {
    let username = entry["username"].as_str().expect("username");
    let (expiry, user_id) = username.split_once(':').expect("<expiry>:<id>");
    assert_eq!(user_id, id);
    let expiry: u64 = expiry.parse().unwrap();
    let now = unix_now();
    assert!(expiry >= now + ttl - 5 && expiry <= now + ttl + 5, "expiry {expiry} vs now {now} + ttl {ttl}");
    assert_eq!(entry["credential"].as_str().unwrap(), hmac_b64(secret, username), "credential must verify");
}

#[tokio::test]
async fn welcome_has_id_token_and_ice_servers_with_valid_credentials() {
    let srv = TestServer::start(test_config()).await;
    let c = client(&srv).await;
    let w = &c.welcome;
    assert_eq!(w["v"], 1);
    assert_eq!(c.id.len(), 8);
    assert!(c.id.chars().all(|ch| ALPHABET.contains(ch)), "{}", c.id);
    assert_eq!(w["display_id"], format!("{}-{}", &c.id[..4], &c.id[4..]));
    assert!(c.token.len() >= 20, "token too short to be unguessable");
    assert_eq!(w["resumed"], false);
    assert_eq!(w["peers"], json!([]));
    assert_eq!(
        w["limits"],
        json!({"max_message_bytes": 65536, "messages_per_sec": 50, "connect_requests_per_min": 20})
    );

    let udp = srv.turn_udp[0].port();
    let tcp = srv.turn_tcp[0].port();
    let ice = w["ice_servers"].as_array().unwrap();
    assert_eq!(ice.len(), 2, "{ice:?}");
    // No external_ip/public_url: the host the client used (Host: 127.0.0.1:port).
    assert_eq!(ice[0], json!({"urls": [format!("stun:127.0.0.1:{udp}")]}));
    assert_eq!(
        ice[1]["urls"],
        json!([format!("turn:127.0.0.1:{udp}?transport=udp"), format!("turn:127.0.0.1:{tcp}?transport=tcp")])
    );
    check_rest_credential(&ice[1], "test-secret-0123456789abcdef", &c.id, 86_400);
    let exp = w["ice_expires"].as_u64().unwrap();
    assert_eq!(ice[1]["username"].as_str().unwrap(), format!("{exp}:{}", c.id));

    // Fresh credentials on request.
    let mut c = c;
    send(&mut c.ws, json!({"type": "refresh_ice"})).await;
    let r = expect(&mut c.ws, "ice_servers").await;
    assert!(r["ice_expires"].as_u64().unwrap() >= exp);
    check_rest_credential(&r["ice_servers"][1], "test-secret-0123456789abcdef", &c.id, 86_400);

    // IDs are unique per client.
    let d = client(&srv).await;
    assert_ne!(d.id, c.id);
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn ice_servers_use_external_ip_ttl_and_extra_servers() {
    let mut cfg = test_config();
    cfg.turn.external_ip = Some("198.51.100.10".parse().unwrap());
    cfg.turn.credential_ttl_secs = 600;
    cfg.signaling.ice_servers = vec![
        IceServerConfig {
            urls: vec!["stun:stun.example.org:3478".into()],
            username: None,
            credential: None,
            secret: None,
        },
        IceServerConfig {
            urls: vec!["turn:turn.example.org:3478".into()],
            username: Some("static".into()),
            credential: Some(Secret::new("pw")),
            secret: None,
        },
        IceServerConfig {
            urls: vec!["turns:coturn.example.org:5349".into()],
            username: None,
            credential: None,
            secret: Some(Secret::new("external-coturn-secret")),
        },
    ];
    let srv = TestServer::start(cfg).await;
    let c = client(&srv).await;
    let ice = c.welcome["ice_servers"].as_array().unwrap();
    assert_eq!(ice.len(), 5, "{ice:?}");
    let udp = srv.turn_udp[0].port();
    assert_eq!(ice[0]["urls"][0], format!("stun:198.51.100.10:{udp}"));
    assert_eq!(ice[1]["urls"][0], format!("turn:198.51.100.10:{udp}?transport=udp"));
    check_rest_credential(&ice[1], "test-secret-0123456789abcdef", &c.id, 600);
    assert_eq!(ice[2], json!({"urls": ["stun:stun.example.org:3478"]}));
    assert_eq!(ice[3], json!({"urls": ["turn:turn.example.org:3478"], "username": "static", "credential": "pw"}));
    assert_eq!(ice[4]["urls"], json!(["turns:coturn.example.org:5349"]));
    check_rest_credential(&ice[4], "external-coturn-secret", &c.id, 600);
    srv.stop().await.unwrap();

    // TURN disabled: only the configured extras, and public_url's host is irrelevant.
    let mut cfg = test_config();
    cfg.turn.enabled = false;
    cfg.http.public_url = Some("https://chat.example.org".into());
    cfg.signaling.ice_servers = vec![IceServerConfig {
        urls: vec!["stun:stun.example.org".into()],
        username: None,
        credential: None,
        secret: None,
    }];
    let srv = TestServer::start(cfg).await;
    let c = client(&srv).await;
    assert_eq!(c.welcome["ice_servers"], json!([{"urls": ["stun:stun.example.org"]}]));
    srv.stop().await.unwrap();

    // public_url's host when there is no external_ip.
    let mut cfg = test_config();
    cfg.http.public_url = Some("https://Chat.Example.org:8443/app".into());
    let srv = TestServer::start(cfg).await;
    let c = client(&srv).await;
    assert_eq!(c.welcome["ice_servers"][0]["urls"][0], format!("stun:chat.example.org:{}", srv.turn_udp[0].port()));
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn subprotocol_selected_when_offered() {
    let srv = TestServer::start(test_config()).await;
    let mut req = srv.ws_url().into_client_request().unwrap();
    req.headers_mut().insert("sec-websocket-protocol", "ponte.v1".parse().unwrap());
    let (_ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.headers().get("sec-websocket-protocol").unwrap(), "ponte.v1");
    let (_ws, resp) = tokio_tungstenite::connect_async(srv.ws_url()).await.unwrap();
    assert!(resp.headers().get("sec-websocket-protocol").is_none());
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn full_flow_request_accept_offer_answer_candidates_bye() {
    let srv = TestServer::start(test_config()).await;
    let mut a = client(&srv).await;
    let mut b = client(&srv).await;

    // People type IDs grouped and in capitals; the server normalizes.
    let typed = format!("{}-{}", b.id[..4].to_uppercase(), &b.id[4..]);
    send(&mut a.ws, json!({"type": "connect", "to": typed})).await;
    assert_eq!(expect(&mut b.ws, "incoming").await["peer"], a.id);
    assert_eq!(expect(&mut a.ws, "request_sent").await["peer"], b.id);

    send(&mut b.ws, json!({"type": "accept", "from": a.id})).await;
    let pa = expect(&mut a.ws, "paired").await;
    assert_eq!((pa["peer"].as_str().unwrap(), pa["initiator"].as_bool().unwrap()), (b.id.as_str(), true));
    let pb = expect(&mut b.ws, "paired").await;
    assert_eq!((pb["peer"].as_str().unwrap(), pb["initiator"].as_bool().unwrap()), (a.id.as_str(), false));

    let offer = json!({"type": "offer", "sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n"});
    send(&mut a.ws, json!({"type": "signal", "to": b.id, "data": offer})).await;
    let got = expect(&mut b.ws, "signal").await;
    assert_eq!(got, json!({"type": "signal", "from": a.id, "data": offer}));

    let answer = json!({"type": "answer", "sdp": "v=0\r\n"});
    send(&mut b.ws, json!({"type": "signal", "to": a.id, "data": answer})).await;
    assert_eq!(expect(&mut a.ws, "signal").await["data"], answer);

    for i in 0..3 {
        let cand =
            json!({"candidate": format!("candidate:{i} 1 udp 2122260223 192.0.2.1 5000{i} typ host"), "sdpMid": "0"});
        send(&mut a.ws, json!({"type": "signal", "to": b.id, "data": cand})).await;
        send(&mut b.ws, json!({"type": "signal", "to": a.id, "data": cand})).await;
        assert_eq!(expect(&mut b.ws, "signal").await["data"], cand);
        assert_eq!(expect(&mut a.ws, "signal").await["data"], cand);
    }
    // Anything JSON is opaque payload, even null.
    send(&mut a.ws, json!({"type": "signal", "to": b.id, "data": null})).await;
    assert_eq!(expect(&mut b.ws, "signal").await["data"], Value::Null);

    send(&mut b.ws, json!({"type": "bye", "to": a.id})).await;
    let left = expect(&mut a.ws, "peer_left").await;
    assert_eq!((left["peer"].as_str().unwrap(), left["reason"].as_str().unwrap()), (b.id.as_str(), "bye"));
    // The pairing is over in both directions.
    send(&mut a.ws, json!({"type": "signal", "to": b.id, "data": 1})).await;
    expect_error(&mut a.ws, "not_paired").await;
    send(&mut b.ws, json!({"type": "bye", "to": a.id})).await;
    expect_error(&mut b.ws, "not_paired").await;
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn decline_tells_the_requester() {
    let srv = TestServer::start(test_config()).await;
    let mut a = client(&srv).await;
    let mut b = client(&srv).await;
    send(&mut a.ws, json!({"type": "connect", "to": b.id})).await;
    expect(&mut b.ws, "incoming").await;
    expect(&mut a.ws, "request_sent").await;
    send(&mut b.ws, json!({"type": "decline", "from": a.id})).await;
    assert_eq!(expect(&mut a.ws, "declined").await["peer"], b.id);
    // Declined means not paired, and the request is gone.
    send(&mut a.ws, json!({"type": "signal", "to": b.id, "data": "x"})).await;
    expect_error(&mut a.ws, "not_paired").await;
    send(&mut b.ws, json!({"type": "accept", "from": a.id})).await;
    let e = expect_error(&mut b.ws, "no_request").await;
    assert_eq!(e["ref"], "accept");
    assert_eq!(e["peer"], a.id);
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn unknown_and_self_and_duplicate_and_already_paired() {
    let srv = TestServer::start(test_config()).await;
    let mut a = client(&srv).await;
    let mut b = client(&srv).await;
    // A well-formed ID nobody holds (retry in the 1-in-10^11 case it collides).
    let mut offline = "22222222".to_string();
    if offline == a.id || offline == b.id {
        offline = "33333333".into();
    }
    send(&mut a.ws, json!({"type": "connect", "to": offline})).await;
    let e = expect_error(&mut a.ws, "unknown_peer").await;
    assert_eq!((e["ref"].as_str(), e["peer"].as_str()), (Some("connect"), Some(offline.as_str())));
    send(&mut a.ws, json!({"type": "connect", "to": "not an id!"})).await;
    expect_error(&mut a.ws, "unknown_peer").await;

    send(&mut a.ws, json!({"type": "connect", "to": a.id.to_uppercase()})).await;
    expect_error(&mut a.ws, "self_connect").await;

    send(&mut a.ws, json!({"type": "connect", "to": b.id})).await;
    expect(&mut a.ws, "request_sent").await;
    expect(&mut b.ws, "incoming").await;
    send(&mut a.ws, json!({"type": "connect", "to": b.id})).await;
    expect_error(&mut a.ws, "duplicate_request").await;
    // The other direction counts as the same pending request.
    send(&mut b.ws, json!({"type": "connect", "to": a.id})).await;
    expect_error(&mut b.ws, "duplicate_request").await;
    assert_silent(&mut b.ws, Duration::from_millis(200)).await;

    send(&mut b.ws, json!({"type": "accept", "from": a.id})).await;
    expect(&mut a.ws, "paired").await;
    expect(&mut b.ws, "paired").await;
    send(&mut b.ws, json!({"type": "connect", "to": a.id})).await;
    expect_error(&mut b.ws, "already_paired").await;
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn request_times_out() {
    let srv = TestServer::start(fast_config()).await;
    let mut a = client(&srv).await;
    let mut b = client(&srv).await;
    send(&mut a.ws, json!({"type": "connect", "to": b.id})).await;
    expect(&mut a.ws, "request_sent").await;
    expect(&mut b.ws, "incoming").await;
    let t0 = Instant::now();
    assert_eq!(expect(&mut a.ws, "request_timeout").await["peer"], b.id);
    assert!(t0.elapsed() >= Duration::from_millis(700), "timed out too early: {:?}", t0.elapsed());
    let c = expect(&mut b.ws, "incoming_cancelled").await;
    assert_eq!((c["peer"].as_str().unwrap(), c["reason"].as_str().unwrap()), (a.id.as_str(), "timeout"));
    send(&mut b.ws, json!({"type": "accept", "from": a.id})).await;
    expect_error(&mut b.ws, "no_request").await;
    // A new request is allowed after the timeout.
    send(&mut a.ws, json!({"type": "connect", "to": b.id})).await;
    expect(&mut a.ws, "request_sent").await;
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn cancel_by_requester() {
    let srv = TestServer::start(test_config()).await;
    let mut a = client(&srv).await;
    let mut b = client(&srv).await;
    send(&mut a.ws, json!({"type": "cancel", "to": b.id})).await;
    expect_error(&mut a.ws, "no_request").await;
    send(&mut a.ws, json!({"type": "connect", "to": b.id})).await;
    expect(&mut a.ws, "request_sent").await;
    expect(&mut b.ws, "incoming").await;
    send(&mut a.ws, json!({"type": "cancel", "to": b.id})).await;
    assert_eq!(expect(&mut a.ws, "request_cancelled").await["peer"], b.id);
    let c = expect(&mut b.ws, "incoming_cancelled").await;
    assert_eq!((c["peer"].as_str().unwrap(), c["reason"].as_str().unwrap()), (a.id.as_str(), "cancelled"));
    send(&mut b.ws, json!({"type": "accept", "from": a.id})).await;
    expect_error(&mut b.ws, "no_request").await;
    // Only the requester can cancel.
    send(&mut a.ws, json!({"type": "connect", "to": b.id})).await;
    expect(&mut a.ws, "request_sent").await;
    expect(&mut b.ws, "incoming").await;
    send(&mut b.ws, json!({"type": "cancel", "to": a.id})).await;
    expect_error(&mut b.ws, "no_request").await;
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn relay_refused_without_acceptance() {
    let srv = TestServer::start(test_config()).await;
    let mut a = client(&srv).await;
    let mut b = client(&srv).await;
    let mut c = client(&srv).await;
    send(&mut a.ws, json!({"type": "signal", "to": b.id, "data": {"sdp": "x"}})).await;
    let e = expect_error(&mut a.ws, "not_paired").await;
    assert_eq!((e["ref"].as_str(), e["peer"].as_str()), (Some("signal"), Some(b.id.as_str())));
    // Pending is not accepted.
    send(&mut a.ws, json!({"type": "connect", "to": b.id})).await;
    expect(&mut a.ws, "request_sent").await;
    expect(&mut b.ws, "incoming").await;
    send(&mut a.ws, json!({"type": "signal", "to": b.id, "data": {"sdp": "x"}})).await;
    expect_error(&mut a.ws, "not_paired").await;
    send(&mut b.ws, json!({"type": "signal", "to": a.id, "data": {"sdp": "x"}})).await;
    expect_error(&mut b.ws, "not_paired").await;
    // A pairing with B does not open a path to C.
    send(&mut b.ws, json!({"type": "accept", "from": a.id})).await;
    expect(&mut a.ws, "paired").await;
    expect(&mut b.ws, "paired").await;
    send(&mut a.ws, json!({"type": "signal", "to": c.id, "data": 1})).await;
    expect_error(&mut a.ws, "not_paired").await;
    assert_silent(&mut b.ws, Duration::from_millis(200)).await;
    assert_silent(&mut c.ws, Duration::from_millis(50)).await;
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn spoofed_from_is_ignored() {
    let srv = TestServer::start(test_config()).await;
    let (mut a, mut b) = paired(&srv).await;
    let c = client(&srv).await;
    send(&mut a.ws, json!({"type": "signal", "to": b.id, "from": c.id, "data": {"from": c.id}})).await;
    let s = expect(&mut b.ws, "signal").await;
    assert_eq!(s["from"], a.id, "server must stamp the real sender");
    assert_eq!(s["data"]["from"], c.id, "payload is opaque and untouched");
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn reconnect_with_token_keeps_id_and_pairing() {
    let mut cfg = test_config();
    cfg.signaling.reconnect_grace_secs = 30;
    let srv = TestServer::start(cfg).await;
    let (a, mut b) = paired(&srv).await;
    let (a_id, a_token) = (a.id.clone(), a.token.clone());
    drop(a.ws); // abrupt: TCP gone, no close frame
    assert_eq!(expect(&mut b.ws, "peer_away").await["peer"], a_id);
    // Signals to an away partner are refused, not silently lost.
    send(&mut b.ws, json!({"type": "signal", "to": a_id, "data": 1})).await;
    expect_error(&mut b.ws, "peer_away").await;

    let mut a2 = hello(open(&srv).await, Some(&a_token)).await;
    assert_eq!(a2.id, a_id);
    assert_eq!(a2.welcome["resumed"], true);
    assert_eq!(a2.welcome["peers"], json!([b.id]));
    // The token is renewed (a fresh issue time) but the old one keeps working for this session.
    assert_eq!(a2.token.split_once('.').unwrap().0, a_id);
    assert_eq!(expect(&mut b.ws, "peer_back").await["peer"], a_id);
    send(&mut b.ws, json!({"type": "signal", "to": a_id, "data": {"restart": true}})).await;
    assert_eq!(expect(&mut a2.ws, "signal").await["from"], b.id);
    send(&mut a2.ws, json!({"type": "signal", "to": b.id, "data": 2})).await;
    assert_eq!(expect(&mut b.ws, "signal").await["data"], 2);

    // A live connection is taken over by a resume: the old one is closed with 4001.
    let mut a3 = hello(open(&srv).await, Some(&a_token)).await;
    assert_eq!(a3.id, a_id);
    assert_eq!(close_code(&mut a2.ws).await, 4001);
    // B never saw A go away for that hand-over.
    send(&mut b.ws, json!({"type": "signal", "to": a_id, "data": 3})).await;
    assert_eq!(expect(&mut a3.ws, "signal").await["data"], 3);
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn resume_replays_pending_requests() {
    let mut cfg = test_config();
    cfg.signaling.reconnect_grace_secs = 30;
    let srv = TestServer::start(cfg).await;
    let a = client(&srv).await;
    let mut b = client(&srv).await;
    let mut c = client(&srv).await;
    // B asks A, then A drops; C asks A while A is away.
    send(&mut b.ws, json!({"type": "connect", "to": a.id})).await;
    expect(&mut b.ws, "request_sent").await;
    let (a_id, a_token) = (a.id.clone(), a.token.clone());
    drop(a.ws);
    tokio::time::sleep(Duration::from_millis(200)).await;
    send(&mut c.ws, json!({"type": "connect", "to": a_id})).await;
    expect(&mut c.ws, "request_sent").await;
    let mut a2 = hello(open(&srv).await, Some(&a_token)).await;
    assert_eq!(a2.welcome["resumed"], true);
    let mut got = vec![
        expect(&mut a2.ws, "incoming").await["peer"].clone(),
        expect(&mut a2.ws, "incoming").await["peer"].clone(),
    ];
    got.sort_by_key(|v| v.to_string());
    let mut want = vec![json!(b.id), json!(c.id)];
    want.sort_by_key(|v| v.to_string());
    assert_eq!(got, want);
    send(&mut a2.ws, json!({"type": "accept", "from": c.id})).await;
    expect(&mut c.ws, "paired").await;
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn wrong_token_never_takes_over_an_id() {
    let mut cfg = test_config();
    cfg.signaling.reconnect_grace_secs = 30;
    let srv = TestServer::start(cfg).await;
    let (a, mut b) = paired(&srv).await;
    let (a_id, a_token) = (a.id.clone(), a.token.clone());
    drop(a.ws);
    expect(&mut b.ws, "peer_away").await;

    // Right ID, wrong secret; then garbage; then another client's valid-looking token shape.
    let mut forged = a_token.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    for bad in [forged.as_str(), "garbage", &format!("{a_id}."), &a_id] {
        let x = hello(open(&srv).await, Some(bad)).await;
        assert_ne!(x.id, a_id, "token {bad:?} took over the ID");
        assert_eq!(x.welcome["resumed"], false);
        assert_eq!(x.welcome["peers"], json!([]));
    }
    assert_silent(&mut b.ws, Duration::from_millis(200)).await;
    // The real token still works.
    let a2 = hello(open(&srv).await, Some(&a_token)).await;
    assert_eq!(a2.id, a_id);
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn grace_expiry_gives_peer_left_and_a_fresh_id() {
    let mut cfg = fast_config();
    cfg.signaling.request_timeout_secs = 30;
    let srv = TestServer::start(cfg).await;
    let (a, mut b) = paired(&srv).await;
    let mut c = client(&srv).await;
    let (a_id, a_token) = (a.id.clone(), a.token.clone());
    // A also has a request pending to C.
    let mut a = a;
    send(&mut a.ws, json!({"type": "connect", "to": c.id})).await;
    expect(&mut a.ws, "request_sent").await;
    expect(&mut c.ws, "incoming").await;
    a.ws.close(None).await.unwrap();
    assert_eq!(expect(&mut b.ws, "peer_away").await["peer"], a_id);
    let left = expect(&mut b.ws, "peer_left").await;
    assert_eq!((left["peer"].as_str().unwrap(), left["reason"].as_str().unwrap()), (a_id.as_str(), "disconnected"));
    let ic = expect(&mut c.ws, "incoming_cancelled").await;
    assert_eq!((ic["peer"].as_str().unwrap(), ic["reason"].as_str().unwrap()), (a_id.as_str(), "left"));
    // The session is over: nobody can reach the ID.
    send(&mut b.ws, json!({"type": "connect", "to": a_id})).await;
    expect_error(&mut b.ws, "unknown_peer").await;
    // Its token brings the ID back (it is free), but nothing of the old session: no pairing, no request.
    let mut a2 = hello(open(&srv).await, Some(&a_token)).await;
    assert_eq!(a2.id, a_id);
    assert_eq!((&a2.welcome["resumed"], &a2.welcome["restored"]), (&json!(false), &json!(true)));
    assert_eq!(a2.welcome["peers"], json!([]));
    assert_silent(&mut a2.ws, Duration::from_millis(200)).await;
    send(&mut b.ws, json!({"type": "signal", "to": a_id, "data": 1})).await;
    expect_error(&mut b.ws, "not_paired").await;
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn target_leaving_ends_pending_request_for_requester() {
    let srv = TestServer::start(fast_config()).await;
    let mut a = client(&srv).await;
    let b = client(&srv).await;
    send(&mut a.ws, json!({"type": "connect", "to": b.id})).await;
    expect(&mut a.ws, "request_sent").await;
    let b_id = b.id.clone();
    drop(b.ws);
    // request_timeout is also 1 s here; whichever comes first, A must hear about B.
    let v = recv(&mut a.ws).await;
    assert!((v["type"] == "peer_left" && v["reason"] == "disconnected") || v["type"] == "request_timeout", "{v}");
    assert_eq!(v["peer"], b_id);
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn message_size_limit() {
    let mut cfg = test_config();
    cfg.signaling.max_message_bytes = 1024;
    let srv = TestServer::start(cfg).await;
    let (mut a, mut b) = paired(&srv).await;
    assert_eq!(a.welcome["limits"]["max_message_bytes"], 1024);
    // Just under the limit passes.
    let filler = "x".repeat(1024 - 80);
    let m = json!({"type": "signal", "to": b.id, "data": filler});
    assert!(m.to_string().len() <= 1024);
    send(&mut a.ws, m).await;
    expect(&mut b.ws, "signal").await;
    send(&mut a.ws, json!({"type": "signal", "to": b.id, "data": "y".repeat(2000)})).await;
    expect_error(&mut a.ws, "too_large").await;
    assert_eq!(close_code(&mut a.ws).await, 1009);
    assert_eq!(expect(&mut b.ws, "peer_away").await["peer"], a.id);
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn message_rate_limit() {
    let mut cfg = test_config();
    cfg.signaling.messages_per_sec = 2; // burst 4
    let srv = TestServer::start(cfg).await;
    let mut a = client(&srv).await; // hello used one token
    for i in 0..8 {
        send(&mut a.ws, json!({"type": "ping", "t": i})).await;
    }
    let mut pongs = 0;
    let mut limited = 0;
    for _ in 0..8 {
        let v = recv(&mut a.ws).await;
        match v["type"].as_str().unwrap() {
            "pong" => pongs += 1,
            "error" if v["code"] == "rate_limited" => limited += 1,
            _ => panic!("{v}"),
        }
    }
    assert!((3..=5).contains(&pongs), "pongs {pongs}");
    assert_eq!(pongs + limited, 8);
    // The connection stays open and recovers.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    send(&mut a.ws, json!({"type": "ping", "t": "after"})).await;
    assert_eq!(expect(&mut a.ws, "pong").await["t"], "after");
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn connect_request_rate_limit_stops_scanning() {
    let mut cfg = test_config();
    cfg.signaling.connect_requests_per_min = 3;
    let srv = TestServer::start(cfg).await;
    let mut a = client(&srv).await;
    let mut b = client(&srv).await;
    for guess in ["22222222", "33333333", "44444444"] {
        send(&mut a.ws, json!({"type": "connect", "to": guess})).await;
        expect_error(&mut a.ws, "unknown_peer").await;
    }
    // Even a real ID is refused now, without a lookup.
    send(&mut a.ws, json!({"type": "connect", "to": b.id})).await;
    let e = expect_error(&mut a.ws, "too_many_requests").await;
    assert_eq!(e["ref"], "connect");
    assert_silent(&mut b.ws, Duration::from_millis(200)).await;
    // Other messages still work.
    send(&mut a.ws, json!({"type": "ping"})).await;
    expect(&mut a.ws, "pong").await;
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn connections_per_ip_limit() {
    let mut cfg = test_config();
    cfg.signaling.max_connections_per_ip = 2;
    let srv = TestServer::start(cfg).await;
    let a = open(&srv).await;
    let _b = open(&srv).await;
    assert_eq!(open_with(&srv, &[]).await.err(), Some(429));
    // A slot frees when a connection ends.
    drop(a);
    let mut ok = false;
    for _ in 0..50 {
        if open_with(&srv, &[]).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "slot was not released after disconnect");
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn total_connections_limit() {
    let mut cfg = test_config();
    cfg.signaling.max_connections = 2;
    let srv = TestServer::start(cfg).await;
    let _a = open(&srv).await;
    let _b = open(&srv).await;
    assert_eq!(open_with(&srv, &[]).await.err(), Some(503));
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn forwarded_for_only_from_trusted_proxies() {
    // Untrusted: X-Forwarded-For is ignored, so different headers still count as one IP.
    let mut cfg = test_config();
    cfg.signaling.max_connections_per_ip = 1;
    let srv = TestServer::start(cfg.clone()).await;
    let _a = open_with(&srv, &[("x-forwarded-for", "203.0.113.1")]).await.unwrap();
    assert_eq!(open_with(&srv, &[("x-forwarded-for", "203.0.113.2")]).await.err(), Some(429));
    srv.stop().await.unwrap();

    // Trusted loopback proxy: the forwarded address is the client.
    cfg.http.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    let srv = TestServer::start(cfg).await;
    let _a = open_with(&srv, &[("x-forwarded-for", "203.0.113.1")]).await.unwrap();
    let _b = open_with(&srv, &[("x-forwarded-for", "203.0.113.2")]).await.unwrap();
    assert_eq!(open_with(&srv, &[("x-forwarded-for", "203.0.113.1")]).await.err(), Some(429));
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn binary_frames_refused_connection_stays() {
    let srv = TestServer::start(test_config()).await;
    let mut a = client(&srv).await;
    a.ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    expect_error(&mut a.ws, "binary_not_supported").await;
    send(&mut a.ws, json!({"type": "ping", "t": 7})).await;
    assert_eq!(expect(&mut a.ws, "pong").await["t"], 7);
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn origin_allow_list() {
    let mut cfg = test_config();
    cfg.http.allowed_origins = vec!["https://friend.example".into()];
    let srv = TestServer::start(cfg).await;
    assert_eq!(open_with(&srv, &[("origin", "http://evil.example")]).await.err(), Some(403));
    assert_eq!(open_with(&srv, &[("origin", "null")]).await.err(), Some(403));
    // Same host, other port: another origin.
    assert_eq!(open_with(&srv, &[("origin", "http://127.0.0.1:1")]).await.err(), Some(403));
    // The page's own origin (matches Host) and the configured one are fine.
    let own = format!("http://{}", srv.http);
    assert!(open_with(&srv, &[("origin", own.as_str())]).await.is_ok());
    assert!(open_with(&srv, &[("origin", "https://friend.example")]).await.is_ok());
    // DNS rebinding: a hostile page at evil.example, whose name now resolves to this server, presents
    // Origin == Host. Without public_url or allowed_origins naming it, a DNS name over plain HTTP is refused
    // (the old code accepted it); an https page is fine (its certificate proves the name).
    let port = srv.http.port();
    let (evil, evil_host) = (format!("http://evil.example:{port}"), format!("evil.example:{port}"));
    assert_eq!(open_with(&srv, &[("origin", evil.as_str()), ("host", evil_host.as_str())]).await.err(), Some(403));
    let (tls_page, host) = (format!("https://chat.example.org:{port}"), format!("chat.example.org:{port}"));
    assert!(open_with(&srv, &[("origin", tls_page.as_str()), ("host", host.as_str())]).await.is_ok());
    srv.stop().await.unwrap();

    let mut cfg = test_config();
    cfg.http.public_url = Some("https://chat.example.org".into());
    let srv = TestServer::start(cfg).await;
    assert!(open_with(&srv, &[("origin", "https://chat.example.org")]).await.is_ok());
    assert_eq!(open_with(&srv, &[("origin", "https://chat.example.org.evil.example")]).await.err(), Some(403));
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn malformed_input_answered_and_connection_stays_open() {
    let srv = TestServer::start(test_config()).await;
    let mut ws = open(&srv).await;
    // Before hello.
    send(&mut ws, json!({"type": "connect", "to": "22222222"})).await;
    assert_eq!(expect_error(&mut ws, "hello_required").await["ref"], "connect");
    ws.send(Message::text("{not json")).await.unwrap();
    expect_error(&mut ws, "bad_json").await;
    let mut a = hello(ws, None).await;

    ws_text(&mut a.ws, "[1,2,3]").await;
    expect_error(&mut a.ws, "bad_json").await;
    ws_text(&mut a.ws, "\"hello\"").await;
    expect_error(&mut a.ws, "bad_json").await;
    ws_text(&mut a.ws, "{\"no_type\":1}").await;
    expect_error(&mut a.ws, "bad_message").await;
    send(&mut a.ws, json!({"type": "teleport"})).await;
    let e = expect_error(&mut a.ws, "unknown_type").await;
    assert_eq!(e["ref"], "teleport");
    send(&mut a.ws, json!({"type": "connect"})).await;
    assert_eq!(expect_error(&mut a.ws, "bad_message").await["ref"], "connect");
    send(&mut a.ws, json!({"type": "signal", "to": 12})).await;
    assert_eq!(expect_error(&mut a.ws, "bad_message").await["ref"], "signal");
    send(&mut a.ws, json!({"type": "hello", "v": 1})).await;
    assert_eq!(expect_error(&mut a.ws, "bad_message").await["ref"], "hello");
    // Still alive and still the same client.
    send(&mut a.ws, json!({"type": "ping", "t": {"n": 1}})).await;
    assert_eq!(expect(&mut a.ws, "pong").await["t"], json!({"n": 1}));
    srv.stop().await.unwrap();
}

async fn ws_text(ws: &mut Ws, s: &str) {
    ws.send(Message::text(s.to_string())).await.unwrap();
}

#[tokio::test]
async fn unsupported_version_closes_1002() {
    let srv = TestServer::start(test_config()).await;
    let mut ws = open(&srv).await;
    send(&mut ws, json!({"type": "hello", "v": 2})).await;
    assert_eq!(expect_error(&mut ws, "unsupported_version").await["ref"], "hello");
    assert_eq!(close_code(&mut ws).await, 1002);
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn sessions_cap_gives_server_full() {
    let mut cfg = test_config();
    cfg.signaling.max_connections = 1; // sessions (live + in grace) are capped at twice that
    cfg.signaling.reconnect_grace_secs = 30;
    let srv = TestServer::start(cfg).await;
    for _ in 0..2 {
        let c = client(&srv).await;
        drop(c.ws);
        // Wait for the slot to free (the session stays, in its grace period).
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut ws = open(&srv).await;
    send(&mut ws, json!({"type": "hello", "v": 1})).await;
    expect_error(&mut ws, "server_full").await;
    assert_eq!(close_code(&mut ws).await, 1013);
    srv.stop().await.unwrap();
}

/// Security issue #7: a token older than `token_max_age_secs` does not resume a live session (the old code
/// resumed it and closed the owner with 4001); it counts as no token and gets a new ID.
#[tokio::test]
async fn an_expired_token_does_not_take_over_a_live_session() {
    let mut cfg = test_config();
    cfg.signaling.token_max_age_secs = 1;
    let srv = TestServer::start(cfg).await;
    let mut owner = client(&srv).await;
    let old_token = owner.token.clone();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let thief = hello(open(&srv).await, Some(&old_token)).await;
    assert_ne!(thief.id, owner.id, "an expired token took the ID over");
    assert_eq!(thief.welcome["resumed"], false);
    // The owner is still connected and served (renewed tokens may arrive meanwhile).
    send(&mut owner.ws, json!({"type": "ping", "t": 1})).await;
    loop {
        let v = recv(&mut owner.ws).await;
        if v["type"] == "pong" {
            break;
        }
        assert_eq!(v["type"], "tokens", "{v}");
    }
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_closes_sockets_with_1001() {
    let srv = TestServer::start(test_config()).await;
    let mut a = client(&srv).await;
    let stopping = tokio::spawn(srv.stop());
    assert_eq!(close_code(&mut a.ws).await, 1001);
    stopping.await.unwrap().unwrap();
}

/// Complete a WebSocket upgrade over raw TCP, send `hello`, read the welcome, then never read again — so
/// pings go unanswered, like a client whose network vanished.
async fn raw_dead_client(srv: &TestServer) -> (TcpStream, String) {
    let mut s = TcpStream::connect(srv.http).await.unwrap();
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        srv.http
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.unwrap();
        buf.push(byte[0]);
    }
    assert!(buf.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&buf));
    // A masked text frame (mask key 0 leaves the payload as is).
    let payload = br#"{"type":"hello","v":1}"#;
    let mut frame = vec![0x81, 0x80 | payload.len() as u8, 0, 0, 0, 0];
    frame.extend_from_slice(payload);
    s.write_all(&frame).await.unwrap();
    let mut head = [0u8; 2];
    s.read_exact(&mut head).await.unwrap();
    assert_eq!(head[0], 0x81);
    let len = match head[1] & 0x7f {
        126 => {
            let mut l = [0u8; 2];
            s.read_exact(&mut l).await.unwrap();
            u16::from_be_bytes(l) as usize
        }
        n => n as usize,
    };
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.unwrap();
    let welcome: Value = serde_json::from_slice(&body).unwrap();
    (s, welcome["id"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn dead_client_dropped_after_missed_pings_live_one_kept() {
    let mut cfg = fast_config();
    cfg.signaling.ping_interval_secs = 5;
    cfg.signaling.request_timeout_secs = 120;
    let srv = TestServer::start(cfg).await;
    let (mut dead, dead_id) = raw_dead_client(&srv).await;
    let t0 = Instant::now();

    // A live client that keeps reading (so tungstenite answers pings) must survive the same period.
    let mut live = client(&srv).await;
    send(&mut live.ws, json!({"type": "connect", "to": dead_id})).await;
    expect(&mut live.ws, "request_sent").await;
    // The dead client is dropped after two unanswered pings (10-15 s), then its 1 s grace runs out.
    let v = recv_within(&mut live.ws, Duration::from_secs(25)).await.expect("dead client was never dropped");
    assert_eq!(v["type"], "peer_left", "{v}");
    assert_eq!(v["peer"], dead_id);
    let took = t0.elapsed();
    assert!(took >= Duration::from_secs(9), "dropped before two pings went unanswered: {took:?}");
    assert!(took <= Duration::from_secs(24), "took too long: {took:?}");

    // The server closed the dead socket: reading now reaches EOF (after the pings it sent).
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(WAIT, dead.read_to_end(&mut sink)).await;
    assert!(closed.is_ok(), "server did not close the dead client's socket");
    // Unmasked server ping frames (0x89, empty payload) were sent and went unanswered.
    assert!(sink.windows(2).filter(|w| *w == [0x89, 0x00]).count() >= 2, "expected two pings, got {sink:?}");
    // The live client is still connected.
    send(&mut live.ws, json!({"type": "ping", "t": 1})).await;
    expect(&mut live.ws, "pong").await;
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn hello_must_come_within_ten_seconds_and_non_upgrade_refused() {
    let srv = TestServer::start(test_config()).await;
    let (status, _, _) = common::http_get(srv.http, "/ws", &[]).await;
    assert_eq!(status, 400);
    let mut ws = open(&srv).await;
    let t0 = Instant::now();
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(15), ws.next()).await.expect("closed within 15 s") {
            Some(Ok(Message::Close(Some(f)))) => break f.code,
            Some(Ok(_)) => continue,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(code, CloseCode::Policy);
    assert!(t0.elapsed() >= Duration::from_secs(9));
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn client_that_stops_reading_is_disconnected_not_buffered() {
    let mut cfg = test_config();
    cfg.signaling.messages_per_sec = 10_000;
    cfg.signaling.reconnect_grace_secs = 30;
    let srv = TestServer::start(cfg).await;
    let (mut a, b) = paired(&srv).await;
    // B never reads again. A floods it with large signals: the kernel buffers fill, then B's outbox exceeds its
    // byte budget and the server drops B instead of queueing without bound.
    let big = "z".repeat(60 * 1024);
    let msg = json!({"type": "signal", "to": b.id, "data": big}).to_string();
    let t0 = Instant::now();
    let mut away = None;
    for _ in 0..2000 {
        a.ws.send(Message::text(msg.clone())).await.unwrap();
        if let Some(v) = recv_within(&mut a.ws, Duration::from_millis(1)).await {
            away = Some(v);
            break;
        }
    }
    let v = match away {
        Some(v) => v,
        None => recv(&mut a.ws).await,
    };
    // Either B was dropped (peer_away) or A's later signals were refused because B is away already.
    assert!(v["type"] == "peer_away" || (v["type"] == "error" && v["code"] == "peer_away"), "{v}");
    assert_eq!(v["peer"], b.id);
    assert!(t0.elapsed() < Duration::from_secs(20));
    drop(b);
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn reload_applies_limits_origins_and_ice_to_new_connections() {
    let srv = TestServer::start(test_config()).await;
    let mut old = client(&srv).await;
    assert_eq!(open_with(&srv, &[("origin", "https://friend.example")]).await.err(), Some(403));

    let mut new_cfg = (*srv.ctx.live()).clone();
    new_cfg.signaling.messages_per_sec = 7;
    new_cfg.signaling.connect_requests_per_min = 3;
    new_cfg.turn.credential_ttl_secs = 300;
    new_cfg.http.allowed_origins = vec!["https://friend.example".into()];
    new_cfg.signaling.ice_servers = vec![IceServerConfig {
        urls: vec!["stun:extra.example.org".into()],
        username: None,
        credential: None,
        secret: None,
    }];
    let report = srv.ctx.reload(new_cfg);
    assert!(report.applied.contains(&"signaling.messages_per_sec"), "{report:?}");

    let ws = open_with(&srv, &[("origin", "https://friend.example")]).await.expect("origin allowed after reload");
    let c = hello(ws, None).await;
    assert_eq!(c.welcome["limits"]["messages_per_sec"], 7);
    assert_eq!(c.welcome["limits"]["connect_requests_per_min"], 3);
    let ice = c.welcome["ice_servers"].as_array().unwrap();
    assert_eq!(ice.last().unwrap(), &json!({"urls": ["stun:extra.example.org"]}));
    check_rest_credential(&ice[1], "test-secret-0123456789abcdef", &c.id, 300);
    // An existing connection keeps its limits but fresh credentials follow the new TTL.
    send(&mut old.ws, json!({"type": "refresh_ice"})).await;
    let r = expect(&mut old.ws, "ice_servers").await;
    check_rest_credential(&r["ice_servers"][1], "test-secret-0123456789abcdef", &old.id, 300);
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn metrics_count_connections_relays_errors_and_refusals() {
    let srv = TestServer::start(test_config()).await;
    let (mut a, mut b) = paired(&srv).await;
    send(&mut a.ws, json!({"type": "signal", "to": b.id, "data": 1})).await;
    expect(&mut b.ws, "signal").await;
    ws_text(&mut a.ws, "nope").await;
    expect_error(&mut a.ws, "bad_json").await;
    assert_eq!(open_with(&srv, &[("origin", "http://evil.example")]).await.err(), Some(403));
    let m = srv.scrape().await;
    let v = |s: &str| ponte::metrics::value_of(&m, s).unwrap_or_else(|| panic!("no series {s} in {m:?}"));
    assert_eq!(v("ponte_signaling_connections"), 2.0);
    assert_eq!(v("ponte_signaling_sessions"), 2.0);
    assert_eq!(v("ponte_signaling_relayed_total"), 1.0);
    assert_eq!(v("ponte_signaling_errors_total{code=\"bad_json\"}"), 1.0);
    assert_eq!(v("ponte_signaling_upgrades_refused_total{reason=\"origin\"}"), 1.0);
    assert!(v("ponte_signaling_messages_total") >= 5.0);
    assert_eq!(v("ponte_signaling_pairings"), 1.0);
    assert_eq!(v("ponte_signaling_messages_by_type_total{type=\"hello\"}"), 2.0);
    assert_eq!(v("ponte_signaling_messages_by_type_total{type=\"connect\"}"), 1.0);
    assert_eq!(v("ponte_signaling_messages_by_type_total{type=\"accept\"}"), 1.0);
    assert_eq!(v("ponte_signaling_messages_by_type_total{type=\"signal\"}"), 1.0);
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn pairing_accepted_while_requester_away_is_replayed_on_resume() {
    let mut cfg = test_config();
    cfg.signaling.reconnect_grace_secs = 30;
    let srv = TestServer::start(cfg).await;
    let mut a = client(&srv).await;
    let mut b = client(&srv).await;
    send(&mut a.ws, json!({"type": "connect", "to": b.id})).await;
    expect(&mut a.ws, "request_sent").await;
    expect(&mut b.ws, "incoming").await;
    let (a_id, a_token) = (a.id.clone(), a.token.clone());
    drop(a.ws);
    tokio::time::sleep(Duration::from_millis(200)).await;
    send(&mut b.ws, json!({"type": "accept", "from": a_id})).await;
    let p = expect(&mut b.ws, "paired").await;
    assert_eq!(p["initiator"], false);
    // A is away, so B learns that right after.
    assert_eq!(expect(&mut b.ws, "peer_away").await["peer"], a_id);

    let mut a2 = hello(open(&srv).await, Some(&a_token)).await;
    assert_eq!(a2.welcome["peers"], json!([b.id]));
    let p = expect(&mut a2.ws, "paired").await;
    assert_eq!((p["peer"].as_str().unwrap(), p["initiator"].as_bool().unwrap()), (b.id.as_str(), true));
    // No stale request_sent: the request is no longer pending.
    assert_silent(&mut a2.ws, Duration::from_millis(200)).await;
    assert_eq!(expect(&mut b.ws, "peer_back").await["peer"], a_id);
    srv.stop().await.unwrap();
}

// ---------------------------------------------------------------- restarts: tokens and pairing tickets

/// A config whose signaling key lives in `dir` (and no TURN secret, so only the key file can carry IDs over).
fn state_config(dir: &std::path::Path) -> Config {
    let mut c = test_config();
    c.turn.secret = None;
    c.signaling.state_dir = Some(dir.join("state"));
    c
}

/// A and B paired (A initiated); returns them with the ticket both received.
async fn paired_with_ticket(srv: &TestServer) -> (Client, Client, String) {
    let mut a = client(srv).await;
    let mut b = client(srv).await;
    send(&mut a.ws, json!({"type": "connect", "to": b.id})).await;
    expect(&mut b.ws, "incoming").await;
    expect(&mut a.ws, "request_sent").await;
    send(&mut b.ws, json!({"type": "accept", "from": a.id})).await;
    let pa = expect(&mut a.ws, "paired").await;
    let pb = expect(&mut b.ws, "paired").await;
    let ticket = pa["ticket"].as_str().expect("paired carries a ticket").to_string();
    assert_eq!(pb["ticket"], ticket, "both partners hold the same ticket");
    (a, b, ticket)
}

#[tokio::test]
async fn ids_and_pairings_survive_a_restart_with_the_state_dir() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(state_config(dir.path())).await;
    let key_file = dir.path().join("state").join("signaling.key");
    assert_eq!(srv.ctx.signaling_key_source, ponte::signaling::keys::KeySource::File(key_file.clone()));
    assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600, "the key is private");
    let (a, b, ticket) = paired_with_ticket(&srv).await;
    let (a_id, a_token, b_id, b_token) = (a.id.clone(), a.token.clone(), b.id.clone(), b.token.clone());
    drop((a, b));
    srv.stop().await.unwrap();

    // A new process, same state dir.
    let srv = TestServer::start(state_config(dir.path())).await;
    let mut a = hello(open(&srv).await, Some(&a_token)).await;
    assert_eq!(a.id, a_id, "the token restores the ID");
    assert_eq!((&a.welcome["resumed"], &a.welcome["restored"]), (&json!(false), &json!(true)));
    assert_eq!(a.welcome["peers"], json!([]));
    // A presents the ticket before B is even back: it waits.
    send(&mut a.ws, json!({"type": "rejoin", "to": b_id, "ticket": ticket})).await;
    assert_eq!(expect(&mut a.ws, "rejoin_waiting").await["peer"], b_id);
    let mut b = hello(open(&srv).await, Some(&b_token)).await;
    assert_eq!(b.id, b_id);
    assert_eq!(b.welcome["restored"], true);
    assert_silent(&mut b.ws, Duration::from_millis(200)).await;
    // B presents it too: paired at once, roles as before, no request to accept on either side.
    send(&mut b.ws, json!({"type": "rejoin", "to": a_id, "ticket": ticket})).await;
    let pa = expect(&mut a.ws, "paired").await;
    let pb = expect(&mut b.ws, "paired").await;
    assert_eq!((&pa["peer"], &pa["initiator"]), (&json!(b_id), &json!(true)));
    assert_eq!((&pb["peer"], &pb["initiator"]), (&json!(a_id), &json!(false)));
    assert!(pa["ticket"].as_str().is_some_and(|t| !t.is_empty()));
    send(&mut a.ws, json!({"type": "signal", "to": b_id, "data": {"ice": "restart"}})).await;
    assert_eq!(expect(&mut b.ws, "signal").await["data"]["ice"], "restart");
    // Presenting it again changes nothing.
    send(&mut b.ws, json!({"type": "rejoin", "to": a_id, "ticket": ticket})).await;
    expect_error(&mut b.ws, "already_paired").await;
    assert_silent(&mut a.ws, Duration::from_millis(200)).await;
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn forged_tokens_and_wrong_tickets_are_harmless_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    // A token from a server with another key.
    let other = TestServer::start(state_config(other_dir.path())).await;
    let foreign = client(&other).await;
    other.stop().await.unwrap();

    let srv = TestServer::start(state_config(dir.path())).await;
    let (a, b, ticket) = paired_with_ticket(&srv).await;
    let c = client(&srv).await;
    let (a_id, b_id, c_id) = (a.id.clone(), b.id.clone(), c.id.clone());
    let tokens = [a.token.clone(), b.token.clone(), c.token.clone()];
    drop((a, b, c));
    srv.stop().await.unwrap();

    let srv = TestServer::start(state_config(dir.path())).await;
    // A's token with C's ID in front, a bit flipped in the MAC, garbage, another server's token: fresh IDs.
    let (_, body) = tokens[0].split_once('.').unwrap();
    let mut flipped = tokens[0].clone().into_bytes();
    flipped[12] = if flipped[12] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    for bad in [format!("{c_id}.{body}"), flipped, "garbage".into(), foreign.token.clone()] {
        let x = hello(open(&srv).await, Some(&bad)).await;
        assert!(![&a_id, &b_id, &c_id, &foreign.id].contains(&&x.id), "token {bad:?} restored {}", x.id);
        assert_eq!((&x.welcome["resumed"], &x.welcome["restored"]), (&json!(false), &json!(false)));
    }
    let mut a = hello(open(&srv).await, Some(&tokens[0])).await;
    let mut b = hello(open(&srv).await, Some(&tokens[1])).await;
    let mut c = hello(open(&srv).await, Some(&tokens[2])).await;
    assert_eq!((a.id.as_str(), b.id.as_str(), c.id.as_str()), (a_id.as_str(), b_id.as_str(), c_id.as_str()));

    // C holds A and B's ticket but is neither of them.
    for to in [&a_id, &b_id] {
        send(&mut c.ws, json!({"type": "rejoin", "to": to, "ticket": ticket})).await;
        let e = expect_error(&mut c.ws, "bad_ticket").await;
        assert_eq!(e["ref"], "rejoin");
    }
    // A with that ticket toward C, a forged ticket, a malformed message.
    send(&mut a.ws, json!({"type": "rejoin", "to": c_id, "ticket": ticket})).await;
    expect_error(&mut a.ws, "bad_ticket").await;
    let mut forged = ticket.clone().into_bytes();
    forged[3] = if forged[3] == b'A' { b'B' } else { b'A' };
    send(&mut a.ws, json!({"type": "rejoin", "to": b_id, "ticket": String::from_utf8(forged).unwrap()})).await;
    expect_error(&mut a.ws, "bad_ticket").await;
    send(&mut a.ws, json!({"type": "rejoin", "to": b_id})).await;
    expect_error(&mut a.ws, "bad_message").await;
    assert_silent(&mut b.ws, Duration::from_millis(200)).await;
    assert_silent(&mut c.ws, Duration::from_millis(100)).await;

    // One side alone cannot re-pair: B has not presented, so A waits and B hears nothing.
    send(&mut a.ws, json!({"type": "rejoin", "to": b_id, "ticket": ticket})).await;
    expect(&mut a.ws, "rejoin_waiting").await;
    assert_silent(&mut b.ws, Duration::from_millis(300)).await;
    send(&mut a.ws, json!({"type": "signal", "to": b_id, "data": 1})).await;
    expect_error(&mut a.ws, "not_paired").await;
    // A plain connect between them still asks B, as always.
    send(&mut a.ws, json!({"type": "connect", "to": b_id})).await;
    expect(&mut b.ws, "incoming").await;
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn old_tokens_and_tickets_do_not_restore_and_live_clients_get_fresh_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = state_config(dir.path());
    cfg.signaling.token_max_age_secs = 4;
    let srv = TestServer::start(cfg.clone()).await;
    let lone = client(&srv).await;
    let (mut a, mut b, old_ticket) = paired_with_ticket(&srv).await;
    // Connected clients are handed a fresh token and tickets at half the maximum age.
    let latest = |v: Value, into: &mut (String, String)| {
        assert_eq!(v["type"], "tokens", "{v}");
        into.0 = v["token"].as_str().unwrap().to_string();
        into.1 = v["tickets"][0]["ticket"].as_str().unwrap().to_string();
    };
    let (mut fa, mut fb) = (Default::default(), Default::default());
    let deadline = Instant::now() + Duration::from_millis(4500);
    while Instant::now() < deadline {
        if let Some(v) = recv_within(&mut a.ws, Duration::from_millis(100)).await {
            latest(v, &mut fa);
        }
        if let Some(v) = recv_within(&mut b.ws, Duration::from_millis(100)).await {
            latest(v, &mut fb);
        }
    }
    assert!(!fa.0.is_empty() && !fb.0.is_empty(), "no tokens message within 4.5 s");
    assert_eq!(fa.0.split_once('.').unwrap().0, a.id);
    drop((lone.ws, a.ws, b.ws));
    srv.stop().await.unwrap();
    // Now the first token and ticket are at least 6 s old, the renewed ones (issued at 4 s) at most 3 s.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let srv = TestServer::start(cfg).await;
    // The lone client's token is too old: a fresh ID.
    let x = hello(open(&srv).await, Some(&lone.token)).await;
    assert_ne!(x.id, lone.id, "a token past signaling.token_max_age_secs must not restore its ID");
    assert_eq!(x.welcome["restored"], false);
    // A and B's renewed tokens are young enough.
    let mut a2 = hello(open(&srv).await, Some(&fa.0)).await;
    let mut b2 = hello(open(&srv).await, Some(&fb.0)).await;
    assert_eq!((a2.id.as_str(), b2.id.as_str()), (a.id.as_str(), b.id.as_str()));
    // The ticket from the pairing is too old; the renewed one works.
    send(&mut a2.ws, json!({"type": "rejoin", "to": b.id, "ticket": old_ticket})).await;
    expect_error(&mut a2.ws, "bad_ticket").await;
    send(&mut a2.ws, json!({"type": "rejoin", "to": b.id, "ticket": fa.1})).await;
    expect(&mut a2.ws, "rejoin_waiting").await;
    send(&mut b2.ws, json!({"type": "rejoin", "to": a.id, "ticket": fb.1})).await;
    assert_eq!(expect(&mut a2.ws, "paired").await["initiator"], true);
    assert_eq!(expect(&mut b2.ws, "paired").await["initiator"], false);
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn key_from_turn_secret_or_random() {
    use ponte::signaling::keys::KeySource;
    // No state dir, a configured TURN secret: the key is derived from it and IDs survive.
    let cfg = test_config();
    let srv = TestServer::start(cfg.clone()).await;
    assert_eq!(srv.ctx.signaling_key_source, KeySource::TurnSecret);
    let a = client(&srv).await;
    srv.stop().await.unwrap();
    let srv = TestServer::start(cfg).await;
    assert_eq!(hello(open(&srv).await, Some(&a.token)).await.id, a.id);
    srv.stop().await.unwrap();

    // Neither: a random key per run, so a restart hands out new IDs.
    let mut cfg = test_config();
    cfg.turn.secret = None;
    let srv = TestServer::start(cfg.clone()).await;
    assert_eq!(srv.ctx.signaling_key_source, KeySource::Random);
    let a = client(&srv).await;
    srv.stop().await.unwrap();
    let srv = TestServer::start(cfg).await;
    let a2 = hello(open(&srv).await, Some(&a.token)).await;
    assert_ne!(a2.id, a.id);
    assert_eq!(a2.welcome["restored"], false);
    srv.stop().await.unwrap();
}
