//! A minimal TURN client over UDP on the `stun` crate, for tests that need authenticated requests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use ponte::turn::codec::{self, *};
use stun::attributes::AttrType;
use stun::integrity::MessageIntegrity;
use stun::message::{Getter, Message, Setter};
use tokio::net::UdpSocket;

pub const T: Duration = Duration::from_secs(5);

pub struct UdpTurnClient {
    pub sock: UdpSocket,
    pub server: SocketAddr,
    pub user: String,
    pub pass: String,
    realm: Vec<u8>,
    nonce: Vec<u8>,
}

impl UdpTurnClient {
    /// A client bound on `local_ip` with TURN REST credentials minted from `secret`.
    pub async fn new(local_ip: &str, server: SocketAddr, secret: &ponte::config::Secret, id: &str) -> UdpTurnClient {
        let sock = UdpSocket::bind((local_ip, 0)).await.unwrap();
        let cred = ponte::credentials::mint(secret, id, ponte::credentials::unix_now(), 3600);
        UdpTurnClient { sock, server, user: cred.username, pass: cred.password, realm: Vec::new(), nonce: Vec::new() }
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

    pub async fn recv_stun(&mut self) -> Message {
        let mut buf = vec![0u8; 2048];
        let (n, _) = tokio::time::timeout(T, self.sock.recv_from(&mut buf)).await.expect("answer in time").unwrap();
        let mut m = Message::new();
        m.raw = buf[..n].to_vec();
        m.decode().unwrap();
        m
    }

    /// An authenticated request, doing the 401/438 dance like a real client.
    pub async fn request(&mut self, method: u16, attrs: &dyn Fn(&mut Message)) -> Message {
        for _ in 0..3 {
            let auth = !self.nonce.is_empty();
            let pkt = self.build(method, attrs, auth);
            self.sock.send_to(&pkt, self.server).await.unwrap();
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

    /// Allocate a UDP relay; returns the error code on failure.
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

pub fn code(m: &Message) -> Option<u16> {
    let mut e = stun::error_code::ErrorCodeAttribute::default();
    e.get_from(m).ok().map(|_| e.code.0)
}
