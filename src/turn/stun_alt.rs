//! `turn.stun_alt_listen`: a second UDP port that answers STUN Binding requests and nothing else. It exists so
//! that a browser can ask two different destinations on this server for its public address from the same socket
//! (RFC 5780's mapping test, done by /diag): the same public port both times means the NAT maps independently of
//! the destination (direct connections can work), two ports mean a symmetric NAT (only the relay works).
//! Allocate, Refresh and everything else is ignored here: no new relay surface.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use super::codec;
use super::policy;
use super::Shell;

/// Answer Binding requests on `sock` until the shell stops. Answers share the core's per-source budget for
/// unsigned answers (`turn.unauthenticated_rate_per_ip`): this port must not become a reflector either.
pub(crate) async fn run(shell: Arc<Shell>, sock: tokio::net::UdpSocket) -> anyhow::Result<()> {
    let mut buf = vec![0u8; 1500];
    loop {
        let (n, from) = tokio::select! {
            _ = shell.shutdown.cancelled() => return Ok(()),
            r = sock.recv_from(&mut buf) => match r {
                Ok(x) => x,
                // ICMP errors from earlier answers and the like: the socket itself is fine.
                Err(_) => continue,
            },
        };
        let software = shell.core.limits().software;
        let Some(answer) = answer(&buf[..n], from, software.as_deref()) else { continue };
        if shell.core.may_answer_unsigned_to(from.ip(), Instant::now()) {
            super::send_datagrams(&sock, 1, |_| (from, &answer[..])).await;
        }
    }
}

/// The Binding success answer to `pkt` from `from`, or `None` for anything that is not a Binding request.
pub(crate) fn answer(pkt: &[u8], from: SocketAddr, software: Option<&str>) -> Option<Vec<u8>> {
    if codec::classify(pkt) != codec::Kind::Stun || codec::method_and_class(pkt) != (codec::METHOD_BINDING, 0) {
        return None;
    }
    let txid = codec::transaction_id(pkt);
    let client = SocketAddr::new(policy::canonical(from.ip()), from.port());
    Some(codec::binding_success(&txid, client, software, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_only() {
        let from: SocketAddr = "198.51.100.22:40000".parse().unwrap();
        let txid = [7u8; 12];
        let req = codec::message(codec::METHOD_BINDING, 0, txid).raw;
        let a = answer(&req, from, None).expect("a Binding request is answered");
        assert_eq!(codec::method_and_class(&a), (codec::METHOD_BINDING, 2));
        assert_eq!(codec::transaction_id(&a), txid);
        // An Allocate (or any other method) gets nothing: this port never relays.
        let alloc = codec::message(codec::METHOD_ALLOCATE, 0, txid).raw;
        assert!(answer(&alloc, from, None).is_none());
        assert!(answer(b"garbage that is not stun", from, None).is_none());
        // Responses are never answered (no ping-pong between two servers).
        let resp = codec::message(codec::METHOD_BINDING, 2, txid).raw;
        assert!(answer(&resp, from, None).is_none());
    }
}
