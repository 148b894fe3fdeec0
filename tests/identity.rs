//! Lasting identities, contacts and presence (docs/protocol.md, "Identities, contacts and presence") against the
//! real server on port 0. The test clients play browsers: they hold ECDSA P-256 keys (ring) and sign the server's
//! challenge the way WebCrypto does (raw r||s, base64url).

mod common;

use std::time::Duration;

use base64::Engine;
use common::ws::*;
use common::{test_config, TestServer};
use futures_util::StreamExt;
use ponte::config::Config;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// A browser profile's identity key.
struct Key(EcdsaKeyPair);

impl Key {
    fn new() -> Key {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        Key(EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap())
    }

    /// `exportKey("raw")`, base64url.
    fn public(&self) -> String {
        b64(self.0.public_key().as_ref())
    }

    fn sign(&self, bytes: &[u8]) -> String {
        b64(self.0.sign(&SystemRandom::new(), bytes).unwrap().as_ref())
    }

    /// What the web client signs: "ponte-identity-v1:" + challenge.
    fn prove(&self, challenge: &str) -> String {
        self.sign(format!("ponte-identity-v1:{challenge}").as_bytes())
    }
}

/// The whole identity handshake: hello{identity} -> identity_challenge -> identity_proof -> welcome.
async fn identity_client(srv: &TestServer, key: &Key, token: Option<&str>) -> Client {
    let mut ws = open(srv).await;
    let mut h = json!({"type": "hello", "v": 1, "identity": {"key": key.public()}});
    if let Some(t) = token {
        h["token"] = json!(t);
    }
    send(&mut ws, h).await;
    let ch = expect(&mut ws, "identity_challenge").await;
    let challenge = ch["challenge"].as_str().unwrap();
    assert_eq!(challenge.len(), 43, "{ch}");
    send(&mut ws, json!({"type": "identity_proof", "signature": key.prove(challenge)})).await;
    let welcome = expect(&mut ws, "welcome").await;
    assert_eq!(welcome["identity"]["key"], key.public(), "{welcome}");
    Client::from_welcome(ws, welcome)
}

async fn anonymous_client(srv: &TestServer, token: Option<&str>) -> Client {
    hello(open(srv).await, token).await
}

fn config_with_state(dir: &std::path::Path) -> Config {
    let mut c = test_config();
    c.signaling.state_dir = Some(dir.to_path_buf());
    c
}

/// Close a client's socket cleanly and give the server a moment to see it.
async fn leave(mut c: Client) {
    let _ = c.ws.close(None).await;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(500), c.ws.next()).await {}
}

#[tokio::test]
async fn a_key_keeps_its_id_across_visits_and_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (Key::new(), Key::new());
    let srv = TestServer::start(config_with_state(dir.path())).await;
    let a = identity_client(&srv, &alice, None).await;
    assert_eq!((a.welcome["resumed"].as_bool(), a.welcome["restored"].as_bool()), (Some(false), Some(false)));
    assert_eq!(a.welcome["contacts"], json!([]));
    assert_eq!(a.welcome["blocked"], json!([]));
    let id = a.id.clone();
    let b = identity_client(&srv, &bob, None).await;
    assert_ne!(b.id, id, "another key, another ID");
    leave(a).await;
    leave(b).await;
    // A later visit (no token: a new tab) gets the same ID, marked restored.
    let a = identity_client(&srv, &alice, None).await;
    assert_eq!(a.id, id);
    assert_eq!(a.welcome["restored"], true);
    leave(a).await;
    srv.stop().await.unwrap();
    assert!(dir.path().join("identities.redb").exists());

    // After a restart on the same state directory the binding is still there.
    let srv = TestServer::start(config_with_state(dir.path())).await;
    let a = identity_client(&srv, &alice, None).await;
    assert_eq!(a.id, id, "the ID survived the restart");
    assert_eq!(a.welcome["restored"], true);
    let b2 = identity_client(&srv, &bob, None).await;
    assert_ne!(b2.id, id);
    let gauge = srv.scrape().await.into_iter().find(|(k, _)| k == "ponte_signaling_identities").map(|(_, v)| v);
    assert_eq!(gauge, Some(2.0), "both bindings were loaded");
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn bad_keys_and_forged_proofs_get_clear_errors_and_no_id() {
    let srv = TestServer::start_default().await;
    let key = Key::new();

    // identity_proof before any hello.
    let mut ws = open(&srv).await;
    send(&mut ws, json!({"type": "identity_proof", "signature": "AAAA"})).await;
    expect_error(&mut ws, "bad_message").await;

    // A key that is not a raw P-256 point.
    send(&mut ws, json!({"type": "hello", "v": 1, "identity": {"key": b64(&[4u8; 33])}})).await;
    expect_error(&mut ws, "bad_key").await;
    assert_eq!(close_code(&mut ws).await, 1008);

    // Signed by another key (a forger who knows the public key only).
    let mut ws = open(&srv).await;
    send(&mut ws, json!({"type": "hello", "v": 1, "identity": {"key": key.public()}})).await;
    let ch = expect(&mut ws, "identity_challenge").await;
    // Anything but the proof now is refused, and the challenge stays valid.
    send(&mut ws, json!({"type": "connect", "to": "abcd2345"})).await;
    expect_error(&mut ws, "proof_required").await;
    send(&mut ws, json!({"type": "identity_proof", "signature": Key::new().prove(ch["challenge"].as_str().unwrap())}))
        .await;
    let e = expect_error(&mut ws, "bad_signature").await;
    assert_eq!(e["ref"], "identity_proof");
    assert_eq!(close_code(&mut ws).await, 1008);

    // The right key over the wrong bytes (the challenge without the prefix).
    let mut ws = open(&srv).await;
    send(&mut ws, json!({"type": "hello", "v": 1, "identity": {"key": key.public()}})).await;
    let ch = expect(&mut ws, "identity_challenge").await;
    let bare = key.sign(ch["challenge"].as_str().unwrap().as_bytes());
    send(&mut ws, json!({"type": "identity_proof", "signature": bare})).await;
    expect_error(&mut ws, "bad_signature").await;
    assert_eq!(close_code(&mut ws).await, 1008);

    // A signature replayed from another connection's challenge.
    let mut ws1 = open(&srv).await;
    send(&mut ws1, json!({"type": "hello", "v": 1, "identity": {"key": key.public()}})).await;
    let ch1 = expect(&mut ws1, "identity_challenge").await;
    let mut ws2 = open(&srv).await;
    send(&mut ws2, json!({"type": "hello", "v": 1, "identity": {"key": key.public()}})).await;
    expect(&mut ws2, "identity_challenge").await;
    send(&mut ws2, json!({"type": "identity_proof", "signature": key.prove(ch1["challenge"].as_str().unwrap())})).await;
    expect_error(&mut ws2, "bad_signature").await;

    // None of that bound the key: its first real proof is a first visit.
    let c = identity_client(&srv, &key, None).await;
    assert_eq!(c.welcome["restored"], false);
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn the_newest_tab_takes_over_the_identity() {
    let srv = TestServer::start_default().await;
    let key = Key::new();
    let mut tab1 = identity_client(&srv, &key, None).await;
    let mut friend = anonymous_client(&srv, None).await;
    send(&mut friend.ws, json!({"type": "connect", "to": tab1.id})).await;
    let inc = expect(&mut tab1.ws, "incoming").await;
    assert!(inc.get("peer_key").is_none(), "an anonymous requester has no key: {inc}");
    expect(&mut friend.ws, "request_sent").await;
    send(&mut tab1.ws, json!({"type": "accept", "from": friend.id})).await;
    let p = expect(&mut friend.ws, "paired").await;
    assert_eq!(p["peer_key"], key.public(), "the partner's identity key comes with paired: {p}");
    expect(&mut tab1.ws, "paired").await;

    let mut tab2 = identity_client(&srv, &key, None).await;
    assert_eq!(tab2.id, tab1.id);
    assert_eq!(tab2.welcome["restored"], true);
    assert_eq!(tab2.welcome["peers"], json!([]));
    assert_eq!(close_code(&mut tab1.ws).await, 4002);
    let left = expect(&mut friend.ws, "peer_left").await;
    assert_eq!(left["peer"], tab2.id.as_str());

    // The same tab coming back with its token resumes instead (its pairings kept).
    send(&mut friend.ws, json!({"type": "connect", "to": tab2.id})).await;
    expect(&mut tab2.ws, "incoming").await;
    expect(&mut friend.ws, "request_sent").await;
    send(&mut tab2.ws, json!({"type": "accept", "from": friend.id})).await;
    expect(&mut friend.ws, "paired").await;
    expect(&mut tab2.ws, "paired").await;
    let token = tab2.token.clone();
    leave(tab2).await;
    expect(&mut friend.ws, "peer_away").await;
    let tab2 = identity_client(&srv, &key, Some(&token)).await;
    assert_eq!(tab2.welcome["resumed"], true, "{}", tab2.welcome);
    assert_eq!(tab2.welcome["peers"], json!([friend.id]));
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn a_token_alone_never_brings_back_an_identitys_id() {
    let srv = TestServer::start_default().await;
    let key = Key::new();
    let a = identity_client(&srv, &key, None).await;
    let (id, token) = (a.id.clone(), a.token.clone());
    leave(a).await;
    // In the grace period and after: a plain hello with the identity session's token gets a fresh ID.
    let c = anonymous_client(&srv, Some(&token)).await;
    assert_ne!(c.id, id);
    assert_eq!((c.welcome["resumed"].as_bool(), c.welcome["restored"].as_bool()), (Some(false), Some(false)));
    assert!(c.welcome.get("identity").is_none() && c.welcome.get("contacts").is_none(), "{}", c.welcome);
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn presence_flows_only_between_mutual_contacts() {
    let mut cfg = test_config();
    cfg.signaling.reconnect_grace_secs = 1;
    let srv = TestServer::start(cfg).await;
    let (ka, kb) = (Key::new(), Key::new());
    let mut a = identity_client(&srv, &ka, None).await;
    let mut b = identity_client(&srv, &kb, None).await;

    // One-sided consent: A learns nothing about B's presence, B learns nothing at all.
    send(&mut a.ws, json!({"type": "contact_add", "id": b.id})).await;
    let c = expect(&mut a.ws, "contact").await;
    assert_eq!(c, json!({"type": "contact", "peer": b.id, "mutual": false, "online": false}));
    assert_silent(&mut b.ws, Duration::from_millis(300)).await;

    // Mutual: both see each other online.
    send(&mut b.ws, json!({"type": "contact_add", "id": a.id})).await;
    let c = expect(&mut b.ws, "contact").await;
    assert_eq!(c, json!({"type": "contact", "peer": a.id, "mutual": true, "online": true}));
    let p = expect(&mut a.ws, "presence").await;
    assert_eq!(p, json!({"type": "presence", "peer": b.id, "online": true}));

    // B leaves: after its grace period A sees it offline; when it comes back, online again.
    leave(b).await;
    let p = expect(&mut a.ws, "presence").await;
    assert_eq!(p["online"], false, "{p}");
    let mut b = identity_client(&srv, &kb, None).await;
    assert_eq!(b.welcome["contacts"], json!([{"peer": a.id, "mutual": true, "online": true}]));
    let p = expect(&mut a.ws, "presence").await;
    assert_eq!(p, json!({"type": "presence", "peer": b.id, "online": true}));

    // B opens a second tab: it takes the ID over, and A sees no flicker.
    let b2 = identity_client(&srv, &kb, None).await;
    assert_eq!(b2.id, b.id);
    assert_eq!(close_code(&mut b.ws).await, 4002);
    assert_silent(&mut a.ws, Duration::from_millis(300)).await;
    let mut b = b2;

    // A removes B: B sees A offline; A's own list no longer has B.
    send(&mut a.ws, json!({"type": "contact_remove", "id": b.id})).await;
    expect(&mut a.ws, "contact_removed").await;
    let p = expect(&mut b.ws, "presence").await;
    assert_eq!(p, json!({"type": "presence", "peer": a.id, "online": false}));
    leave(a).await;
    assert_silent(&mut b.ws, Duration::from_millis(1500)).await;

    // Contacts need identities on both sides.
    let mut anon = anonymous_client(&srv, None).await;
    send(&mut anon.ws, json!({"type": "contact_add", "id": b.id})).await;
    expect_error(&mut anon.ws, "identity_required").await;
    send(&mut b.ws, json!({"type": "contact_add", "id": anon.id})).await;
    let e = expect_error(&mut b.ws, "not_identity").await;
    assert_eq!(e["peer"], anon.id.as_str());
    send(&mut b.ws, json!({"type": "contact_add", "id": b.id})).await;
    expect_error(&mut b.ws, "not_identity").await;
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn a_blocked_identity_sees_the_blocker_as_offline() {
    let srv = TestServer::start_default().await;
    let (ka, kb) = (Key::new(), Key::new());
    let mut a = identity_client(&srv, &ka, None).await;
    let mut b = identity_client(&srv, &kb, None).await;
    send(&mut a.ws, json!({"type": "contact_add", "id": b.id})).await;
    expect(&mut a.ws, "contact").await;
    send(&mut b.ws, json!({"type": "contact_add", "id": a.id})).await;
    expect(&mut b.ws, "contact").await;
    expect(&mut a.ws, "presence").await;

    send(&mut a.ws, json!({"type": "block", "id": b.id})).await;
    expect(&mut a.ws, "blocked").await;
    let p = expect(&mut b.ws, "presence").await;
    assert_eq!(p["online"], false);
    send(&mut b.ws, json!({"type": "connect", "to": a.id})).await;
    let e = expect_error(&mut b.ws, "unknown_peer").await;
    assert_eq!(e["peer"], a.id.as_str());
    assert_silent(&mut a.ws, Duration::from_millis(300)).await;

    // The block is part of A's state at the next visit.
    let a_id = a.id.clone();
    leave(a).await;
    let mut a = identity_client(&srv, &ka, None).await;
    assert_eq!(a.id, a_id);
    assert_eq!(a.welcome["blocked"], json!([b.id]));
    assert_eq!(a.welcome["contacts"], json!([]));

    send(&mut a.ws, json!({"type": "unblock", "id": b.id})).await;
    expect(&mut a.ws, "unblocked").await;
    send(&mut b.ws, json!({"type": "connect", "to": a.id})).await;
    let inc = expect(&mut a.ws, "incoming").await;
    assert_eq!(inc["peer_key"], kb.public(), "a saved contact's key comes with incoming: {inc}");
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn new_identities_per_address_are_limited_but_returning_ones_are_not() {
    let mut cfg = test_config();
    cfg.signaling.identity_registrations_per_hour = 2;
    let srv = TestServer::start(cfg).await;
    let first = Key::new();
    identity_client(&srv, &first, None).await;
    identity_client(&srv, &Key::new(), None).await;
    let mut ws = open(&srv).await;
    let k = Key::new();
    send(&mut ws, json!({"type": "hello", "v": 1, "identity": {"key": k.public()}})).await;
    let ch = expect(&mut ws, "identity_challenge").await;
    send(&mut ws, json!({"type": "identity_proof", "signature": k.prove(ch["challenge"].as_str().unwrap())})).await;
    expect_error(&mut ws, "too_many_identities").await;
    assert_eq!(close_code(&mut ws).await, 1013);
    // A key the server knows is welcome, and the anonymous flow is untouched.
    let again = identity_client(&srv, &first, None).await;
    assert_eq!(again.welcome["restored"], true);
    anonymous_client(&srv, None).await;
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn identity_limits_follow_a_reload() {
    let mut cfg = test_config();
    cfg.signaling.identity_registrations_per_hour = 1;
    let srv = TestServer::start(cfg.clone()).await;
    identity_client(&srv, &Key::new(), None).await;
    let refused = |srv: &TestServer| {
        let srv_ws = srv.ws_url();
        async move {
            let (mut ws, _) = tokio_tungstenite::connect_async(srv_ws).await.unwrap();
            let k = Key::new();
            send(&mut ws, json!({"type": "hello", "v": 1, "identity": {"key": k.public()}})).await;
            let ch = expect(&mut ws, "identity_challenge").await;
            send(&mut ws, json!({"type": "identity_proof", "signature": k.prove(ch["challenge"].as_str().unwrap())}))
                .await;
            expect_error(&mut ws, "too_many_identities").await;
        }
    };
    refused(&srv).await;

    // More registrations per hour: applies at once.
    cfg.signaling.identity_registrations_per_hour = 5;
    let report = srv.ctx.reload(cfg.clone());
    assert_eq!(report.applied, ["signaling.identity_registrations_per_hour"]);
    identity_client(&srv, &Key::new(), None).await;

    // A lower total: the store is full with the two it holds.
    cfg.signaling.max_identities = 2;
    let report = srv.ctx.reload(cfg.clone());
    assert_eq!(report.applied, ["signaling.max_identities"]);
    refused(&srv).await;
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn contact_lookups_spend_the_connect_budget_and_an_unproven_hello_times_out() {
    let mut cfg = test_config();
    cfg.signaling.connect_requests_per_min = 2;
    let srv = TestServer::start(cfg).await;
    let mut a = identity_client(&srv, &Key::new(), None).await;
    // Two look-ups (whatever their answer), then the budget is spent: no scanning for registered IDs.
    send(&mut a.ws, json!({"type": "contact_add", "id": "abcd2345"})).await;
    expect_error(&mut a.ws, "not_identity").await;
    send(&mut a.ws, json!({"type": "block", "id": "abcd2346"})).await;
    expect_error(&mut a.ws, "not_identity").await;
    send(&mut a.ws, json!({"type": "contact_add", "id": "abcd2347"})).await;
    expect_error(&mut a.ws, "too_many_requests").await;
    send(&mut a.ws, json!({"type": "connect", "to": "abcd2347"})).await;
    expect_error(&mut a.ws, "too_many_requests").await;
    // Withdrawing needs no look-up: still answered.
    send(&mut a.ws, json!({"type": "contact_remove", "id": "abcd2345"})).await;
    expect(&mut a.ws, "contact_removed").await;

    // A challenge nobody answers: the connection goes at the hello deadline like a silent one.
    let mut ws = open(&srv).await;
    send(&mut ws, json!({"type": "hello", "v": 1, "identity": {"key": Key::new().public()}})).await;
    expect(&mut ws, "identity_challenge").await;
    loop {
        match tokio::time::timeout(Duration::from_secs(15), ws.next()).await.expect("closed within 15 s") {
            Some(Ok(Message::Close(Some(f)))) => {
                assert_eq!(u16::from(f.code), 1008);
                break;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected the close, got {other:?}"),
        }
    }
    srv.stop().await.unwrap();
}
