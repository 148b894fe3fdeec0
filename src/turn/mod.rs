//! Embedded STUN/TURN server (RFC 8489 / RFC 8656). Placeholder until the engine lands.

use std::net::{TcpListener, UdpSocket};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::health::{Component, Status};
use crate::server::Context;

/// Serve STUN/TURN on the given sockets until `shutdown`.
pub async fn serve(
    ctx: Arc<Context>,
    udp: Vec<UdpSocket>,
    tcp: Vec<TcpListener>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    for s in &udp {
        tracing::info!("STUN/TURN listening on udp://{}", s.local_addr()?);
    }
    for s in &tcp {
        tracing::info!("STUN/TURN listening on tcp://{}", s.local_addr()?);
    }
    ctx.health.set(Component::Turn, Status::Ok);
    shutdown.cancelled().await;
    ctx.health.set(Component::Turn, Status::Stopping);
    Ok(())
}
