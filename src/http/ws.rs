//! The WebSocket handshake for `GET /ws` (RFC 6455 over hyper's upgrade): header checks, the accept key, the
//! subprotocol, and handing the upgraded stream to the signaling hub. Whether the client may connect at all
//! (Origin, limits) is the hub's decision (`Hub::admit`), so that signaling needs no HTTP library.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::{text_response, Body};
use crate::signaling::{Handshake, Hub, Io, SUBPROTOCOL};

/// Answer a WebSocket upgrade on `/ws`. `remote` is the client's address (socket or trusted proxy header), `tls`
/// whether the request came over ponte's TLS listener.
pub fn upgrade(hub: &Arc<Hub>, req: Request<Incoming>, remote: SocketAddr, tls: bool) -> Response<Body> {
    let headers = req.headers();
    if !is_websocket_upgrade(headers) {
        return text_response(StatusCode::BAD_REQUEST, "expected a WebSocket upgrade (Upgrade: websocket)\n");
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        let mut r = text_response(StatusCode::UPGRADE_REQUIRED, "unsupported WebSocket version; use 13\n");
        r.headers_mut().insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        return r;
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return text_response(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key\n");
    };
    let handshake = Handshake {
        remote,
        origin: headers.get(header::ORIGIN).map(HeaderValue::as_bytes),
        host: headers.get(header::HOST).and_then(|h| h.to_str().ok()),
        tls,
    };
    let admission = match hub.admit(&handshake) {
        Ok(a) => a,
        Err(refusal) => {
            let status = StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::FORBIDDEN);
            return text_response(status, refusal.text);
        }
    };
    let accept = derive_accept_key(key.as_bytes());
    let offers_subprotocol = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == SUBPROTOCOL);

    let on_upgrade = hyper::upgrade::on(req);
    hub.serve(admission, async move {
        match on_upgrade.await {
            Ok(u) => Some(Box::new(TokioIo::new(u)) as Box<dyn Io>),
            Err(e) => {
                tracing::debug!(%remote, "WebSocket upgrade failed: {e}");
                None
            }
        }
    });

    let mut resp = Response::new(Body::default());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if offers_subprotocol {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(SUBPROTOCOL));
    }
    resp
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    header_has_token(headers, header::CONNECTION, "upgrade") && header_has_token(headers, header::UPGRADE, "websocket")
}
