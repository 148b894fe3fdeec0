//! Fuzz target: the STUN/TURN state machine (not only the decoder) driven by arbitrary event sequences —
//! raw datagrams and TCP streams, correctly signed requests with fuzzed attributes (so the fuzzer gets past
//! authentication), peer packets to relays, timer ticks and closing clients. Nothing may panic.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use ponte::config::{Secret, TurnConfig};
use ponte::turn::core::{Action, Core, CoreConfig, FiveTuple, Transport};
use stun::attributes::AttrType;
use stun::integrity::MessageIntegrity;
use stun::message::{Message, MessageType, Method, Setter, CLASS_REQUEST};
use stun::textattrs::{Nonce, Realm, Username};

const SECRET: &str = "fuzz-secret-0123456789abcdef";
const METHODS: [Method; 6] = [
    stun::message::METHOD_BINDING,
    stun::message::METHOD_ALLOCATE,
    stun::message::METHOD_REFRESH,
    stun::message::METHOD_CREATE_PERMISSION,
    stun::message::METHOD_CHANNEL_BIND,
    stun::message::METHOD_SEND,
];

struct Raw(AttrType, Vec<u8>);
impl Setter for Raw {
    fn add_to(&self, m: &mut Message) -> Result<(), stun::Error> {
        m.add(self.0, &self.1);
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let mut turn = TurnConfig::default();
    turn.unauthenticated_rate_per_ip = 1_000_000;
    turn.max_allocations = 4;
    turn.max_permissions_per_allocation = 4;
    turn.max_channels_per_allocation = 4;
    turn.max_bandwidth_per_allocation = if data.first().is_some_and(|b| b & 1 == 1) { 5000 } else { 0 };
    let core = Core::new(
        CoreConfig {
            turn,
            secrets: vec![Secret::new(SECRET)],
            relay_ips: vec!["10.1.1.1".parse().unwrap(), "fd00::1".parse().unwrap()],
            own_ips: vec!["10.1.1.1".parse().unwrap(), "fd00::1".parse().unwrap()],
        },
        t0,
        1_000_000,
    );
    let user = "1100000:fuzz".to_string();
    let pass = ponte::credentials::password_for(&Secret::new(SECRET), &user);
    let server: SocketAddr = "10.1.1.1:3478".parse().unwrap();
    let clients: [FiveTuple; 3] = [
        FiveTuple { client: "198.51.100.7:40000".parse().unwrap(), server, transport: Transport::Udp },
        FiveTuple { client: "198.51.100.8:40001".parse().unwrap(), server, transport: Transport::Tcp },
        FiveTuple { client: "[2001:db8::7]:40002".parse().unwrap(), server, transport: Transport::Udp },
    ];
    let peers: [SocketAddr; 3] =
        ["93.184.216.34:5000".parse().unwrap(), "[2606:4700::1]:6000".parse().unwrap(), "127.0.0.1:1".parse().unwrap()];
    let mut nonce: Option<String> = None;
    let mut relays: Vec<SocketAddr> = Vec::new();
    let mut next_port = 50000u16;
    let mut now = t0;
    let mut out = Vec::new();
    let mut input = data;

    while input.len() >= 3 {
        let op = input[0];
        let len = u16::from_le_bytes([input[1], input[2]]) as usize % 2048;
        input = &input[3..];
        let body = &input[..len.min(input.len())];
        input = &input[body.len()..];
        let tuple = clients[(op >> 4) as usize % clients.len()];
        out.clear();
        match op & 0x7 {
            0 | 1 => core.handle(body, tuple, now, &mut out),
            2 | 3 => {
                // A correctly signed request whose other attributes come from the fuzzer.
                let Some((&sel, rest)) = body.split_first() else { continue };
                let method = METHODS[sel as usize % METHODS.len()];
                let mut m = Message::new();
                let mut setters: Vec<Box<dyn Setter>> = vec![
                    Box::new(MessageType::new(method, CLASS_REQUEST)),
                    Box::new(stun::agent::TransactionId::new()),
                ];
                let mut r = rest;
                while r.len() >= 3 {
                    let (t, l) = (u16::from_be_bytes([r[0], r[1]]), r[2] as usize);
                    let v = &r[3..(3 + l).min(r.len())];
                    setters.push(Box::new(Raw(AttrType(t), v.to_vec())));
                    r = &r[3 + v.len()..];
                }
                if sel & 0x80 == 0 {
                    setters.push(Box::new(Username::new(stun::attributes::ATTR_USERNAME, user.clone())));
                    setters.push(Box::new(Realm::new(stun::attributes::ATTR_REALM, "ponte".into())));
                    if let Some(n) = &nonce {
                        setters.push(Box::new(Nonce::new(stun::attributes::ATTR_NONCE, n.clone())));
                    }
                    setters.push(Box::new(MessageIntegrity::new_long_term_integrity(user.clone(), "ponte".into(), pass.clone())));
                }
                if m.build(&setters).is_err() {
                    continue;
                }
                core.handle(&m.raw, tuple, now, &mut out);
            }
            4 => {
                // A packet from a peer arriving at a relay.
                let Some(&relay) = relays.get(body.first().copied().unwrap_or(0) as usize % relays.len().max(1)) else {
                    continue;
                };
                let peer = peers[body.len() % peers.len()];
                // Peer data lands after the headroom the core writes Data/ChannelData headers into.
                let off = ponte::turn::codec::HEADROOM;
                let mut buf = vec![0u8; off + body.len() + 64];
                buf[off..off + body.len()].copy_from_slice(body);
                let mut sent = Vec::new();
                core.from_peer(relay, peer, &mut buf, body.len(), now, &mut sent);
                for a in sent {
                    let Action::FromPeer { data, .. } = a else { panic!("from_peer emits only FromPeer: {a:?}") };
                    assert!(data.end <= buf.len(), "FromPeer range outside the buffer");
                }
            }
            5 => {
                now += Duration::from_secs(body.first().copied().unwrap_or(1) as u64 * 10);
                core.tick(now, &mut out);
            }
            6 => core.client_closed(tuple, &mut out),
            _ => {
                // A TCP byte stream: split it into frames the way the TCP shell does.
                let tcp = FiveTuple { transport: Transport::Tcp, ..tuple };
                let mut s = body;
                while let Ok(Some(n)) = ponte::turn::codec::tcp_frame_len(s) {
                    if n == 0 || n > s.len() {
                        break;
                    }
                    core.handle(&s[..n], tcp, now, &mut out);
                    s = &s[n..];
                }
            }
        }
        // Play the shell: bind relays, learn nonces from 401s.
        let mut i = 0;
        while i < out.len() {
            let action = std::mem::replace(&mut out[i], Action::CloseRelay { relay: server });
            match action {
                Action::OpenRelay(req) => {
                    let port = if req.even_port && next_port % 2 == 1 { next_port + 1 } else { next_port };
                    next_port = next_port.wrapping_add(2).max(50000);
                    let addr = SocketAddr::new(req.ip, port);
                    relays.push(addr);
                    let mut more = Vec::new();
                    core.relay_opened(req, Ok(addr), now, &mut more);
                    out.extend(more);
                }
                Action::ToClient { data, .. } => {
                    let mut m = Message::new();
                    m.raw = data;
                    if m.decode().is_ok() {
                        if let Ok(n) = Nonce::get_from_as(&m, stun::attributes::ATTR_NONCE) {
                            nonce = Some(n.text);
                        }
                    }
                }
                Action::Timeout(at) => assert!(at > now, "the next tick must lie ahead"),
                Action::ToPeer { .. } | Action::FromPeer { .. } | Action::CloseRelay { .. } => {}
            }
            i += 1;
        }
    }
});
