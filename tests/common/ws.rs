//! A test client's WebSocket to `/ws`: open, send JSON, receive JSON with deadlines, expect a type or an error code,
//! and read the close code. Shared by the signaling and identity tests.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::TestServer;

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a test waits for an expected message.
pub const WAIT: Duration = Duration::from_secs(5);

pub async fn open(srv: &TestServer) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(srv.ws_url()).await.expect("WebSocket connect");
    ws
}

pub async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.expect("send");
}

/// Next JSON message (pings are answered by tungstenite while we poll); panics after 5 s.
pub async fn recv(ws: &mut Ws) -> Value {
    recv_within(ws, WAIT).await.expect("expected a message within 5 s")
}

pub async fn recv_within(ws: &mut Ws, d: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + d;
    loop {
        let m = tokio::time::timeout_at(deadline, ws.next()).await.ok()?;
        match m {
            Some(Ok(Message::Text(t))) => return Some(serde_json::from_str(&t).expect("server sent JSON")),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

/// The close code the server ends the connection with (after any messages, which are skipped).
pub async fn close_code(ws: &mut Ws) -> u16 {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.expect("close within 5 s") {
            Some(Ok(Message::Close(Some(f)))) => return u16::from(f.code),
            Some(Ok(Message::Close(None))) => return 1005,
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("connection failed instead of closing cleanly: {e}"),
            None => panic!("connection ended without a close frame"),
        }
    }
}

pub async fn expect(ws: &mut Ws, ty: &str) -> Value {
    let v = recv(ws).await;
    assert_eq!(v["type"], ty, "expected {ty}, got {v}");
    v
}

pub async fn expect_error(ws: &mut Ws, code: &str) -> Value {
    let v = expect(ws, "error").await;
    assert_eq!(v["code"], code, "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    v
}

/// Nothing arrives within `d`.
pub async fn assert_silent(ws: &mut Ws, d: Duration) {
    if let Some(v) = recv_within(ws, d).await {
        panic!("expected silence, got {v}");
    }
}

/// One test client: a WebSocket plus what its welcome said.
pub struct Client {
    pub ws: Ws,
    pub id: String,
    pub token: String,
    pub welcome: Value,
}

impl Client {
    pub fn from_welcome(ws: Ws, welcome: Value) -> Client {
        Client {
            id: welcome["id"].as_str().unwrap().to_string(),
            token: welcome["token"].as_str().unwrap().to_string(),
            ws,
            welcome,
        }
    }
}

/// Say hello on `ws` (with a token: resume or restore that ID) and wait for the welcome.
pub async fn hello(mut ws: Ws, token: Option<&str>) -> Client {
    let mut h = json!({"type": "hello", "v": 1});
    if let Some(t) = token {
        h["token"] = json!(t);
    }
    send(&mut ws, h).await;
    let welcome = expect(&mut ws, "welcome").await;
    Client::from_welcome(ws, welcome)
}
