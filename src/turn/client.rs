//! A minimal TURN client over UDP (Allocate with the long-term-credential dance, CreatePermission, Send/Data indications, Refresh): what the relay self-test needs.
//!
//! It talks to our own server only, so it is deliberately small: one allocation per socket, UDP relays,
//! retransmission with a doubling timeout (RFC 8489 §6.2.1) bounded by an overall deadline.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use stun::attributes::AttrType;
use stun::integrity::MessageIntegrity;
use stun::message::{Getter, Message, Setter};
use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::codec::{self, *};

/// Why a client operation failed. The self-test turns each into advice, so the kinds stay distinct.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no answer from {server} within {}s", .waited.as_secs_f32())]
    Timeout { server: SocketAddr, waited: Duration },
    #[error("{method} refused with {code} {reason}")]
    Refused { method: &'static str, code: u16, reason: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("unexpected answer: {0}")]
    Malformed(&'static str),
}

/// A TURN client on one UDP socket, holding at most one allocation.
pub struct Client {
    sock: UdpSocket,
    server: SocketAddr,
    user: String,
    pass: String,
    realm: Vec<u8>,
    nonce: Vec<u8>,
    /// How long one request may take in all, retransmissions included.
    pub timeout: Duration,
    /// Data indications that arrived while waiting for a response.
    data: VecDeque<(SocketAddr, Vec<u8>)>,
}

fn method_name(m: u16) -> &'static str {
    match m {
        METHOD_ALLOCATE => "Allocate",
        METHOD_REFRESH => "Refresh",
        METHOD_CREATE_PERMISSION => "CreatePermission",
        _ => "request",
    }
}

impl Client {
    /// A client on a fresh socket bound to `local` (port 0 for any), talking to the TURN server at `server`.
    pub async fn bind(local: SocketAddr, server: SocketAddr, user: &str, pass: &str) -> std::io::Result<Client> {
        let sock = UdpSocket::bind(local).await?;
        Ok(Client {
            sock,
            server,
            user: user.into(),
            pass: pass.into(),
            realm: Vec::new(),
            nonce: Vec::new(),
            timeout: Duration::from_secs(3),
            data: VecDeque::new(),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.sock.local_addr()
    }

    fn build(&self, method: u16, txid: [u8; 12], attrs: &(dyn Fn(&mut Message) + Sync)) -> Vec<u8> {
        let mut m = codec::message(method, 0, txid);
        attrs(&mut m);
        if !self.nonce.is_empty() {
            m.add(AttrType(ATTR_USERNAME), self.user.as_bytes());
            m.add(AttrType(ATTR_REALM), &self.realm);
            m.add(AttrType(ATTR_NONCE), &self.nonce);
            let realm = String::from_utf8_lossy(&self.realm).into_owned();
            // Adding integrity only fails for an over-long message, which these few attributes never make.
            let _ =
                MessageIntegrity::new_long_term_integrity(self.user.clone(), realm, self.pass.clone()).add_to(&mut m);
        }
        let _ = stun::fingerprint::FINGERPRINT.add_to(&mut m);
        m.raw
    }

    /// One transaction: send, retransmit with a doubling interval, return the response with our transaction ID.
    async fn transaction(&mut self, pkt: &[u8], txid: [u8; 12]) -> Result<Message, ClientError> {
        let deadline = Instant::now() + self.timeout;
        let mut rto = Duration::from_millis(250);
        let mut buf = vec![0u8; 65536];
        loop {
            self.sock.send_to(pkt, self.server).await?;
            let resend = (Instant::now() + rto).min(deadline);
            rto *= 2;
            loop {
                let (n, from) = match tokio::time::timeout_at(resend, self.sock.recv_from(&mut buf)).await {
                    Err(_) => break,
                    // ICMP port unreachable from an earlier send: nobody listens (yet); keep trying until the deadline.
                    Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        tokio::time::sleep_until(resend).await;
                        break;
                    }
                    Ok(r) => r?,
                };
                if from != self.server {
                    continue;
                }
                let b = &buf[..n];
                if codec::classify(b) != Kind::Stun {
                    continue;
                }
                let (method, class) = codec::method_and_class(b);
                if method == METHOD_DATA && class == 1 {
                    if let Some(d) = parse_data(b) {
                        self.data.push_back(d);
                    }
                    continue;
                }
                if codec::transaction_id(b) != txid || class < 2 {
                    continue;
                }
                return codec::decode(b).ok_or(ClientError::Malformed("undecodable STUN response"));
            }
            if Instant::now() >= deadline {
                return Err(ClientError::Timeout { server: self.server, waited: self.timeout });
            }
        }
    }

    /// An authenticated request, answering 401 (first contact) and 438 (stale nonce) like a real client.
    async fn request(&mut self, method: u16, attrs: &(dyn Fn(&mut Message) + Sync)) -> Result<Message, ClientError> {
        for _ in 0..3 {
            let authed = !self.nonce.is_empty();
            let txid: [u8; 12] = rand::random();
            let pkt = self.build(method, txid, attrs);
            let r = self.transaction(&pkt, txid).await?;
            match error_code(&r) {
                None => return Ok(r),
                Some((401, _)) if !authed => {}
                Some((438, _)) => {}
                Some((code, reason)) => return Err(ClientError::Refused { method: method_name(method), code, reason }),
            }
            let realm = r.get(AttrType(ATTR_REALM)).map_err(|_| ClientError::Malformed("401/438 without REALM"))?;
            let nonce = r.get(AttrType(ATTR_NONCE)).map_err(|_| ClientError::Malformed("401/438 without NONCE"))?;
            self.realm = realm;
            self.nonce = nonce;
        }
        Err(ClientError::Refused {
            method: method_name(method),
            code: 401,
            reason: "authentication did not converge".into(),
        })
    }

    /// Allocate a UDP relay; returns the relayed transport address the server announces.
    pub async fn allocate(&mut self) -> Result<SocketAddr, ClientError> {
        self.allocate_family(None).await
    }

    /// Allocate a relay of one family (`Some(true)`: IPv6) with REQUESTED-ADDRESS-FAMILY, or the server's default.
    pub async fn allocate_family(&mut self, v6: Option<bool>) -> Result<SocketAddr, ClientError> {
        let r = self
            .request(METHOD_ALLOCATE, &|m| {
                m.add(AttrType(ATTR_REQUESTED_TRANSPORT), &[17, 0, 0, 0]);
                if let Some(v6) = v6 {
                    m.add(AttrType(ATTR_REQUESTED_ADDRESS_FAMILY), &[if v6 { 2 } else { 1 }, 0, 0, 0]);
                }
            })
            .await?;
        let mut a = stun::xoraddr::XorMappedAddress::default();
        a.get_from_as(&r, AttrType(ATTR_XOR_RELAYED_ADDRESS))
            .map_err(|_| ClientError::Malformed("Allocate success without XOR-RELAYED-ADDRESS"))?;
        Ok(SocketAddr::new(a.ip, a.port))
    }

    /// Install a permission for `peer`'s IP address.
    pub async fn permit(&mut self, peer: SocketAddr) -> Result<(), ClientError> {
        self.request(METHOD_CREATE_PERMISSION, &|m| peer_attr(m, peer)).await.map(|_| ())
    }

    /// Send `data` to `peer` through the relay (a Send indication: no answer, no retransmission).
    pub async fn send(&mut self, peer: SocketAddr, data: &[u8]) -> Result<(), ClientError> {
        let mut m = codec::message(METHOD_SEND, 1, rand::random());
        peer_attr(&mut m, peer);
        m.add(AttrType(ATTR_DATA), data);
        let _ = stun::fingerprint::FINGERPRINT.add_to(&mut m);
        self.sock.send_to(&m.raw, self.server).await?;
        Ok(())
    }

    /// The next relayed datagram (Data indication): the peer it came from and its payload.
    pub async fn recv(&mut self, within: Duration) -> Result<(SocketAddr, Vec<u8>), ClientError> {
        if let Some(d) = self.data.pop_front() {
            return Ok(d);
        }
        let mut buf = vec![0u8; 65536];
        let deadline = Instant::now() + within;
        loop {
            let (n, from) = match tokio::time::timeout_at(deadline, self.sock.recv_from(&mut buf)).await {
                Err(_) => return Err(ClientError::Timeout { server: self.server, waited: within }),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                Ok(r) => r?,
            };
            let b = &buf[..n];
            if from == self.server && codec::classify(b) == Kind::Stun && codec::method_and_class(b) == (METHOD_DATA, 1)
            {
                if let Some(d) = parse_data(b) {
                    return Ok(d);
                }
            }
        }
    }

    /// Delete the allocation (Refresh with LIFETIME 0), so that it does not hold a relay port until it expires.
    pub async fn release(&mut self) -> Result<(), ClientError> {
        self.request(METHOD_REFRESH, &|m| m.add(AttrType(ATTR_LIFETIME), &0u32.to_be_bytes())).await.map(|_| ())
    }
}

fn peer_attr(m: &mut Message, peer: SocketAddr) {
    let _ = stun::xoraddr::XorMappedAddress { ip: peer.ip(), port: peer.port() }
        .add_to_as(m, AttrType(ATTR_XOR_PEER_ADDRESS));
}

fn error_code(m: &Message) -> Option<(u16, String)> {
    let mut e = stun::error_code::ErrorCodeAttribute::default();
    e.get_from(m).ok().map(|_| (e.code.0, String::from_utf8_lossy(&e.reason).into_owned()))
}

/// XOR-PEER-ADDRESS and DATA of a Data indication.
fn parse_data(b: &[u8]) -> Option<(SocketAddr, Vec<u8>)> {
    let txid = codec::transaction_id(b);
    let peer = codec::find_attr(b, ATTR_XOR_PEER_ADDRESS).ok()??;
    let peer = codec::decode_xor_addr(&b[peer], &txid)?;
    let data = codec::find_attr(b, ATTR_DATA).ok()??;
    Some((peer, b[data].to_vec()))
}
