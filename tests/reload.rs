//! A reload (SIGHUP, here `Daemon::reload`) changes what the running server does for the keys the reload table calls
//! live, and keeps the running value for the ones it calls restart-only. The TURN keys are covered in tests/turn.rs,
//! the signaling rates, origins and ICE lists in tests/signaling.rs; these are the connection and session limits.

mod common;

use std::time::Duration;

use common::{connect_from, test_config, TestServer};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A WebSocket from loopback address `from`, or the HTTP status that refused it.
async fn ws_from(srv: &TestServer, from: &str) -> Result<Ws, u16> {
    let stream = connect_from(from, srv.http).await;
    match tokio_tungstenite::client_async(srv.ws_url(), stream).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("{e}"),
    }
}

/// Say hello and return the first answer (`welcome` or `error`).
async fn hello(ws: &mut Ws) -> Value {
    ws.send(Message::text(json!({"type": "hello", "v": 1}).to_string())).await.unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("an answer to hello") {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).unwrap(),
            Some(Ok(_)) => continue,
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn connection_and_session_limits_follow_a_reload() {
    let srv = TestServer::start(test_config()).await;
    let mut a = ws_from(&srv, "127.0.0.2").await.expect("first WebSocket");
    assert_eq!(hello(&mut a).await["type"], "welcome");
    let mut b = ws_from(&srv, "127.0.0.2").await.expect("second WebSocket before the reload");
    assert_eq!(hello(&mut b).await["type"], "welcome");

    let mut cfg = (*srv.ctx.live()).clone();
    cfg.signaling.max_connections_per_ip = 2;
    cfg.signaling.max_message_bytes = 4096;
    cfg.http.max_connections_per_ip = 3;
    cfg.http.listen = "127.0.0.1:1".parse().unwrap();
    let report = srv.ctx.reload(cfg);
    for key in ["signaling.max_connections_per_ip", "signaling.max_message_bytes", "http.max_connections_per_ip"] {
        assert!(report.applied.contains(&key), "{key} not applied: {report:?}");
    }
    assert_eq!(report.need_restart, ["http.listen"]);
    assert_ne!(srv.ctx.live().http.listen.port(), 1, "a restart-only key keeps its running value");

    // signaling.max_connections_per_ip: a third WebSocket from the same source is refused now.
    assert_eq!(ws_from(&srv, "127.0.0.2").await.err(), Some(429));
    // signaling.max_message_bytes: a new connection is told the new limit.
    let mut c = ws_from(&srv, "127.0.0.3").await.expect("another source");
    let w = hello(&mut c).await;
    assert_eq!(w["limits"]["max_message_bytes"], 4096, "{w}");
    drop(c);

    // http.max_connections_per_ip: three connections from 127.0.0.4 are held, a fourth is closed at once.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect_from("127.0.0.4", srv.http).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut fourth = connect_from("127.0.0.4", srv.http).await;
    let mut buf = [0u8; 8];
    let r = tokio::time::timeout(Duration::from_secs(2), fourth.read(&mut buf)).await;
    assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "the fourth connection was not refused after the reload");
    drop((a, b, held));
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn sessions_per_source_follow_a_reload() {
    let srv = TestServer::start(test_config()).await;
    let mut cfg = (*srv.ctx.live()).clone();
    cfg.signaling.max_sessions_per_ip = 1;
    assert!(srv.ctx.reload(cfg).applied.contains(&"signaling.max_sessions_per_ip"));
    let mut a = ws_from(&srv, "127.0.0.5").await.unwrap();
    assert_eq!(hello(&mut a).await["type"], "welcome");
    let mut b = ws_from(&srv, "127.0.0.5").await.unwrap();
    let answer = hello(&mut b).await;
    assert_eq!(answer["code"], "too_many_sessions", "{answer}");
    srv.stop().await.unwrap();
}
