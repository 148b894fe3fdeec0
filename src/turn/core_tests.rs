//! Unit tests of the sans-IO core: every method, error path, timer and retransmission, without sockets.

use super::*;
use crate::config::StaticUser;
use stun::integrity::MessageIntegrity;
use stun::message::Getter;

const SECRET: &str = "unit-test-secret-0123456789";
const REALM: &str = "ponte";

fn cfg() -> TurnConfig {
    TurnConfig {
        external_ip: Some("203.0.113.1".parse().unwrap()),
        users: vec![StaticUser { username: "alice".into(), password: Secret::new("wonderland") }],
        unauthenticated_rate_per_ip: 1000,
        ..TurnConfig::default()
    }
}

struct T {
    core: Core,
    t0: Instant,
    now: Instant,
    tuple: FiveTuple,
    user: String,
    pass: String,
    nonce: Vec<u8>,
    next_port: u16,
}

fn public(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

impl T {
    fn with(turn: TurnConfig) -> T {
        let t0 = Instant::now();
        let core = Core::new(
            CoreConfig {
                turn,
                secrets: vec![Secret::new(SECRET), Secret::new("previous-secret-0123456789")],
                relay_ips: vec!["10.1.1.1".parse().unwrap()],
                own_ips: vec![
                    "10.1.1.1".parse().unwrap(),
                    "203.0.113.1".parse().unwrap(),
                    "192.0.2.50".parse().unwrap(),
                ],
            },
            t0,
            1_000_000,
        );
        let user = "1003600:peer-a".to_string();
        let pass = crate::credentials::password_for(&Secret::new(SECRET), &user);
        T {
            core,
            t0,
            now: t0,
            tuple: FiveTuple {
                client: public("198.51.100.7:40000"),
                server: public("10.1.1.1:3478"),
                transport: Transport::Udp,
            },
            user,
            pass,
            nonce: Vec::new(),
            next_port: 50000,
        }
    }
    fn new() -> T {
        T::with(cfg())
    }

    fn advance(&mut self, secs: u64) {
        self.now += Duration::from_secs(secs);
    }

    /// Feed a packet; opening relays is answered automatically with a fake bound address.
    fn feed(&mut self, pkt: &[u8]) -> Vec<Action> {
        let mut out = Vec::new();
        self.core.handle(pkt, self.tuple, self.now, &mut out);
        let mut done = Vec::new();
        // relay_opened may ask for a second relay (dual allocation): loop like the shell does.
        while let Some(a) = (!out.is_empty()).then(|| out.remove(0)) {
            match a {
                Action::OpenRelay(r) => {
                    let mut port = self.next_port;
                    self.next_port += 1;
                    if r.even_port && port % 2 == 1 {
                        port += 1;
                        self.next_port += 1;
                    }
                    if r.reserve_next {
                        self.next_port += 1;
                    }
                    let addr = r.reserved.unwrap_or(SocketAddr::new(r.ip, port));
                    done.push(Action::OpenRelay(RelayRequest { ..r.clone_for_test() }));
                    self.core.relay_opened(r, Ok(addr), self.now, &mut out);
                }
                other => done.push(other),
            }
        }
        done
    }

    /// Run the timers at `at`: the actions other than [`Action::Timeout`], and that timeout (there is always one).
    fn tick_at(&self, at: Instant) -> (Vec<Action>, Instant) {
        let mut out = Vec::new();
        self.core.tick(at, &mut out);
        let Some(Action::Timeout(next)) = out.pop() else { panic!("tick must end with its Timeout: {out:?}") };
        assert!(next > at && next <= at + MAX_TICK, "next tick {:?} after {:?}", next - at, at - self.t0);
        (out, next)
    }

    /// Feed and return the single STUN answer, decoded.
    fn ask(&mut self, pkt: &[u8]) -> Message {
        let out = self.feed(pkt);
        let answers: Vec<&Vec<u8>> =
            out.iter().filter_map(|a| if let Action::ToClient { data, .. } = a { Some(data) } else { None }).collect();
        assert_eq!(answers.len(), 1, "expected one answer, got {out:?}");
        codec::decode(answers[0]).expect("answer decodes")
    }

    fn build(&self, method: u16, txid: [u8; 12], attrs: &dyn Fn(&mut Message), auth: bool) -> Vec<u8> {
        let mut m = codec::message(method, 0, txid);
        attrs(&mut m);
        if auth {
            m.add(AttrType(ATTR_USERNAME), self.user.as_bytes());
            m.add(AttrType(ATTR_REALM), REALM.as_bytes());
            m.add(AttrType(ATTR_NONCE), &self.nonce);
            MessageIntegrity::new_long_term_integrity(self.user.clone(), REALM.into(), self.pass.clone())
                .add_to(&mut m)
                .unwrap();
        }
        stun::fingerprint::FINGERPRINT.add_to(&mut m).unwrap();
        m.raw
    }

    /// Get a nonce the way a client does: an unauthenticated request, then read the 401.
    fn get_nonce(&mut self) {
        let pkt = self.build(METHOD_ALLOCATE, rand::random(), &|m| transport(m, 17), false);
        let r = self.ask(&pkt);
        assert_eq!(code(&r), Some(401));
        self.nonce = r.get(AttrType(ATTR_NONCE)).unwrap();
    }

    /// One authenticated request with the current nonce, as is.
    fn request_once(&mut self, method: u16, attrs: &dyn Fn(&mut Message)) -> Message {
        if self.nonce.is_empty() {
            self.get_nonce();
        }
        let pkt = self.build(method, rand::random(), attrs, true);
        self.ask(&pkt)
    }

    /// Like a real client: on 438 take the fresh nonce and retry once.
    fn request(&mut self, method: u16, attrs: &dyn Fn(&mut Message)) -> Message {
        let r = self.request_once(method, attrs);
        if code(&r) == Some(438) {
            self.nonce = r.get(AttrType(ATTR_NONCE)).unwrap();
            return self.request_once(method, attrs);
        }
        r
    }

    fn allocate(&mut self) -> SocketAddr {
        let r = self.request(METHOD_ALLOCATE, &|m| transport(m, 17));
        assert_eq!(code(&r), None, "allocate failed: {r}");
        relayed(&r)
    }

    fn perm(&mut self, peer: SocketAddr) -> Message {
        self.request(METHOD_CREATE_PERMISSION, &move |m| peer_attr(m, peer))
    }

    fn bind(&mut self, ch: u16, peer: SocketAddr) -> Message {
        self.request(METHOD_CHANNEL_BIND, &move |m| {
            m.add(AttrType(ATTR_CHANNEL_NUMBER), &[(ch >> 8) as u8, ch as u8, 0, 0]);
            peer_attr(m, peer)
        })
    }

    fn key(&self) -> Vec<u8> {
        auth::long_term_key(&self.user, REALM, &self.pass).to_vec()
    }
}

impl RelayRequest {
    fn clone_for_test(&self) -> RelayRequest {
        RelayRequest {
            tuple: self.tuple,
            ip: self.ip,
            even_port: self.even_port,
            reserve_next: self.reserve_next,
            reserved: self.reserved,
            additional: self.additional,
            first: self.first,
            address_error: self.address_error,
            txid: self.txid,
            username: self.username.clone(),
            key: self.key,
            integrity: self.integrity,
            lifetime: self.lifetime,
            fingerprint: self.fingerprint,
        }
    }
}

fn transport(m: &mut Message, proto: u8) {
    m.add(AttrType(ATTR_REQUESTED_TRANSPORT), &[proto, 0, 0, 0]);
}

fn peer_attr(m: &mut Message, peer: SocketAddr) {
    stun::xoraddr::XorMappedAddress { ip: peer.ip(), port: peer.port() }
        .add_to_as(m, AttrType(ATTR_XOR_PEER_ADDRESS))
        .unwrap();
}

fn code(m: &Message) -> Option<u16> {
    let mut e = stun::error_code::ErrorCodeAttribute::default();
    e.get_from(m).ok().map(|_| e.code.0)
}

fn relayed(m: &Message) -> SocketAddr {
    let mut a = stun::xoraddr::XorMappedAddress::default();
    a.get_from_as(m, AttrType(ATTR_XOR_RELAYED_ADDRESS)).unwrap();
    SocketAddr::new(a.ip, a.port)
}

fn lifetime(m: &Message) -> u32 {
    u32::from_be_bytes(m.get(AttrType(ATTR_LIFETIME)).unwrap().try_into().unwrap())
}

fn to_peer(out: &[Action]) -> Vec<(SocketAddr, SocketAddr, Range<usize>)> {
    out.iter()
        .filter_map(|a| {
            if let Action::ToPeer { relay, peer, data } = a {
                Some((*relay, *peer, data.clone()))
            } else {
                None
            }
        })
        .collect()
}

fn send_indication(peer: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut m = codec::message(METHOD_SEND, 1, rand::random());
    peer_attr(&mut m, peer);
    m.add(AttrType(ATTR_DATA), data);
    m.raw
}

fn peer_packet(t: &T, relay_local: SocketAddr, peer: SocketAddr, payload: &[u8]) -> Option<(FiveTuple, Vec<u8>)> {
    let mut buf = vec![0u8; HEADROOM + payload.len() + TAILROOM];
    buf[HEADROOM..HEADROOM + payload.len()].copy_from_slice(payload);
    let mut out = Vec::new();
    t.core.from_peer(relay_local, peer, &mut buf, payload.len(), t.now, &mut out);
    match out.as_slice() {
        [] => None,
        [Action::FromPeer { to, data }] => Some((*to, buf[data.clone()].to_vec())),
        other => panic!("from_peer emits at most one FromPeer: {other:?}"),
    }
}

/// Local relay address of the (single) allocation: advertised port on the local relay IP.
fn local(relay: SocketAddr) -> SocketAddr {
    SocketAddr::new("10.1.1.1".parse().unwrap(), relay.port())
}

// ------------------------------------------------------------------------------------------ Binding

#[test]
fn binding_returns_xor_mapped_address_and_fingerprint() {
    let mut t = T::new();
    let pkt = t.build(METHOD_BINDING, [9; 12], &|_| {}, false);
    let r = t.ask(&pkt);
    assert_eq!(codec::method_and_class(&r.raw).1, 2);
    assert_eq!(r.transaction_id.0, [9; 12]);
    let mut x = stun::xoraddr::XorMappedAddress::default();
    x.get_from(&r).unwrap();
    assert_eq!(SocketAddr::new(x.ip, x.port), t.tuple.client);
    stun::fingerprint::FINGERPRINT.check(&r).expect("fingerprint echoed");
    assert!(!r.contains(AttrType(ATTR_SOFTWARE)), "no SOFTWARE unless configured");
    // Without FINGERPRINT in the request, none in the response.
    let r = t.ask(&codec::message(METHOD_BINDING, 0, [1; 12]).raw);
    assert!(!r.contains(AttrType(ATTR_FINGERPRINT)));
    assert_eq!(t.core.counters().snapshot().binding_requests, 2);
}

#[test]
fn binding_reports_mapped_ipv4_for_dual_stack_and_software_when_configured() {
    let mut c = cfg();
    c.software = Some("ponte-test".into());
    let mut t = T::with(c);
    t.tuple.client = public("[::ffff:198.51.100.9]:1234");
    let r = t.ask(&codec::message(METHOD_BINDING, 0, [1; 12]).raw);
    let mut x = stun::xoraddr::XorMappedAddress::default();
    x.get_from(&r).unwrap();
    assert_eq!(SocketAddr::new(x.ip, x.port), public("198.51.100.9:1234"));
    assert_eq!(r.get(AttrType(ATTR_SOFTWARE)).unwrap(), b"ponte-test");
}

#[test]
fn garbage_truncated_and_bad_fingerprint_are_dropped() {
    let mut t = T::new();
    let good = t.build(METHOD_BINDING, [2; 12], &|_| {}, false);
    let mut bad_fp = good.clone();
    let n = bad_fp.len();
    bad_fp[n - 1] ^= 0xFF;
    let mut response_class = codec::message(METHOD_BINDING, 2, [3; 12]).raw;
    response_class.extend_from_slice(&[]);
    let mut odd_len = good.clone();
    odd_len[3] = 3;
    let inputs: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xFF; 100],
        good[..good.len() - 4].to_vec(),
        good[..19].to_vec(),
        bad_fp,
        response_class,
        odd_len,
        vec![0x40, 0x00, 0x00, 0xFF, 1, 2],
        vec![
            0x00, 0x03, 0x00, 0x08, 0x21, 0x12, 0xA4, 0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x19, 0x00, 0x40,
        ],
    ];
    for (i, p) in inputs.iter().enumerate() {
        assert!(t.feed(p).is_empty(), "input {i} must be dropped");
    }
    // Random fuzz: never panics.
    for _ in 0..2000 {
        let len = rand::random::<u8>() as usize;
        let mut p: Vec<u8> = (0..len).map(|_| rand::random()).collect();
        if p.len() >= 8 && rand::random::<bool>() {
            p[0] &= 0x3F;
            p[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        }
        let _ = t.feed(&p);
    }
    assert!(t.core.counters().snapshot().dropped_packets >= inputs.len() as u64);
}

// ------------------------------------------------------------------------------------------ Auth

#[test]
fn unauthenticated_allocate_gets_401_with_realm_and_nonce_no_integrity() {
    let mut t = T::new();
    let pkt = t.build(METHOD_ALLOCATE, [5; 12], &|m| transport(m, 17), false);
    let r = t.ask(&pkt);
    assert_eq!(code(&r), Some(401));
    assert_eq!(r.get(AttrType(ATTR_REALM)).unwrap(), REALM.as_bytes());
    assert_eq!(r.get(AttrType(ATTR_NONCE)).unwrap().len(), 40);
    assert!(!r.contains(AttrType(ATTR_MESSAGE_INTEGRITY)));
    assert_eq!(t.core.allocation_count(), 0, "no state before auth");
    assert_eq!(t.core.counters().snapshot().auth_challenges, 1);
}

#[test]
fn wrong_password_unknown_user_and_expired_rest_get_401() {
    let mut t = T::new();
    t.get_nonce();
    t.pass = "wrong".into();
    assert_eq!(code(&t.request(METHOD_ALLOCATE, &|m| transport(m, 17))), Some(401));
    t.user = "mallory".into();
    assert_eq!(code(&t.request(METHOD_ALLOCATE, &|m| transport(m, 17))), Some(401));
    // Expired REST username (expiry before the core's clock) with the right password.
    t.user = "999999:peer".into();
    t.pass = crate::credentials::password_for(&Secret::new(SECRET), &t.user);
    assert_eq!(code(&t.request(METHOD_ALLOCATE, &|m| transport(m, 17))), Some(401));
    // The same username becomes expired when time passes.
    t.user = "1000100:peer".into();
    t.pass = crate::credentials::password_for(&Secret::new(SECRET), &t.user);
    t.advance(101);
    t.get_nonce();
    assert_eq!(code(&t.request(METHOD_ALLOCATE, &|m| transport(m, 17))), Some(401));
    assert_eq!(t.core.counters().snapshot().auth_failures, 4);
    assert_eq!(t.core.allocation_count(), 0);
}

#[test]
fn rotated_secret_and_static_user_accepted() {
    let mut t = T::new();
    t.pass = crate::credentials::password_for(&Secret::new("previous-secret-0123456789"), &t.user);
    t.allocate();
    let mut t = T::new();
    t.user = "alice".into();
    t.pass = "wonderland".into();
    t.allocate();
}

#[test]
fn stale_forged_and_foreign_nonces_get_438() {
    let mut t = T::new();
    t.get_nonce();
    t.advance(auth::NONCE_TTL_SECS + 1);
    let r = t.request_once(METHOD_ALLOCATE, &|m| transport(m, 17));
    assert_eq!(code(&r), Some(438));
    let fresh = r.get(AttrType(ATTR_NONCE)).unwrap();
    assert_ne!(fresh, t.nonce);
    t.nonce = vec![b'0'; 40];
    assert_eq!(code(&t.request_once(METHOD_ALLOCATE, &|m| transport(m, 17))), Some(438));
    // A nonce minted for another client address does not transfer.
    t.nonce = fresh;
    t.tuple.client = public("198.51.100.99:40000");
    assert_eq!(code(&t.request_once(METHOD_ALLOCATE, &|m| transport(m, 17))), Some(438));
}

#[test]
fn integrity_without_username_is_400() {
    let mut t = T::new();
    t.get_nonce();
    let mut m = codec::message(METHOD_ALLOCATE, 0, [7; 12]);
    transport(&mut m, 17);
    MessageIntegrity::new_long_term_integrity(t.user.clone(), REALM.into(), t.pass.clone()).add_to(&mut m).unwrap();
    assert_eq!(code(&t.ask(&m.raw)), Some(400));
}

#[test]
fn message_integrity_sha256_accepted_and_answered_in_kind() {
    let mut t = T::new();
    t.get_nonce();
    let mut m = codec::message(METHOD_ALLOCATE, 0, [8; 12]);
    transport(&mut m, 17);
    m.add(AttrType(ATTR_USERNAME), t.user.as_bytes());
    m.add(AttrType(ATTR_REALM), REALM.as_bytes());
    m.add(AttrType(ATTR_NONCE), &t.nonce);
    auth::add_integrity_sha256(&mut m, &t.key());
    let out = t.feed(&m.raw);
    let Some(Action::ToClient { data, .. }) = out.iter().find(|a| matches!(a, Action::ToClient { .. })) else {
        panic!("{out:?}")
    };
    assert_eq!(auth::verify(data, &t.key()), Some(Integrity::Sha256));
    assert_eq!(code(&codec::decode(data).unwrap()), None);
}

#[test]
fn challenges_are_rate_limited_per_source() {
    let mut c = cfg();
    c.unauthenticated_rate_per_ip = 5;
    let mut t = T::with(c);
    let mut answered = 0;
    for _ in 0..20 {
        let pkt = t.build(METHOD_ALLOCATE, rand::random(), &|m| transport(m, 17), false);
        answered += t.feed(&pkt).len();
    }
    assert_eq!(answered, 5);
    assert_eq!(t.core.counters().snapshot().challenges_rate_limited, 15);
    // Another source is not affected; the next second refills.
    t.tuple.client = public("192.0.2.77:1");
    let pkt = t.build(METHOD_ALLOCATE, rand::random(), &|m| transport(m, 17), false);
    assert_eq!(t.feed(&pkt).len(), 1);
    t.tuple.client = public("198.51.100.7:40000");
    t.advance(1);
    assert_eq!(t.feed(&pkt).len(), 1);
}

// ------------------------------------------------------------------------------------------ Allocate

#[test]
fn allocate_success_advertises_external_ip_and_signs() {
    let mut t = T::new();
    t.get_nonce();
    let pkt = t.build(METHOD_ALLOCATE, [1; 12], &|m| transport(m, 17), true);
    let out = t.feed(&pkt);
    let open = out.iter().find_map(|a| if let Action::OpenRelay(r) = a { Some(r) } else { None }).expect("OpenRelay");
    assert_eq!(open.ip, "10.1.1.1".parse::<IpAddr>().unwrap(), "binds on the local relay address");
    let Some(Action::ToClient { data, .. }) = out.last() else { panic!() };
    assert_eq!(auth::verify(data, &t.key()), Some(Integrity::Sha1));
    let r = codec::decode(data).unwrap();
    assert_eq!(code(&r), None);
    assert_eq!(relayed(&r), public("203.0.113.1:50000"), "advertises turn.external_ip");
    assert_eq!(lifetime(&r), 600);
    let mut x = stun::xoraddr::XorMappedAddress::default();
    x.get_from(&r).unwrap();
    assert_eq!(x.port, 40000);
    stun::fingerprint::FINGERPRINT.check(&r).unwrap();
    let s = t.core.counters().snapshot();
    assert_eq!((s.allocations_active, s.allocations_created), (1, 1));
}

#[test]
fn allocate_retransmission_gets_identical_answer_and_no_second_relay() {
    let mut t = T::new();
    t.get_nonce();
    let pkt = t.build(METHOD_ALLOCATE, [1; 12], &|m| transport(m, 17), true);
    let first = t.feed(&pkt);
    let again = t.feed(&pkt);
    assert_eq!(again.len(), 1, "{again:?}");
    let (Some(Action::ToClient { data: a, .. }), Some(Action::ToClient { data: b, .. })) = (first.last(), again.last())
    else {
        panic!()
    };
    assert_eq!(a, b);
    // Even after the nonce went stale, the retransmission gets the same answer.
    t.advance(auth::NONCE_TTL_SECS + 5);
    let Some(Action::ToClient { data: c, .. }) = t.feed(&pkt).pop() else { panic!() };
    assert_eq!(a, &c);
    // A new transaction is a mismatch.
    assert_eq!(code(&t.request(METHOD_ALLOCATE, &|m| transport(m, 17))), Some(437));
}

#[test]
fn allocate_error_codes() {
    let mut t = T::new();
    assert_eq!(code(&t.request(METHOD_ALLOCATE, &|_| {})), Some(400), "missing REQUESTED-TRANSPORT");
    assert_eq!(code(&t.request(METHOD_ALLOCATE, &|m| transport(m, 6))), Some(442), "TCP relay unsupported");
    assert_eq!(
        code(&t.request(METHOD_ALLOCATE, &|m| {
            transport(m, 17);
            m.add(AttrType(ATTR_REQUESTED_ADDRESS_FAMILY), &[2, 0, 0, 0]);
        })),
        Some(440),
        "no IPv6 relay address"
    );
    assert_eq!(
        code(&t.request(METHOD_ALLOCATE, &|m| {
            transport(m, 17);
            m.add(AttrType(ATTR_REQUESTED_ADDRESS_FAMILY), &[9, 0, 0, 0]);
        })),
        Some(440)
    );
    assert_eq!(
        code(&t.request(METHOD_ALLOCATE, &|m| {
            transport(m, 17);
            m.add(AttrType(ATTR_RESERVATION_TOKEN), &[1; 5]);
        })),
        Some(400),
        "RESERVATION-TOKEN must be 8 bytes"
    );
    assert_eq!(
        code(&t.request(METHOD_ALLOCATE, &|m| {
            transport(m, 17);
            m.add(AttrType(ATTR_RESERVATION_TOKEN), &[1; 8]);
        })),
        Some(508)
    );
    assert_eq!(
        code(&t.request(METHOD_ALLOCATE, &|m| {
            transport(m, 17);
            m.add(AttrType(ATTR_RESERVATION_TOKEN), &[1; 8]);
            m.add(AttrType(ATTR_EVEN_PORT), &[0]);
        })),
        Some(400)
    );
    let r = t.request(METHOD_ALLOCATE, &|m| {
        transport(m, 17);
        m.add(AttrType(ATTR_DONT_FRAGMENT), &[]);
        m.add(AttrType(0x7777), &[1, 2, 3, 4]);
        m.add(AttrType(0xC001), &[1]); // comprehension-optional: ignored
    });
    assert_eq!(code(&r), Some(420));
    let ua = r.get(AttrType(ATTR_UNKNOWN_ATTRIBUTES)).unwrap();
    assert_eq!(ua, vec![0x00, 0x1A, 0x77, 0x77]);
    assert_eq!(t.core.allocation_count(), 0);
    // Unknown method.
    let r = t.request(0x0FF, &|_| {});
    assert_eq!(code(&r), Some(400));
}

#[test]
fn allocate_ipv6_family_when_available_and_even_port() {
    let mut c = cfg();
    c.external_ip = None;
    let mut t = T::with(c);
    t.core.relay_ips.push("2001:db8::10".parse().unwrap());
    let r = t.request(METHOD_ALLOCATE, &|m| {
        transport(m, 17);
        m.add(AttrType(ATTR_REQUESTED_ADDRESS_FAMILY), &[2, 0, 0, 0]);
    });
    assert_eq!(code(&r), None);
    assert!(relayed(&r).is_ipv6());
    t.tuple.client = public("198.51.100.7:40001");
    t.next_port = 50001;
    let r = t.request(METHOD_ALLOCATE, &|m| {
        transport(m, 17);
        m.add(AttrType(ATTR_EVEN_PORT), &[0]);
    });
    assert_eq!(code(&r), None);
    assert_eq!(relayed(&r).port() % 2, 0);
    assert_eq!(relayed(&r).ip(), "10.1.1.1".parse::<IpAddr>().unwrap(), "no external_ip: local address advertised");
}

#[test]
fn allocate_lifetime_is_clamped() {
    let mut t = T::new();
    let r = t.request(METHOD_ALLOCATE, &|m| {
        transport(m, 17);
        m.add(AttrType(ATTR_LIFETIME), &100_000u32.to_be_bytes());
    });
    assert_eq!(lifetime(&r), 3600);
    t.tuple.client = public("198.51.100.7:40001");
    let r = t.request(METHOD_ALLOCATE, &|m| {
        transport(m, 17);
        m.add(AttrType(ATTR_LIFETIME), &30u32.to_be_bytes());
    });
    assert_eq!(lifetime(&r), 600);
}

#[test]
fn quotas_per_user_total_and_relay_ports() {
    let mut c = cfg();
    c.max_allocations_per_user = 2;
    c.max_allocations = 3;
    let mut t = T::with(c);
    for p in 0..2 {
        t.tuple.client = SocketAddr::new(t.tuple.client.ip(), 41000 + p);
        t.allocate();
    }
    t.tuple.client = public("198.51.100.7:41002");
    assert_eq!(code(&t.request(METHOD_ALLOCATE, &|m| transport(m, 17))), Some(486));
    t.user = "alice".into();
    t.pass = "wonderland".into();
    t.allocate();
    t.tuple.client = public("198.51.100.7:41003");
    assert_eq!(code(&t.request(METHOD_ALLOCATE, &|m| transport(m, 17))), Some(508), "total capacity");
    assert_eq!(t.core.counters().snapshot().quota_rejections, 2);

    // No relay port: 508 and the quota reservation is released.
    let mut t = T::new();
    t.get_nonce();
    let pkt = t.build(METHOD_ALLOCATE, [4; 12], &|m| transport(m, 17), true);
    let mut out = Vec::new();
    t.core.handle(&pkt, t.tuple, t.now, &mut out);
    let Some(Action::OpenRelay(req)) = out.pop() else { panic!() };
    let mut out = Vec::new();
    t.core.relay_opened(req, Err(std::io::Error::new(std::io::ErrorKind::AddrInUse, "full")), t.now, &mut out);
    let Some(Action::ToClient { data, .. }) = out.pop() else { panic!() };
    assert_eq!(code(&codec::decode(&data).unwrap()), Some(508));
    assert_eq!(t.core.usage.lock().total, 0);
    t.allocate();
}

// ------------------------------------------------------------------------------------------ Refresh

#[test]
fn refresh_extends_and_zero_deletes_retransmission_safe() {
    let mut t = T::new();
    let relay = t.allocate();
    t.advance(500);
    let r = t.request(METHOD_REFRESH, &|m| m.add(AttrType(ATTR_LIFETIME), &1200u32.to_be_bytes()));
    assert_eq!((code(&r), lifetime(&r)), (None, 1200));
    t.advance(1000);
    let (out, _) = t.tick_at(t.now);
    assert!(out.is_empty(), "refreshed allocation must survive: {out:?}");
    t.get_nonce();
    let pkt = t.build(METHOD_REFRESH, [6; 12], &|m| m.add(AttrType(ATTR_LIFETIME), &0u32.to_be_bytes()), true);
    let out = t.feed(&pkt);
    assert!(out.iter().any(|a| matches!(a, Action::CloseRelay { relay: r } if *r == local(relay))), "{out:?}");
    assert_eq!(t.core.allocation_count(), 0);
    let Some(Action::ToClient { data, .. }) = out.last() else { panic!() };
    assert_eq!(lifetime(&codec::decode(data).unwrap()), 0);
    // A retransmitted delete gets the same success, not 437.
    let again = t.feed(&pkt);
    assert_eq!(again.len(), 1);
    let Some(Action::ToClient { data: d2, .. }) = again.last() else { panic!() };
    assert_eq!(data, d2);
    // A new refresh now: 437.
    assert_eq!(code(&t.request(METHOD_REFRESH, &|_| {})), Some(437));
    assert_eq!(t.core.counters().snapshot().allocations_active, 0);
}

#[test]
fn refresh_by_other_user_is_441_and_family_mismatch_443() {
    let mut t = T::new();
    t.allocate();
    let r = t.request(METHOD_REFRESH, &|m| m.add(AttrType(ATTR_REQUESTED_ADDRESS_FAMILY), &[2, 0, 0, 0]));
    assert_eq!(code(&r), Some(443));
    t.user = "alice".into();
    t.pass = "wonderland".into();
    assert_eq!(code(&t.request(METHOD_REFRESH, &|_| {})), Some(441));
    assert_eq!(code(&t.perm(public("8.8.8.8:1"))), Some(441));
}

#[test]
fn allocation_expires_and_closes_relay() {
    let mut t = T::new();
    let relay = t.allocate();
    let (out, _) = t.tick_at(t.now + Duration::from_secs(599));
    assert!(out.is_empty());
    // The core asks to be woken at the expiry, not a whole MAX_TICK later.
    let (_, next) = t.tick_at(t.now + Duration::from_millis(599_500));
    assert_eq!(next, t.t0 + Duration::from_secs(600));
    let (out, _) = t.tick_at(t.now + Duration::from_secs(600));
    assert!(matches!(out.as_slice(), [Action::CloseRelay { relay: r }] if *r == local(relay)), "{out:?}");
    assert_eq!(t.core.allocation_count(), 0);
    assert_eq!(t.core.usage.lock().total, 0);
}

#[test]
fn tcp_connection_close_deletes_allocation() {
    let mut t = T::new();
    t.tuple.transport = Transport::Tcp;
    let relay = t.allocate();
    let mut out = Vec::new();
    t.core.client_closed(t.tuple, &mut out);
    assert!(matches!(out.as_slice(), [Action::CloseRelay { relay: r }] if *r == local(relay)));
}

// ------------------------------------------------------------------------------------------ Permissions & data

#[test]
fn permission_send_and_data_indication_round_trip() {
    let mut t = T::new();
    let relay = t.allocate();
    let peer = public("8.8.8.8:5000");
    // Without permission: Send indication and peer data are dropped.
    assert!(to_peer(&t.feed(&send_indication(peer, b"x"))).is_empty());
    assert!(peer_packet(&t, local(relay), peer, b"y").is_none());
    assert_eq!(code(&t.perm(public("8.8.8.8:1"))), None, "permission ignores the port");
    let pkt = send_indication(peer, b"hello");
    let out = t.feed(&pkt);
    let sent = to_peer(&out);
    assert_eq!(sent.len(), 1);
    assert_eq!((sent[0].0, sent[0].1), (local(relay), peer));
    assert_eq!(&pkt[sent[0].2.clone()], b"hello");
    let (to, frame) = peer_packet(&t, local(relay), peer, b"world!").unwrap();
    assert_eq!(to, t.tuple);
    let m = codec::decode(&frame).unwrap();
    assert_eq!(codec::method_and_class(&m.raw).0, METHOD_DATA);
    assert_eq!(m.get(AttrType(ATTR_DATA)).unwrap(), b"world!");
    let mut pa = turn::proto::peeraddr::PeerAddress::default();
    pa.get_from(&m).unwrap();
    assert_eq!(SocketAddr::new(pa.ip, pa.port), peer);
    let s = t.core.counters().snapshot();
    assert_eq!(
        (s.packets_client_to_peer, s.bytes_client_to_peer, s.packets_peer_to_client, s.bytes_peer_to_client),
        (1, 5, 1, 6)
    );
    // Another peer IP is still blocked.
    assert!(peer_packet(&t, local(relay), public("8.8.4.4:5000"), b"z").is_none());
}

#[test]
fn permissions_expire_after_300s_and_refresh() {
    let mut t = T::new();
    let relay = t.allocate();
    let peer = public("8.8.8.8:5000");
    t.perm(peer);
    t.advance(299);
    assert!(peer_packet(&t, local(relay), peer, b"a").is_some());
    t.perm(peer);
    t.advance(299);
    assert!(peer_packet(&t, local(relay), peer, b"a").is_some(), "refreshed");
    t.advance(1);
    assert!(peer_packet(&t, local(relay), peer, b"a").is_none(), "expired at 300 s");
    assert!(to_peer(&t.feed(&send_indication(peer, b"x"))).is_empty());
    let mut out = Vec::new();
    t.core.tick(t.now, &mut out);
    assert!(t.core.allocs.get(&t.tuple).unwrap().st.lock().perms.is_empty());
}

#[test]
fn create_permission_errors() {
    let mut t = T::new();
    assert_eq!(code(&t.perm(public("8.8.8.8:1"))), Some(437), "no allocation");
    t.allocate();
    assert_eq!(code(&t.request(METHOD_CREATE_PERMISSION, &|_| {})), Some(400), "no peer");
    assert_eq!(code(&t.perm(public("[2606:4700::1111]:1"))), Some(443), "IPv6 peer on IPv4 relay");
    // All or nothing: one forbidden peer fails the request and installs nothing.
    let r = t.request(METHOD_CREATE_PERMISSION, &|m| {
        peer_attr(m, public("8.8.8.8:1"));
        peer_attr(m, public("192.168.1.1:1"));
    });
    assert_eq!(code(&r), Some(403));
    assert!(t.core.allocs.get(&t.tuple).unwrap().st.lock().perms.is_empty());
}

#[test]
fn forbidden_peers_in_every_encoding_get_403() {
    let mut t = T::new();
    t.allocate();
    let forbidden = [
        "127.0.0.1:80",
        "0.0.0.0:80",
        "10.0.0.5:80",
        "172.16.0.1:80",
        "192.168.0.1:80",
        "100.64.0.1:80",
        "169.254.169.254:80",
        "224.0.0.1:80",
        "255.255.255.255:80",
        "198.18.0.1:80",
        "240.0.0.1:80",
        "[::ffff:127.0.0.1]:80",
        "[::ffff:169.254.169.254]:80",
        "[::127.0.0.1]:80",
        "192.0.2.50:80", // another address of this server (not a relay address)
        "[::ffff:192.0.2.50]:80",
    ];
    for p in forbidden {
        assert_eq!(code(&t.perm(public(p))), Some(403), "{p} must be refused");
        assert_eq!(code(&t.bind(0x4000, public(p))), Some(403), "{p} must be refused for ChannelBind");
    }
    assert_eq!(t.core.counters().snapshot().denied_peers, 2 * forbidden.len() as u64);
    // Send to a forbidden peer never leaves (no permission can exist for it).
    assert!(to_peer(&t.feed(&send_indication(public("127.0.0.1:80"), b"x"))).is_empty());
}

#[test]
fn ipv4_mapped_public_peer_is_canonicalised_for_sending() {
    let mut t = T::new();
    let relay = t.allocate();
    assert_eq!(code(&t.perm(public("[::ffff:8.8.8.8]:1"))), None);
    let out = t.feed(&send_indication(public("[::ffff:8.8.8.8]:53"), b"q"));
    assert_eq!(to_peer(&out)[0].1, public("8.8.8.8:53"));
    assert!(peer_packet(&t, local(relay), public("8.8.8.8:53"), b"r").is_some());
}

#[test]
fn allow_peers_opens_private_ranges() {
    let mut c = cfg();
    c.allow_peers = vec!["192.168.1.0/24".parse().unwrap()];
    c.deny_peers = vec!["8.8.8.0/24".parse().unwrap()];
    let mut t = T::with(c);
    t.allocate();
    assert_eq!(code(&t.perm(public("192.168.1.50:1"))), None);
    assert_eq!(code(&t.perm(public("192.168.2.50:1"))), Some(403));
    assert_eq!(code(&t.perm(public("8.8.8.8:1"))), Some(403));
}

/// `[cluster]`: the other nodes' announced relay addresses are let through as exact hosts (a lab or a private
/// network between nodes uses ranges the built-in policy refuses) and only at their announced relay ports —
/// nothing around them, not their other services (a permission covers every port of an address, so a Send
/// indication to another port is dropped too) — and a config reload of the peer lists keeps them.
#[test]
fn cluster_peers_are_allowed_as_exact_hosts_at_their_relay_ports() {
    let mut c = cfg();
    c.deny_peers = vec!["8.8.8.0/24".parse().unwrap()];
    let mut t = T::with(c.clone());
    let relay = t.allocate();
    assert_eq!(code(&t.perm(public("198.51.100.20:50000"))), Some(403), "TEST-NET is refused by default");
    t.core.set_cluster_peers(vec![
        ("198.51.100.20".parse().unwrap(), 50000, 50099),
        ("10.0.0.7".parse().unwrap(), 49152, 65535),
    ]);
    assert_eq!(code(&t.perm(public("198.51.100.20:50000"))), None, "another node's relay address");
    assert_eq!(code(&t.perm(public("198.51.100.20:50100"))), Some(403), "outside its relay range");
    assert_eq!(code(&t.perm(public("10.0.0.7:22"))), Some(403), "its SSH is not a relay");
    assert_eq!(code(&t.perm(public("10.0.0.7:49152"))), None);
    assert_eq!(code(&t.perm(public("198.51.100.21:50000"))), Some(403), "only the exact host");
    assert_eq!(code(&t.perm(public("8.8.8.8:50000"))), Some(403));
    // The permission for 10.0.0.7 is per address: Send reaches its relay ports, not its other ports.
    assert_eq!(to_peer(&t.feed(&send_indication(public("10.0.0.7:60000"), b"x"))).len(), 1);
    assert!(to_peer(&t.feed(&send_indication(public("10.0.0.7:22"), b"x"))).is_empty());
    let _ = relay;
    t.core.set_peer_lists(&c.allow_peers, &c.deny_peers);
    assert_eq!(code(&t.perm(public("10.0.0.7:50002"))), None, "a reload keeps the cluster's peers");
    t.core.set_cluster_peers(Vec::new());
    assert_eq!(code(&t.perm(public("10.0.0.8:50000"))), Some(403));
    assert_eq!(code(&t.perm(public("198.51.100.20:50003"))), Some(403), "a node that left is refused again");
}

#[test]
fn permission_quota_is_508() {
    let mut c = cfg();
    c.max_permissions_per_allocation = 2;
    let mut t = T::with(c);
    t.allocate();
    assert_eq!(code(&t.perm(public("8.8.8.8:1"))), None);
    assert_eq!(code(&t.perm(public("8.8.4.4:1"))), None);
    assert_eq!(code(&t.perm(public("8.8.8.8:2"))), None, "refreshing an existing one is fine");
    assert_eq!(code(&t.perm(public("1.1.1.1:1"))), Some(508));
}

// ------------------------------------------------------------------------------------------ Channels

#[test]
fn channel_bind_and_channel_data_both_ways() {
    let mut t = T::new();
    let relay = t.allocate();
    let peer = public("8.8.8.8:5000");
    assert_eq!(code(&t.bind(0x4001, peer)), None);
    let pkt = [0x40, 0x01, 0x00, 0x03, b'a', b'b', b'c', 0];
    let out = t.feed(&pkt);
    assert_eq!(to_peer(&out), vec![(local(relay), peer, 4..7)]);
    // Peer → client uses the channel (no padding over UDP).
    let (_, frame) = peer_packet(&t, local(relay), peer, b"xyz").unwrap();
    assert_eq!(frame, vec![0x40, 0x01, 0x00, 0x03, b'x', b'y', b'z']);
    // Unknown channel, short frame: dropped.
    assert!(t.feed(&[0x40, 0x02, 0x00, 0x01, 1]).is_empty());
    assert!(t.feed(&[0x40, 0x01, 0x00, 0x09, 1]).is_empty());
    // The same peer from another port has the permission but no channel: Data indication.
    let (_, frame) = peer_packet(&t, local(relay), public("8.8.8.8:5001"), b"q").unwrap();
    assert_eq!(codec::method_and_class(&frame).0, METHOD_DATA);
}

#[test]
fn channel_data_to_tcp_client_is_padded() {
    let mut t = T::new();
    t.tuple.transport = Transport::Tcp;
    let relay = t.allocate();
    let peer = public("8.8.8.8:5000");
    t.bind(0x4001, peer);
    let (_, frame) = peer_packet(&t, local(relay), peer, b"xyzzy").unwrap();
    assert_eq!(frame.len(), 12);
    assert_eq!(&frame[..9], &[0x40, 0x01, 0x00, 0x05, b'x', b'y', b'z', b'z', b'y']);
}

#[test]
fn channel_bind_errors_and_refresh() {
    let mut t = T::new();
    assert_eq!(code(&t.bind(0x4001, public("8.8.8.8:1"))), Some(437));
    t.allocate();
    assert_eq!(code(&t.bind(0x3FFF, public("8.8.8.8:1"))), Some(400), "below range");
    assert_eq!(code(&t.bind(0x8000, public("8.8.8.8:1"))), Some(400), "above range");
    assert_eq!(code(&t.request(METHOD_CHANNEL_BIND, &|m| peer_attr(m, public("8.8.8.8:1")))), Some(400), "no number");
    assert_eq!(code(&t.bind(0x4001, public("8.8.8.8:1"))), None);
    assert_eq!(code(&t.bind(0x4001, public("8.8.8.8:1"))), None, "rebinding the same pair refreshes");
    assert_eq!(code(&t.bind(0x4001, public("8.8.8.8:2"))), Some(400), "channel taken by another peer");
    assert_eq!(code(&t.bind(0x4002, public("8.8.8.8:1"))), Some(400), "peer has another channel");
}

#[test]
fn channels_expire_after_600s_unless_refreshed() {
    let mut t = T::new();
    let relay = t.allocate();
    let peer = public("8.8.8.8:5000");
    t.bind(0x4001, peer);
    t.request(METHOD_REFRESH, &|m| m.add(AttrType(ATTR_LIFETIME), &3600u32.to_be_bytes()));
    t.advance(290);
    t.perm(peer); // keep the permission alive separately
    t.advance(290);
    t.perm(peer);
    assert!(!to_peer(&t.feed(&[0x40, 0x01, 0, 1, 7, 0, 0, 0])).is_empty());
    t.advance(20); // 600 s since the bind
    assert!(to_peer(&t.feed(&[0x40, 0x01, 0, 1, 7, 0, 0, 0])).is_empty(), "channel expired");
    let (_, frame) = peer_packet(&t, local(relay), peer, b"q").unwrap();
    assert_eq!(codec::method_and_class(&frame).0, METHOD_DATA, "falls back to Data indication");
    let mut out = Vec::new();
    t.core.tick(t.now, &mut out);
    // After expiry the channel number may be bound again.
    assert_eq!(code(&t.bind(0x4001, public("8.8.8.8:7"))), None);
}

#[test]
fn channel_quota_is_508() {
    let mut c = cfg();
    c.max_channels_per_allocation = 1;
    let mut t = T::with(c);
    t.allocate();
    assert_eq!(code(&t.bind(0x4001, public("8.8.8.8:1"))), None);
    assert_eq!(code(&t.bind(0x4002, public("8.8.8.8:2"))), Some(508));
}

#[test]
fn create_permission_retransmission_same_answer() {
    let mut t = T::new();
    t.allocate();
    let peer = public("8.8.8.8:1");
    let pkt = t.build(METHOD_CREATE_PERMISSION, [0x33; 12], &move |m| peer_attr(m, peer), true);
    let a = t.feed(&pkt);
    let b = t.feed(&pkt);
    let (Some(Action::ToClient { data: a, .. }), Some(Action::ToClient { data: b, .. })) = (a.last(), b.last()) else {
        panic!()
    };
    assert_eq!(a, b);
    // Cached responses are dropped after 40 s.
    let mut out = Vec::new();
    t.core.tick(t.now + Duration::from_secs(41), &mut out);
    assert!(t.core.responses.is_empty());
}

#[test]
fn bandwidth_cap_drops_excess() {
    let mut c = cfg();
    c.max_bandwidth_per_allocation = 1000;
    let mut t = T::with(c);
    let relay = t.allocate();
    let peer = public("8.8.8.8:5000");
    t.bind(0x4001, peer);
    let mut pkt = vec![0x40, 0x01, 0x01, 0x90];
    pkt.extend_from_slice(&[0u8; 400]);
    let sent: usize = (0..5).map(|_| to_peer(&t.feed(&pkt)).len()).sum();
    assert_eq!(sent, 2, "1000 bytes/s allows two 400-byte packets at once");
    t.now += Duration::from_millis(500);
    assert_eq!(to_peer(&t.feed(&pkt)).len(), 1, "half a second refills 500 bytes");
    let got = (0..5).filter(|_| peer_packet(&t, local(relay), peer, &[0u8; 400]).is_some()).count();
    assert_eq!(got, 2, "the cap applies per direction");
}

/// A relayed video call's media, one direction: 30 frames/s of 9 × 1150-byte packets sent back to back (a keyframe
/// of 36 every 2 s) plus Opus audio, 50 × 120 bytes/s: about 2.6 Mbit/s. Each item is (time since start, size).
fn video_call_flow(secs: u64) -> Vec<(Duration, usize)> {
    let mut v = Vec::new();
    for f in 0..secs * 30 {
        let at = Duration::from_micros(f * 1_000_000 / 30);
        let n = if f % 60 == 0 { 36 } else { 9 };
        // A burst leaves the browser's pacer within a millisecond or two: 20 µs apart.
        v.extend((0..n).map(|i| (at + Duration::from_micros(20 * i), 1150)));
    }
    v.extend((0..secs * 50).map(|a| (Duration::from_millis(a * 20 + 7), 120)));
    v.sort();
    v
}

#[test]
fn default_bandwidth_cap_carries_a_bursty_video_call_and_cuts_a_flood() {
    let cap = TurnConfig::default().max_bandwidth_per_allocation;
    assert!(cap > 0, "the default caps the relay bandwidth per allocation");
    // A screen share's keyframe: a whole 1080p frame at once, 150 kB.
    let screen_keyframe = 130;
    for cap in [cap, 500_000] {
        let mut c = cfg();
        c.max_bandwidth_per_allocation = cap;
        let mut t = T::with(c);
        let relay = t.allocate();
        let peer = public("8.8.8.8:5000");
        t.bind(0x4001, peer);
        let start = t.now;
        let flow = video_call_flow(10);
        let bytes: usize = flow.iter().map(|f| f.1).sum();
        assert!((2_500_000..2_800_000).contains(&(bytes * 8 / 10)), "the flow is about 2.6 Mbit/s: {bytes} B in 10 s");
        let (mut up, mut down) = (0, 0);
        for (i, &(at, size)) in flow.iter().enumerate() {
            t.now = start + at;
            let mut pkt = vec![0x40, 0x01, (size >> 8) as u8, size as u8];
            pkt.resize(4 + size, 0);
            up += to_peer(&t.feed(&pkt)).len();
            down += peer_packet(&t, local(relay), peer, &pkt[4..]).is_some() as usize;
            if i == flow.len() / 2 {
                // Mid-call the other side starts a screen share: one big keyframe burst on top of the video.
                let burst = [0u8; 1150];
                let got =
                    (0..screen_keyframe).filter(|_| peer_packet(&t, local(relay), peer, &burst).is_some()).count();
                assert_eq!(
                    got,
                    screen_keyframe,
                    "cap {cap}: a {} kB keyframe burst passes",
                    screen_keyframe * 1150 / 1000
                );
            }
        }
        assert_eq!(up, flow.len(), "cap {cap}: every packet of a 2.6 Mbit/s call passes, client → peer");
        assert_eq!(down, flow.len(), "cap {cap}: and peer → client");
        // A flood on the same allocation, 1200-byte datagrams at 100 Mbit/s for 2 s: what passes stays within the
        // cap (plus the one-second burst the bucket holds).
        let flood_start = t.now;
        let mut passed = 0usize;
        for i in 0..20_000u64 {
            t.now = flood_start + Duration::from_micros(i * 100);
            passed += peer_packet(&t, local(relay), peer, &[0u8; 1200]).is_some() as usize * 1200;
        }
        assert!(passed as u64 <= cap * 3, "cap {cap}: a flood is cut to the cap: {passed} B passed in 2 s");
        assert!(passed as u64 >= cap, "cap {cap}: the flood still gets the cap: {passed} B in 2 s");
    }
}

#[test]
fn relay_to_relay_through_own_addresses_only_at_live_relay_ports() {
    let mut t = T::new();
    let relay_a = t.allocate();
    t.tuple.client = public("198.51.100.8:40000");
    let relay_b = t.allocate();
    assert_eq!(relay_b.ip(), "203.0.113.1".parse::<IpAddr>().unwrap());
    // B lets A in, by A's advertised (external) address.
    assert_eq!(code(&t.perm(relay_a)), None, "our own relay address is a valid peer for relay-to-relay");
    t.tuple.client = public("198.51.100.7:40000");
    assert_eq!(code(&t.perm(relay_b)), None);
    // A → B goes straight to B's local relay socket (no hairpin through the router).
    let out = t.feed(&send_indication(relay_b, b"hi"));
    assert_eq!(to_peer(&out)[0].1, local(relay_b));
    // A → another port on our address (HTTP, STUN, metrics, anything not a relay) is dropped.
    for port in [3478u16, 8080, 22, relay_b.port() + 100] {
        assert!(
            to_peer(&t.feed(&send_indication(SocketAddr::new(relay_b.ip(), port), b"x"))).is_empty(),
            "port {port}"
        );
    }
    // B receives A's datagram from A's local address and sees A's advertised address.
    let (to, frame) = peer_packet(&t, local(relay_b), local(relay_a), b"hi").unwrap();
    assert_eq!(to.client, public("198.51.100.8:40000"));
    let m = codec::decode(&frame).unwrap();
    let mut pa = turn::proto::peeraddr::PeerAddress::default();
    pa.get_from(&m).unwrap();
    assert_eq!(SocketAddr::new(pa.ip, pa.port), relay_a);
    // A local process on the relay IP that is not a relay cannot use B's permission.
    assert!(peer_packet(&t, local(relay_b), public("10.1.1.1:9999"), b"x").is_none());
}

#[test]
fn even_port_reservation_and_token_claim_once() {
    let mut t = T::new();
    t.next_port = 50010;
    let r = t.request(METHOD_ALLOCATE, &|m| {
        transport(m, 17);
        m.add(AttrType(ATTR_EVEN_PORT), &[0x80]);
    });
    assert_eq!(code(&r), None, "{r}");
    let rtp = relayed(&r);
    assert_eq!(rtp.port() % 2, 0);
    let token = r.get(AttrType(ATTR_RESERVATION_TOKEN)).expect("token for the reserved port");
    assert_eq!(token.len(), 8);
    // The RTCP allocation (another 5-tuple) claims the reserved port P+1 with the token.
    t.tuple.client = public("198.51.100.7:40001");
    let r = t.request(METHOD_ALLOCATE, &|m| {
        transport(m, 17);
        m.add(AttrType(ATTR_RESERVATION_TOKEN), &token);
    });
    assert_eq!(code(&r), None, "{r}");
    assert_eq!(relayed(&r).port(), rtp.port() + 1);
    assert!(r.get(AttrType(ATTR_RESERVATION_TOKEN)).is_err());
    // A token is good once.
    t.tuple.client = public("198.51.100.7:40002");
    let r = t.request(METHOD_ALLOCATE, &|m| {
        transport(m, 17);
        m.add(AttrType(ATTR_RESERVATION_TOKEN), &token);
    });
    assert_eq!(code(&r), Some(508));
}

#[test]
fn unclaimed_reservations_expire_and_release_the_port() {
    let mut t = T::new();
    let r = t.request(METHOD_ALLOCATE, &|m| {
        transport(m, 17);
        m.add(AttrType(ATTR_EVEN_PORT), &[0x80]);
    });
    let token = r.get(AttrType(ATTR_RESERVATION_TOKEN)).unwrap();
    let next = SocketAddr::new("10.1.1.1".parse().unwrap(), relayed(&r).port() + 1);
    let (out, _) = t.tick_at(t.now + Duration::from_secs(29));
    assert!(out.is_empty());
    let (out, _) = t.tick_at(t.now + Duration::from_secs(30));
    assert!(matches!(out.as_slice(), [Action::CloseRelay { relay }] if *relay == next), "{out:?}");
    t.advance(31);
    t.tuple.client = public("198.51.100.7:40001");
    let r = t.request(METHOD_ALLOCATE, &|m| {
        transport(m, 17);
        m.add(AttrType(ATTR_RESERVATION_TOKEN), &token);
    });
    assert_eq!(code(&r), Some(508), "expired token");
}

// ------------------------------------------------------------------------------------------ abuse resistance

impl T {
    /// Become another REST user (a freshly minted username, as every WebSocket and `refresh_ice` gets).
    fn mint(&mut self, id: &str) {
        self.user = format!("1003600:{id}");
        self.pass = crate::credentials::password_for(&Secret::new(SECRET), &self.user);
    }

    /// Answers to one unauthenticated packet (0 or 1).
    fn answers(&mut self, method: u16) -> usize {
        let pkt = self.build(method, rand::random(), &|m| transport(m, 17), false);
        self.feed(&pkt).iter().filter(|a| matches!(a, Action::ToClient { .. })).count()
    }
}

/// RFC 8489 §14.5: a LIFETIME=0 appended after MESSAGE-INTEGRITY (by someone who captured a valid Refresh) is not
/// covered by the integrity and must not delete the allocation. The old core acted on it.
#[test]
fn attributes_after_message_integrity_are_ignored() {
    let mut t = T::new();
    t.allocate();
    let mut m = codec::message(METHOD_REFRESH, 0, rand::random());
    m.add(AttrType(ATTR_USERNAME), t.user.as_bytes());
    m.add(AttrType(ATTR_REALM), REALM.as_bytes());
    m.add(AttrType(ATTR_NONCE), &t.nonce);
    MessageIntegrity::new_long_term_integrity(t.user.clone(), REALM.into(), t.pass.clone()).add_to(&mut m).unwrap();
    m.add(AttrType(ATTR_LIFETIME), &0u32.to_be_bytes());
    let r = t.ask(&m.raw);
    assert_eq!(code(&r), None, "{r}");
    assert_eq!(lifetime(&r), 600, "the appended LIFETIME=0 was acted on");
    assert_eq!(t.core.allocation_count(), 1);
    // An unknown comprehension-required attribute after the integrity is ignored too (no 420).
    let mut m = codec::message(METHOD_REFRESH, 0, rand::random());
    m.add(AttrType(ATTR_USERNAME), t.user.as_bytes());
    m.add(AttrType(ATTR_REALM), REALM.as_bytes());
    m.add(AttrType(ATTR_NONCE), &t.nonce);
    MessageIntegrity::new_long_term_integrity(t.user.clone(), REALM.into(), t.pass.clone()).add_to(&mut m).unwrap();
    m.add(AttrType(0x7777), &[1, 2, 3, 4]);
    assert_eq!(code(&t.ask(&m.raw)), None);
}

/// REALM must be turn.realm: a request naming another realm gets 401 with ours, even when its integrity
/// happens to verify (the old core never compared it).
#[test]
fn a_foreign_realm_gets_401_with_ours() {
    let mut t = T::new();
    t.get_nonce();
    let mut m = codec::message(METHOD_ALLOCATE, 0, rand::random());
    transport(&mut m, 17);
    m.add(AttrType(ATTR_USERNAME), t.user.as_bytes());
    m.add(AttrType(ATTR_REALM), b"elsewhere");
    m.add(AttrType(ATTR_NONCE), &t.nonce);
    MessageIntegrity::new_long_term_integrity(t.user.clone(), REALM.into(), t.pass.clone()).add_to(&mut m).unwrap();
    let r = t.ask(&m.raw);
    assert_eq!(code(&r), Some(401), "{r}");
    assert_eq!(r.get(AttrType(ATTR_REALM)).unwrap(), REALM.as_bytes());
    assert_eq!(t.core.allocation_count(), 0);
}

/// Binding answers and 400s to unknown methods share the per-source budget with 401s (the old core answered
/// every Binding and unknown method: a reflector); an IPv6 /64 is one source; others are unaffected.
#[test]
fn every_unsigned_answer_is_under_one_per_source_budget() {
    let mut c = cfg();
    c.unauthenticated_rate_per_ip = 10;
    let mut t = T::with(c);
    let binding: usize = (0..6).map(|_| t.answers(METHOD_BINDING)).sum();
    let unknown: usize = (0..6).map(|_| t.answers(0x0FF)).sum();
    let challenges: usize = (0..6).map(|_| t.answers(METHOD_ALLOCATE)).sum();
    assert_eq!((binding, unknown, challenges), (6, 4, 0), "10 unsigned answers per second in all");
    assert_eq!(t.core.counters().snapshot().challenges_rate_limited, 8);
    // Another source is not limited; the next second refills.
    t.tuple.client = public("192.0.2.77:1");
    assert_eq!(t.answers(METHOD_BINDING), 1);
    t.tuple.client = public("198.51.100.7:40000");
    assert_eq!(t.answers(METHOD_BINDING), 0);
    t.advance(1);
    assert_eq!(t.answers(METHOD_BINDING), 1);
    // Addresses of one IPv6 /64 share a budget (a host picks any of them at will).
    for i in 0..10 {
        t.tuple.client = SocketAddr::new(format!("2001:db8:1:2::{i:x}").parse().unwrap(), 5000);
        assert_eq!(t.answers(METHOD_BINDING), 1);
    }
    t.tuple.client = public("[2001:db8:1:2:ffff::1]:5000");
    assert_eq!(t.answers(METHOD_BINDING), 0, "same /64");
    t.tuple.client = public("[2001:db8:1:3::1]:5000");
    assert_eq!(t.answers(METHOD_BINDING), 1, "another /64");
}

/// The default budget is far above what a browser needs: 60 Binding requests and a few 401s within one second
/// (a busy ICE gathering with several interfaces and TURN URLs) are all answered.
#[test]
fn the_default_answer_budget_never_limits_a_browser() {
    let mut t = T::with(TurnConfig { users: cfg().users, ..TurnConfig::default() });
    assert_eq!(TurnConfig::default().unauthenticated_rate_per_ip, 100);
    let answered: usize = (0..60).map(|_| t.answers(METHOD_BINDING)).sum::<usize>()
        + (0..6).map(|_| t.answers(METHOD_ALLOCATE)).sum::<usize>();
    assert_eq!(answered, 66);
    assert_eq!(t.core.counters().snapshot().challenges_rate_limited, 0);
}

/// Minting usernames does not get around the quotas: relay ports are bounded per source (the old core let one
/// source with 12 usernames take every port), another source still allocates, and a deleted allocation gives
/// its port back to its source.
#[test]
fn relay_ports_are_bounded_per_source_whatever_the_username() {
    let mut c = cfg();
    c.max_allocations_per_ip = 3;
    let mut t = T::with(c);
    for i in 0..3 {
        t.mint(&format!("u{i}"));
        t.tuple.client = SocketAddr::new(t.tuple.client.ip(), 41000 + i);
        t.allocate();
    }
    t.mint("u3");
    t.tuple.client = public("198.51.100.7:41003");
    assert_eq!(code(&t.request(METHOD_ALLOCATE, &|m| transport(m, 17))), Some(486));
    // Another source is served.
    t.tuple.client = public("192.0.2.9:41003");
    t.nonce.clear();
    t.allocate();
    // Deleting one gives its source a port back.
    t.tuple.client = public("198.51.100.7:41000");
    t.mint("u0");
    t.nonce.clear();
    let r = t.request(METHOD_REFRESH, &|m| m.add(AttrType(ATTR_LIFETIME), &0u32.to_be_bytes()));
    assert_eq!(code(&r), None);
    t.mint("u3");
    t.tuple.client = public("198.51.100.7:41003");
    t.allocate();
    assert_eq!(t.core.usage.lock().per_source.get(&"198.51.100.7".parse::<IpAddr>().unwrap()), Some(&3));
}

/// An EVEN-PORT reservation holds a second port of its source until it is claimed or expires.
#[test]
fn reservations_count_against_their_source_until_they_expire() {
    let mut c = cfg();
    c.max_allocations_per_ip = 2;
    let mut t = T::with(c);
    let r = t.request(METHOD_ALLOCATE, &|m| {
        transport(m, 17);
        m.add(AttrType(ATTR_EVEN_PORT), &[0x80]);
    });
    assert_eq!(code(&r), None, "{r}");
    t.tuple.client = public("198.51.100.7:40001");
    assert_eq!(code(&t.request(METHOD_ALLOCATE, &|m| transport(m, 17))), Some(486), "allocation + reservation");
    let _ = t.tick_at(t.now + Duration::from_secs(30));
    t.advance(31);
    t.allocate();
}

/// With a small relay range one source gets at most `relay_port_share_per_ip_percent` of it.
#[test]
fn one_source_gets_at_most_its_share_of_a_small_relay_range() {
    let mut c = cfg();
    c.relay_port_min = 40000;
    c.relay_port_max = 40007;
    let mut t = T::with(c);
    assert_eq!(t.core.limits().max_ports_per_source, 2, "25 % of 8 ports");
    for i in 0..2 {
        t.mint(&format!("s{i}"));
        t.tuple.client = SocketAddr::new(t.tuple.client.ip(), 42000 + i);
        t.allocate();
    }
    t.mint("s2");
    t.tuple.client = public("198.51.100.7:42002");
    assert_eq!(code(&t.request(METHOD_ALLOCATE, &|m| transport(m, 17))), Some(486));
}

/// The retransmission cache holds at most RESPONSE_CACHE_PER_SOURCE answers per source, and frees the count as
/// entries expire (the old core let one source fill the whole 65,536-entry cache).
#[test]
fn the_response_cache_is_bounded_per_source() {
    let mut t = T::new();
    t.allocate();
    for _ in 0..RESPONSE_CACHE_PER_SOURCE + 50 {
        assert_eq!(code(&t.perm(public("8.8.8.8:1"))), None);
    }
    let src: IpAddr = "198.51.100.7".parse().unwrap();
    assert_eq!(t.responses_from(src), RESPONSE_CACHE_PER_SOURCE);
    // Another source's answers are still cached (a retransmission gets the identical answer, no second relay).
    t.tuple.client = public("192.0.2.9:1");
    t.nonce.clear();
    t.get_nonce();
    let pkt = t.build(METHOD_ALLOCATE, [9; 12], &|m| transport(m, 17), true);
    let first = t.ask(&pkt);
    let again = t.feed(&pkt);
    assert!(matches!(again.as_slice(), [Action::ToClient { data, .. }] if *data == first.raw), "{again:?}");
    let _ = t.tick_at(t.now + RESPONSE_CACHE_TTL);
    assert!(t.core.usage.lock().cached_per_source.is_empty());
}

impl T {
    fn responses_from(&self, src: IpAddr) -> usize {
        self.core.responses.iter().filter(|e| source_of(e.key().0.client.ip()) == src).count()
    }
}

// ------------------------------------------------------------------------------------------ live reload

/// Every live `[turn]` key changes behaviour when [`Core::reload`] applies it (the config watcher in turn::serve
/// calls it on SIGHUP). The old core kept its start-up values for all of these.
#[test]
fn reload_applies_quotas_live() {
    let mut t = T::new();
    let mut c = cfg();
    // max_allocations_per_user and max_allocations
    c.max_allocations_per_user = 1;
    t.core.reload(&c);
    t.allocate();
    t.tuple.client = public("198.51.100.7:40001");
    assert_eq!(code(&t.request(METHOD_ALLOCATE, &|m| transport(m, 17))), Some(486), "max_allocations_per_user");
    c.max_allocations_per_user = 10;
    c.max_allocations = 1;
    t.core.reload(&c);
    assert_eq!(code(&t.request(METHOD_ALLOCATE, &|m| transport(m, 17))), Some(508), "max_allocations");
    c.max_allocations = 1000;
    // max_allocations_per_ip
    c.max_allocations_per_ip = 1;
    t.core.reload(&c);
    assert_eq!(code(&t.request(METHOD_ALLOCATE, &|m| transport(m, 17))), Some(486), "max_allocations_per_ip");
    c.max_allocations_per_ip = 32;
    // relay_port_share_per_ip_percent (the test core's range is the default 49152-65535: 1 % is 163 ports)
    c.relay_port_share_per_ip_percent = 1;
    t.core.reload(&c);
    assert_eq!(t.core.limits().max_ports_per_source, 32);
    c.max_allocations_per_ip = 1000;
    t.core.reload(&c);
    assert_eq!(t.core.limits().max_ports_per_source, 163, "relay_port_share_per_ip_percent");
    t.allocate();
    // max_permissions_per_allocation
    c.max_permissions_per_allocation = 1;
    t.core.reload(&c);
    assert_eq!(code(&t.perm(public("8.8.8.8:1"))), None);
    assert_eq!(code(&t.perm(public("8.8.4.8:1"))), Some(508), "max_permissions_per_allocation");
    c.max_permissions_per_allocation = 64;
    // max_channels_per_allocation
    c.max_channels_per_allocation = 1;
    t.core.reload(&c);
    assert_eq!(code(&t.bind(0x4000, public("8.8.8.8:1"))), None);
    assert_eq!(code(&t.bind(0x4001, public("8.8.8.8:2"))), Some(508), "max_channels_per_allocation");
    // tcp keys: read by the TCP shell (tests/abuse.rs shows their behaviour after a reload).
    c.max_tcp_connections_per_ip = 3;
    c.tcp_setup_timeout_secs = 2;
    t.core.reload(&c);
    assert_eq!(t.core.limits().max_tcp_connections_per_source, 3);
    assert_eq!(t.core.tcp_setup_timeout(), Duration::from_secs(2));
}

#[test]
fn reload_applies_bandwidth_answer_rate_and_software_live() {
    let mut t = T::new();
    let relay = t.allocate();
    let peer = public("8.8.8.8:9");
    t.perm(peer);
    // max_bandwidth_per_allocation: 0 (unlimited) → 1000 B/s: a second 800-byte datagram in the same instant drops.
    let mut c = cfg();
    c.max_bandwidth_per_allocation = 1000;
    t.core.reload(&c);
    t.advance(1); // the bucket of an allocation made while unlimited fills within a second
    assert!(peer_packet(&t, local(relay), peer, &[0; 800]).is_some());
    assert!(peer_packet(&t, local(relay), peer, &[0; 800]).is_none(), "max_bandwidth_per_allocation");
    // unauthenticated_rate_per_ip: 1000 → 2.
    c.unauthenticated_rate_per_ip = 2;
    t.core.reload(&c);
    let answered: usize = (0..5).map(|_| t.answers(METHOD_BINDING)).sum();
    assert_eq!(answered, 2, "unauthenticated_rate_per_ip");
    // software: none → "ponte-test" in Binding answers and signed answers alike.
    c.unauthenticated_rate_per_ip = 1000;
    c.software = Some("ponte-test".into());
    t.core.reload(&c);
    t.advance(1);
    let pkt = t.build(METHOD_BINDING, rand::random(), &|_| {}, false);
    assert_eq!(t.ask(&pkt).get(AttrType(ATTR_SOFTWARE)).unwrap(), b"ponte-test", "software");
    let r = t.perm(peer);
    assert_eq!(r.get(AttrType(ATTR_SOFTWARE)).unwrap(), b"ponte-test");
}

// ------------------------------------------------------------------------------------------ IPv6 (issue #19)

/// Every XOR-RELAYED-ADDRESS of an answer, in order.
fn all_relayed(m: &Message) -> Vec<SocketAddr> {
    m.attributes
        .0
        .iter()
        .filter(|a| a.typ.0 == ATTR_XOR_RELAYED_ADDRESS)
        .map(|a| codec::decode_xor_addr(&a.value, &m.transaction_id.0).unwrap())
        .collect()
}

/// ADDRESS-ERROR-CODE as (family, code).
fn address_error(m: &Message) -> Option<(u8, u16)> {
    let v = m.get(AttrType(ATTR_ADDRESS_ERROR_CODE)).ok()?;
    Some((v[0], v[2] as u16 * 100 + v[3] as u16))
}

fn dual_stack() -> T {
    let mut c = cfg();
    c.external_ip6 = Some("2001:db8:1::1".parse().unwrap());
    let mut t = T::with(c);
    t.core.relay_ips.push("2001:db8:1::1".parse().unwrap());
    t
}

#[test]
fn ipv6_only_relay_serves_clients_that_ask_for_no_family() {
    // A home reachable only over IPv6 (DS-Lite) has no IPv4 relay; browsers send no REQUESTED-ADDRESS-FAMILY.
    let mut c = cfg();
    c.external_ip = None;
    let mut t = T::with(c);
    t.core.relay_ips = vec!["2001:db8:1::1".parse().unwrap()];
    t.tuple.client = public("[2001:db8:2::7]:40000");
    t.tuple.server = public("[2001:db8:1::1]:3478");
    let r = t.request(METHOD_ALLOCATE, &|m| transport(m, 17));
    assert_eq!(code(&r), None, "{r}");
    assert_eq!(relayed(&r), public("[2001:db8:1::1]:50000"));
    // An explicit IPv4 request is still refused with 440 (RFC 8656 §7.2).
    t.tuple.client = public("[2001:db8:2::7]:40001");
    let r = t.request(METHOD_ALLOCATE, &|m| {
        transport(m, 17);
        m.add(AttrType(ATTR_REQUESTED_ADDRESS_FAMILY), &[1, 0, 0, 0]);
    });
    assert_eq!(code(&r), Some(440));
}

#[test]
fn ipv6_relay_advertises_external_ip6_and_relays_to_ipv6_peers_only() {
    let mut t = dual_stack();
    t.tuple.client = public("[2001:db8:2::7]:40000");
    let r = t.request(METHOD_ALLOCATE, &|m| {
        transport(m, 17);
        m.add(AttrType(ATTR_REQUESTED_ADDRESS_FAMILY), &[2, 0, 0, 0]);
    });
    assert_eq!(code(&r), None, "{r}");
    assert_eq!(relayed(&r), public("[2001:db8:1::1]:50000"), "turn.external_ip6 advertised");
    let peer = public("[2606:4700::1111]:5000");
    assert_eq!(code(&t.perm(peer)), None);
    assert_eq!(code(&t.perm(public("8.8.8.8:1"))), Some(443), "IPv4 peer on an IPv6-only allocation");
    for bad in ["[fd00::1]:1", "[fe80::1]:1", "[64:ff9b::a00:1]:1", "[2002:a00:1::1]:1", "[::ffff:10.0.0.1]:1"] {
        assert_eq!(code(&t.perm(public(bad))), Some(403), "{bad} must stay refused");
    }
    let out = t.feed(&send_indication(peer, b"hi"));
    assert_eq!(
        to_peer(&out).iter().map(|(r, p, _)| (*r, *p)).collect::<Vec<_>>(),
        [(public("[2001:db8:1::1]:50000"), peer)]
    );
    let (to, _) = peer_packet(&t, public("[2001:db8:1::1]:50000"), peer, b"back").expect("permitted peer");
    assert_eq!(to, t.tuple);
}

#[test]
fn additional_address_family_gives_a_relay_of_each_family() {
    let mut t = dual_stack();
    let r = t.request(METHOD_ALLOCATE, &|m| {
        transport(m, 17);
        m.add(AttrType(ATTR_ADDITIONAL_ADDRESS_FAMILY), &[2, 0, 0, 0]);
    });
    assert_eq!(code(&r), None, "{r}");
    assert_eq!(all_relayed(&r), [public("203.0.113.1:50000"), public("[2001:db8:1::1]:50001")]);
    assert_eq!(address_error(&r), None);
    // Peers of both families; each is reached from the relay of its own family.
    let (p4, p6) = (public("8.8.8.8:53"), public("[2606:4700::1111]:5000"));
    assert_eq!(
        code(&t.request(METHOD_CREATE_PERMISSION, &|m| {
            peer_attr(m, p4);
            peer_attr(m, p6);
        })),
        None
    );
    let sent: Vec<_> =
        [p4, p6].iter().flat_map(|p| to_peer(&t.feed(&send_indication(*p, b"x")))).map(|(r, p, _)| (r, p)).collect();
    assert_eq!(sent, [(local(public("0.0.0.0:50000")), p4), (public("[2001:db8:1::1]:50001"), p6)]);
    assert!(peer_packet(&t, public("[2001:db8:1::1]:50001"), p6, b"v6").is_some());
    assert!(peer_packet(&t, local(public("0.0.0.0:50000")), p4, b"v4").is_some());
    // The allocation holds two relay ports; deleting it closes both and returns both.
    assert_eq!(t.core.usage.lock().per_source.values().sum::<usize>(), 2);
    let out = t.feed(&t.build(METHOD_REFRESH, rand::random(), &|m| m.add(AttrType(ATTR_LIFETIME), &[0; 4]), true));
    let closed: Vec<_> =
        out.iter().filter_map(|a| if let Action::CloseRelay { relay } = a { Some(*relay) } else { None }).collect();
    assert_eq!(closed, [local(public("0.0.0.0:50000")), public("[2001:db8:1::1]:50001")]);
    assert!(t.core.usage.lock().per_source.is_empty());
}

#[test]
fn additional_address_family_without_an_ipv6_relay_and_bad_combinations() {
    let mut t = T::new();
    let r = t.request(METHOD_ALLOCATE, &|m| {
        transport(m, 17);
        m.add(AttrType(ATTR_ADDITIONAL_ADDRESS_FAMILY), &[2, 0, 0, 0]);
    });
    assert_eq!(code(&r), None, "the IPv4 relay is still allocated: {r}");
    assert_eq!(all_relayed(&r), [public("203.0.113.1:50000")]);
    assert_eq!(address_error(&r), Some((2, 440)), "and the answer says why there is no IPv6 one");
    t.tuple.client = public("198.51.100.7:40001");
    for (what, attrs) in [
        (
            "IPv4 as the additional family",
            &(|m: &mut Message| {
                m.add(AttrType(ATTR_ADDITIONAL_ADDRESS_FAMILY), &[1, 0, 0, 0]);
            }) as &dyn Fn(&mut Message),
        ),
        ("with REQUESTED-ADDRESS-FAMILY", &|m: &mut Message| {
            m.add(AttrType(ATTR_REQUESTED_ADDRESS_FAMILY), &[1, 0, 0, 0]);
            m.add(AttrType(ATTR_ADDITIONAL_ADDRESS_FAMILY), &[2, 0, 0, 0]);
        }),
        ("with EVEN-PORT R=1", &|m: &mut Message| {
            m.add(AttrType(ATTR_EVEN_PORT), &[0x80]);
            m.add(AttrType(ATTR_ADDITIONAL_ADDRESS_FAMILY), &[2, 0, 0, 0]);
        }),
    ] {
        let r = t.request(METHOD_ALLOCATE, &|m| {
            transport(m, 17);
            attrs(m);
        });
        assert_eq!(code(&r), Some(400), "{what}");
    }
}

#[test]
fn dual_allocation_keeps_its_ipv4_relay_when_no_ipv6_port_is_free() {
    let mut t = dual_stack();
    t.get_nonce();
    let pkt = t.build(
        METHOD_ALLOCATE,
        rand::random(),
        &|m| {
            transport(m, 17);
            m.add(AttrType(ATTR_ADDITIONAL_ADDRESS_FAMILY), &[2, 0, 0, 0]);
        },
        true,
    );
    let mut out = Vec::new();
    t.core.handle(&pkt, t.tuple, t.now, &mut out);
    let Some(Action::OpenRelay(first)) = out.pop() else { panic!("{out:?}") };
    assert!(first.ip.is_ipv4());
    t.core.relay_opened(first, Ok(public("10.1.1.1:50000")), t.now, &mut out);
    let Some(Action::OpenRelay(second)) = out.pop() else { panic!("{out:?}") };
    assert!(second.ip.is_ipv6());
    t.core.relay_opened(second, Err(std::io::Error::new(std::io::ErrorKind::AddrInUse, "full")), t.now, &mut out);
    let Some(Action::ToClient { data, .. }) = out.pop() else { panic!("{out:?}") };
    let r = codec::decode(&data).unwrap();
    assert_eq!(code(&r), None);
    assert_eq!(all_relayed(&r), [public("203.0.113.1:50000")]);
    assert_eq!(address_error(&r), Some((2, 508)));
    assert_eq!(t.core.usage.lock().per_source.values().sum::<usize>(), 1, "the IPv6 port is given back");
}

#[test]
fn client_over_ipv6_gets_an_ipv4_relay_cross_family() {
    // RFC 8656 allows any client family with any relay family: an IPv6-only phone relays to IPv4 peers.
    let mut t = T::new();
    t.tuple.client = public("[2001:db8:2::7]:40000");
    t.tuple.server = public("[2001:db8:1::1]:3478");
    assert_eq!(t.allocate(), public("203.0.113.1:50000"));
    let peer = public("8.8.8.8:53");
    assert_eq!(code(&t.perm(peer)), None);
    assert_eq!(to_peer(&t.feed(&send_indication(peer, b"x"))).len(), 1);
    let (to, _) = peer_packet(&t, local(public("0.0.0.0:50000")), peer, b"back").unwrap();
    assert_eq!(to.client, public("[2001:db8:2::7]:40000"));
}

#[test]
fn a_dual_allocations_families_are_refreshed_and_deleted_one_by_one() {
    let mut t = dual_stack();
    let r = t.request(METHOD_ALLOCATE, &|m| {
        transport(m, 17);
        m.add(AttrType(ATTR_ADDITIONAL_ADDRESS_FAMILY), &[2, 0, 0, 0]);
    });
    assert_eq!(all_relayed(&r).len(), 2, "{r}");
    let (v4, v6) = (local(public("0.0.0.0:50000")), public("[2001:db8:1::1]:50001"));
    let family = |f: u8, secs: u32| {
        move |m: &mut Message| {
            m.add(AttrType(ATTR_REQUESTED_ADDRESS_FAMILY), &[f, 0, 0, 0]);
            m.add(AttrType(ATTR_LIFETIME), &secs.to_be_bytes());
        }
    };
    // Only the IPv4 relay is refreshed (RFC 8656 §7.1): when the first lifetime ends, the IPv6 relay goes alone.
    assert_eq!(code(&t.request(METHOD_REFRESH, &family(1, 3600))), None);
    let (out, _) = t.tick_at(t.now + DEFAULT_ALLOCATION_LIFETIME);
    assert!(matches!(out.as_slice(), [Action::CloseRelay { relay }] if *relay == v6), "{out:?}");
    t.now += DEFAULT_ALLOCATION_LIFETIME;
    assert_eq!(t.core.allocation_count(), 1, "the IPv4 relay lives on");
    assert_eq!(t.core.usage.lock().per_source.values().sum::<usize>(), 1, "the IPv6 port is given back");
    assert_eq!(code(&t.perm(public("[2606:4700::1111]:1"))), Some(443), "no IPv6 relay any more");
    assert_eq!(code(&t.request(METHOD_REFRESH, &family(2, 600))), Some(443), "a deleted family");
    assert_eq!(code(&t.perm(public("8.8.8.8:1"))), None);
    assert!(t.core.by_relay.contains_key(&v4) && !t.core.by_relay.contains_key(&v6));
    // A Refresh to 0 naming the last family deletes the allocation.
    let out = t.feed(&t.build(METHOD_REFRESH, rand::random(), &family(1, 0), true));
    assert!(out.iter().any(|a| matches!(a, Action::CloseRelay { relay } if *relay == v4)), "{out:?}");
    assert_eq!(t.core.allocation_count(), 0);
    assert!(t.core.usage.lock().per_source.is_empty());

    // A Refresh to 0 for one family of a fresh dual allocation closes just that relay at once.
    t.tuple.client = public("198.51.100.7:40001");
    let r = t.request(METHOD_ALLOCATE, &|m| {
        transport(m, 17);
        m.add(AttrType(ATTR_ADDITIONAL_ADDRESS_FAMILY), &[2, 0, 0, 0]);
    });
    let relays = all_relayed(&r);
    let v6b = relays[1];
    let out = t.feed(&t.build(METHOD_REFRESH, rand::random(), &family(2, 0), true));
    let closed: Vec<_> =
        out.iter().filter_map(|a| if let Action::CloseRelay { relay } = a { Some(*relay) } else { None }).collect();
    assert_eq!(closed, [v6b]);
    assert_eq!(t.core.allocation_count(), 1);
    assert_eq!(code(&t.perm(public("8.8.8.8:1"))), None, "the IPv4 relay still works");
}
