//! A minimal TURN client over UDP or TCP on the `stun` crate: enough to drive every method in tests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use ponte::turn::codec::{self, *};
use stun::attributes::AttrType;
use stun::integrity::MessageIntegrity;
use stun::message::{Getter, Message, Setter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use super::TestServer;

pub const T: Duration = Duration::from_secs(5);

pub enum Conn {
    Udp(UdpSocket, SocketAddr),
    Tcp(TcpStream, Vec<u8>),
}

/// A minimal TURN client over the `stun` crate, enough to drive every method.
pub struct Client {
    pub conn: Conn,
    pub user: String,
    pub pass: String,
    realm: Vec<u8>,
    nonce: Vec<u8>,
}

impl Client {
    pub async fn udp(server: SocketAddr, srv: &TestServer) -> Client {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        Client::with(Conn::Udp(s, server), srv)
    }
    pub async fn tcp(server: SocketAddr, srv: &TestServer) -> Client {
        Client::with(Conn::Tcp(TcpStream::connect(server).await.unwrap(), Vec::new()), srv)
    }
    /// A client of a server run as a process with TURN REST secret `secret` (no [`TestServer`] at hand).
    pub fn with_secret(conn: Conn, secret: &str) -> Client {
        let secret = ponte::config::Secret::new(secret);
        let cred = ponte::credentials::mint(&secret, "itest", ponte::credentials::unix_now(), 3600);
        Client { conn, user: cred.username, pass: cred.password, realm: Vec::new(), nonce: Vec::new() }
    }
    pub fn with(conn: Conn, srv: &TestServer) -> Client {
        let cred = ponte::credentials::mint(&srv.ctx.turn_secret, "itest", ponte::credentials::unix_now(), 3600);
        Client { conn, user: cred.username, pass: cred.password, realm: Vec::new(), nonce: Vec::new() }
    }

    pub async fn send_raw(&mut self, b: &[u8]) {
        match &mut self.conn {
            Conn::Udp(s, to) => {
                s.send_to(b, *to).await.unwrap();
            }
            Conn::Tcp(s, _) => s.write_all(b).await.unwrap(),
        }
    }

    /// Next STUN message or ChannelData frame from the server.
    pub async fn recv(&mut self) -> Vec<u8> {
        tokio::time::timeout(T, async {
            match &mut self.conn {
                Conn::Udp(s, _) => {
                    let mut b = vec![0u8; 70000];
                    let (n, _) = s.recv_from(&mut b).await.unwrap();
                    b.truncate(n);
                    b
                }
                Conn::Tcp(s, buf) => loop {
                    if let Ok(Some(n)) = codec::tcp_frame_len(buf) {
                        return buf.drain(..n).collect();
                    }
                    let mut chunk = [0u8; 4096];
                    let n = s.read(&mut chunk).await.unwrap();
                    assert!(n > 0, "server closed the connection");
                    buf.extend_from_slice(&chunk[..n]);
                },
            }
        })
        .await
        .expect("answer from the server in time")
    }

    pub async fn recv_stun(&mut self) -> Message {
        let b = self.recv().await;
        codec::decode(&b).expect("a STUN message")
    }

    pub fn build(&self, method: u16, attrs: &dyn Fn(&mut Message), auth: bool) -> Vec<u8> {
        let mut m = codec::message(method, 0, rand::random());
        attrs(&mut m);
        if auth {
            m.add(AttrType(ATTR_USERNAME), self.user.as_bytes());
            m.add(AttrType(ATTR_REALM), &self.realm);
            m.add(AttrType(ATTR_NONCE), &self.nonce);
            let realm = String::from_utf8(self.realm.clone()).unwrap();
            MessageIntegrity::new_long_term_integrity(self.user.clone(), realm, self.pass.clone())
                .add_to(&mut m)
                .unwrap();
        }
        stun::fingerprint::FINGERPRINT.add_to(&mut m).unwrap();
        m.raw
    }

    /// An authenticated request, doing the 401/438 dance like a real client.
    pub async fn request(&mut self, method: u16, attrs: &dyn Fn(&mut Message)) -> Message {
        for _ in 0..3 {
            let auth = !self.nonce.is_empty();
            let pkt = self.build(method, attrs, auth);
            self.send_raw(&pkt).await;
            let r = self.recv_stun().await;
            match code(&r) {
                Some(401) if !auth => {}
                Some(438) => {}
                _ => return r,
            }
            self.realm = r.get(AttrType(ATTR_REALM)).unwrap();
            self.nonce = r.get(AttrType(ATTR_NONCE)).unwrap();
        }
        panic!("authentication did not converge");
    }

    pub async fn allocate(&mut self) -> SocketAddr {
        let r = self.request(METHOD_ALLOCATE, &|m| m.add(AttrType(ATTR_REQUESTED_TRANSPORT), &[17, 0, 0, 0])).await;
        assert_eq!(code(&r), None, "Allocate failed: {r}");
        let mut a = stun::xoraddr::XorMappedAddress::default();
        a.get_from_as(&r, AttrType(ATTR_XOR_RELAYED_ADDRESS)).unwrap();
        SocketAddr::new(a.ip, a.port)
    }
}

pub fn code(m: &Message) -> Option<u16> {
    let mut e = stun::error_code::ErrorCodeAttribute::default();
    e.get_from(m).ok().map(|_| e.code.0)
}

pub fn peer_attr(m: &mut Message, peer: SocketAddr) {
    stun::xoraddr::XorMappedAddress { ip: peer.ip(), port: peer.port() }
        .add_to_as(m, AttrType(ATTR_XOR_PEER_ADDRESS))
        .unwrap();
}

impl Client {
    /// A UDP client bound on `local_ip` (another loopback address stands for another host).
    pub async fn udp_from(local_ip: &str, server: SocketAddr, srv: &TestServer, id: &str) -> Client {
        let s = UdpSocket::bind((local_ip, 0)).await.unwrap();
        let mut c = Client::with(Conn::Udp(s, server), srv);
        let cred = ponte::credentials::mint(&srv.ctx.turn_secret, id, ponte::credentials::unix_now(), 3600);
        c.user = cred.username;
        c.pass = cred.password;
        c
    }

    /// Allocate a UDP relay; the error code on failure.
    pub async fn try_allocate(&mut self) -> Result<SocketAddr, u16> {
        let r = self.request(METHOD_ALLOCATE, &|m| m.add(AttrType(ATTR_REQUESTED_TRANSPORT), &[17, 0, 0, 0])).await;
        if let Some(c) = code(&r) {
            return Err(c);
        }
        let mut a = stun::xoraddr::XorMappedAddress::default();
        a.get_from_as(&r, AttrType(ATTR_XOR_RELAYED_ADDRESS)).unwrap();
        Ok(SocketAddr::new(a.ip, a.port))
    }
}
