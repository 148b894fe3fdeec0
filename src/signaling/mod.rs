//! WebSocket signaling at `/ws`. Placeholder until the hub lands.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio_util::sync::CancellationToken;

use crate::health::{Component, Status};
use crate::http::{text_response, Body};
use crate::server::Context;

pub struct Hub {
    ctx: Arc<Context>,
}

impl Hub {
    pub fn new(ctx: Arc<Context>) -> Arc<Hub> {
        Arc::new(Hub { ctx })
    }

    /// Handle `GET /ws` (WebSocket upgrade). `remote` is the client's address (socket or trusted proxy header).
    pub fn upgrade(self: &Arc<Self>, _req: Request<Incoming>, _remote: SocketAddr) -> Response<Body> {
        text_response(StatusCode::NOT_IMPLEMENTED, "signaling not implemented yet\n")
    }

    /// Background work (timeouts, grace expiry) until `shutdown`, then close every WebSocket cleanly.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> anyhow::Result<()> {
        self.ctx.health.set(Component::Signaling, Status::Ok);
        shutdown.cancelled().await;
        self.ctx.health.set(Component::Signaling, Status::Stopping);
        Ok(())
    }
}
