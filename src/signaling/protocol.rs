//! Wire format of protocol v1 (docs/protocol.md): parsing client messages into typed values with the contract's
//! error classes, and serializing server messages.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::ids::Id;

pub const VERSION: u64 = 1;

/// A parsed client message. Borrowed from the frame's text so that `signal.data` is forwarded without being
/// re-parsed into a tree.
#[derive(Debug)]
pub enum ClientMsg<'a> {
    /// `identity`: the base64url public key of a lasting identity (docs/protocol.md), checked by the hub.
    Hello {
        v: u64,
        token: Option<String>,
        identity: Option<String>,
    },
    Connect {
        to: String,
    },
    Cancel {
        to: String,
    },
    Accept {
        from: String,
    },
    Decline {
        from: String,
    },
    Signal {
        to: String,
        data: &'a RawValue,
    },
    Bye {
        to: String,
    },
    RefreshIce,
    Ping {
        t: Option<&'a RawValue>,
    },
    Rejoin {
        to: String,
        ticket: String,
    },
    IdentityProof {
        signature: String,
    },
    ContactAdd {
        id: String,
    },
    ContactRemove {
        id: String,
    },
    Block {
        id: String,
    },
    Unblock {
        id: String,
    },
}

impl ClientMsg<'_> {
    /// Every client message type, in [`ClientMsg::index`] order.
    pub const TYPES: [&'static str; 15] = [
        "hello",
        "connect",
        "cancel",
        "accept",
        "decline",
        "signal",
        "bye",
        "refresh_ice",
        "ping",
        "rejoin",
        "identity_proof",
        "contact_add",
        "contact_remove",
        "block",
        "unblock",
    ];

    pub fn index(&self) -> usize {
        match self {
            ClientMsg::Hello { .. } => 0,
            ClientMsg::Connect { .. } => 1,
            ClientMsg::Cancel { .. } => 2,
            ClientMsg::Accept { .. } => 3,
            ClientMsg::Decline { .. } => 4,
            ClientMsg::Signal { .. } => 5,
            ClientMsg::Bye { .. } => 6,
            ClientMsg::RefreshIce => 7,
            ClientMsg::Ping { .. } => 8,
            ClientMsg::Rejoin { .. } => 9,
            ClientMsg::IdentityProof { .. } => 10,
            ClientMsg::ContactAdd { .. } => 11,
            ClientMsg::ContactRemove { .. } => 12,
            ClientMsg::Block { .. } => 13,
            ClientMsg::Unblock { .. } => 14,
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            ClientMsg::Hello { .. } => "hello",
            ClientMsg::Connect { .. } => "connect",
            ClientMsg::Cancel { .. } => "cancel",
            ClientMsg::Accept { .. } => "accept",
            ClientMsg::Decline { .. } => "decline",
            ClientMsg::Signal { .. } => "signal",
            ClientMsg::Bye { .. } => "bye",
            ClientMsg::RefreshIce => "refresh_ice",
            ClientMsg::Ping { .. } => "ping",
            ClientMsg::Rejoin { .. } => "rejoin",
            ClientMsg::IdentityProof { .. } => "identity_proof",
            ClientMsg::ContactAdd { .. } => "contact_add",
            ClientMsg::ContactRemove { .. } => "contact_remove",
            ClientMsg::Block { .. } => "block",
            ClientMsg::Unblock { .. } => "unblock",
        }
    }
}

/// Why a frame could not be turned into a [`ClientMsg`]; each maps to one error code of the contract.
#[derive(Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Not a JSON object.
    BadJson,
    /// A JSON object without a string `type`, or a known type with missing/mistyped fields (`ref` = the type).
    BadMessage {
        ty: Option<String>,
        detail: String,
    },
    UnknownType(String),
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    ty: Option<std::borrow::Cow<'a, str>>,
}

#[derive(Deserialize)]
struct HelloIn {
    v: u64,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    identity: Option<IdentityIn>,
}
#[derive(Deserialize)]
struct IdentityIn {
    key: String,
}
#[derive(Deserialize)]
struct ProofIn {
    signature: String,
}
#[derive(Deserialize)]
struct IdIn {
    id: String,
}
#[derive(Deserialize)]
struct ToIn {
    to: String,
}
#[derive(Deserialize)]
struct FromIn {
    from: String,
}
#[derive(Deserialize)]
struct SignalIn<'a> {
    to: String,
    #[serde(borrow)]
    data: &'a RawValue,
}
#[derive(Deserialize)]
struct RejoinIn {
    to: String,
    ticket: String,
}
#[derive(Deserialize)]
struct PingIn<'a> {
    #[serde(borrow, default)]
    t: Option<&'a RawValue>,
}

/// Parse one text frame. Two passes (envelope, then the typed body) keep the three error classes apart:
/// not-an-object, unknown type, and a known type with bad fields.
pub fn parse(text: &str) -> Result<ClientMsg<'_>, ParseError> {
    // serde's derived structs also accept JSON arrays (by position); the contract wants objects only.
    if !text.trim_start().starts_with('{') {
        return Err(ParseError::BadJson);
    }
    let env: Envelope<'_> = match serde_json::from_str(text) {
        Ok(e) => e,
        Err(e) if e.is_data() => {
            return Err(ParseError::BadMessage { ty: None, detail: "`type` must be a string".into() })
        }
        Err(_) => return Err(ParseError::BadJson),
    };
    let Some(ty) = env.ty else {
        return Err(ParseError::BadMessage { ty: None, detail: "missing `type`".into() });
    };
    fn body<'a, T: Deserialize<'a>>(text: &'a str, ty: &str) -> Result<T, ParseError> {
        serde_json::from_str(text)
            .map_err(|e| ParseError::BadMessage { ty: Some(ty.to_string()), detail: field_error(&e) })
    }
    Ok(match &*ty {
        "hello" => {
            let h: HelloIn = body(text, "hello")?;
            ClientMsg::Hello { v: h.v, token: h.token, identity: h.identity.map(|i| i.key) }
        }
        "connect" => ClientMsg::Connect { to: body::<ToIn>(text, "connect")?.to },
        "cancel" => ClientMsg::Cancel { to: body::<ToIn>(text, "cancel")?.to },
        "bye" => ClientMsg::Bye { to: body::<ToIn>(text, "bye")?.to },
        "accept" => ClientMsg::Accept { from: body::<FromIn>(text, "accept")?.from },
        "decline" => ClientMsg::Decline { from: body::<FromIn>(text, "decline")?.from },
        "signal" => {
            let s: SignalIn<'_> = body(text, "signal")?;
            ClientMsg::Signal { to: s.to, data: s.data }
        }
        "refresh_ice" => ClientMsg::RefreshIce,
        "ping" => ClientMsg::Ping { t: body::<PingIn<'_>>(text, "ping")?.t },
        "rejoin" => {
            let r: RejoinIn = body(text, "rejoin")?;
            ClientMsg::Rejoin { to: r.to, ticket: r.ticket }
        }
        "identity_proof" => ClientMsg::IdentityProof { signature: body::<ProofIn>(text, "identity_proof")?.signature },
        "contact_add" => ClientMsg::ContactAdd { id: body::<IdIn>(text, "contact_add")?.id },
        "contact_remove" => ClientMsg::ContactRemove { id: body::<IdIn>(text, "contact_remove")?.id },
        "block" => ClientMsg::Block { id: body::<IdIn>(text, "block")?.id },
        "unblock" => ClientMsg::Unblock { id: body::<IdIn>(text, "unblock")?.id },
        other => {
            // Echo at most a short, printable prefix of an unknown type back: it goes into our reply.
            let shown: String = other.chars().filter(|c| !c.is_control()).take(40).collect();
            return Err(ParseError::UnknownType(shown));
        }
    })
}

/// serde's message without the "at line 1 column 37" noise, which means nothing to a client author.
fn field_error(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.find(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

#[derive(Serialize, Debug, Clone)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

#[derive(Serialize, Debug, Clone)]
pub struct PeerTicket {
    pub peer: Id,
    pub ticket: String,
}

#[derive(Serialize, Debug, Clone)]
pub struct IdentityInfo {
    pub key: String,
}

/// One entry of `welcome.contacts`: `online` is only ever true when `mutual` is.
#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContactState {
    pub peer: Id,
    pub mutual: bool,
    pub online: bool,
}

#[derive(Serialize, Debug, Clone, Copy)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub messages_per_sec: u32,
    pub connect_requests_per_min: u32,
}

#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    Cancelled,
    Timeout,
    Left,
}

#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LeftReason {
    Bye,
    Disconnected,
}

/// Every error code of the contract.
#[derive(Serialize, serde::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadJson,
    BadMessage,
    UnknownType,
    HelloRequired,
    UnsupportedVersion,
    UnknownPeer,
    SelfConnect,
    DuplicateRequest,
    AlreadyPaired,
    NoRequest,
    NotPaired,
    PeerAway,
    RateLimited,
    TooManyRequests,
    BinaryNotSupported,
    TooLarge,
    ServerFull,
    TooManySessions,
    BadTicket,
    BadKey,
    BadSignature,
    ProofRequired,
    TooManyIdentities,
    IdentityRequired,
    NotIdentity,
    TooManyContacts,
    /// A cross-node operation could not be carried out: Redis is unreachable or the cluster queue is full.
    ClusterUnavailable,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 27] = [
        ErrorCode::BadJson,
        ErrorCode::BadMessage,
        ErrorCode::UnknownType,
        ErrorCode::HelloRequired,
        ErrorCode::UnsupportedVersion,
        ErrorCode::UnknownPeer,
        ErrorCode::SelfConnect,
        ErrorCode::DuplicateRequest,
        ErrorCode::AlreadyPaired,
        ErrorCode::NoRequest,
        ErrorCode::NotPaired,
        ErrorCode::PeerAway,
        ErrorCode::RateLimited,
        ErrorCode::TooManyRequests,
        ErrorCode::BinaryNotSupported,
        ErrorCode::TooLarge,
        ErrorCode::ServerFull,
        ErrorCode::TooManySessions,
        ErrorCode::BadTicket,
        ErrorCode::BadKey,
        ErrorCode::BadSignature,
        ErrorCode::ProofRequired,
        ErrorCode::TooManyIdentities,
        ErrorCode::IdentityRequired,
        ErrorCode::NotIdentity,
        ErrorCode::TooManyContacts,
        ErrorCode::ClusterUnavailable,
    ];

    /// The wire name (`bad_json`), as serde writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::BadMessage => "bad_message",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::HelloRequired => "hello_required",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::UnknownPeer => "unknown_peer",
            ErrorCode::SelfConnect => "self_connect",
            ErrorCode::DuplicateRequest => "duplicate_request",
            ErrorCode::AlreadyPaired => "already_paired",
            ErrorCode::NoRequest => "no_request",
            ErrorCode::NotPaired => "not_paired",
            ErrorCode::PeerAway => "peer_away",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooManyRequests => "too_many_requests",
            ErrorCode::BinaryNotSupported => "binary_not_supported",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::ServerFull => "server_full",
            ErrorCode::TooManySessions => "too_many_sessions",
            ErrorCode::BadTicket => "bad_ticket",
            ErrorCode::BadKey => "bad_key",
            ErrorCode::BadSignature => "bad_signature",
            ErrorCode::ProofRequired => "proof_required",
            ErrorCode::TooManyIdentities => "too_many_identities",
            ErrorCode::IdentityRequired => "identity_required",
            ErrorCode::NotIdentity => "not_identity",
            ErrorCode::TooManyContacts => "too_many_contacts",
            ErrorCode::ClusterUnavailable => "cluster_unavailable",
        }
    }
}

/// Server → client messages (except `signal`, which [`signal`] writes around the raw payload).
#[derive(Serialize, Debug)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg<'a> {
    Welcome {
        v: u64,
        id: Id,
        display_id: String,
        token: String,
        resumed: bool,
        /// The ID came back from a token this process did not know (after a restart): same ID, no pairings.
        restored: bool,
        ice_servers: &'a [IceServer],
        ice_expires: u64,
        peers: Vec<Id>,
        limits: Limits,
        /// Identity sessions only (docs/protocol.md, "Identities, contacts and presence").
        #[serde(skip_serializing_if = "Option::is_none")]
        identity: Option<IdentityInfo>,
        #[serde(skip_serializing_if = "Option::is_none")]
        contacts: Option<Vec<ContactState>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        blocked: Option<Vec<Id>>,
    },
    Incoming {
        peer: Id,
        /// The requester's identity key, when it has one.
        #[serde(skip_serializing_if = "Option::is_none")]
        peer_key: Option<String>,
    },
    IncomingCancelled {
        peer: Id,
        reason: CancelReason,
    },
    RequestSent {
        peer: Id,
    },
    RequestCancelled {
        peer: Id,
    },
    RequestTimeout {
        peer: Id,
    },
    Declined {
        peer: Id,
    },
    Paired {
        peer: Id,
        initiator: bool,
        ticket: String,
        /// The partner's identity key, when it has one.
        #[serde(skip_serializing_if = "Option::is_none")]
        peer_key: Option<String>,
    },
    IdentityChallenge {
        challenge: String,
    },
    Contact {
        peer: Id,
        mutual: bool,
        online: bool,
    },
    ContactRemoved {
        peer: Id,
    },
    Blocked {
        peer: Id,
    },
    Unblocked {
        peer: Id,
    },
    Presence {
        peer: Id,
        online: bool,
    },
    RejoinWaiting {
        peer: Id,
    },
    Tokens {
        token: String,
        tickets: Vec<PeerTicket>,
    },
    PeerAway {
        peer: Id,
    },
    PeerBack {
        peer: Id,
    },
    PeerLeft {
        peer: Id,
        reason: LeftReason,
    },
    IceServers {
        ice_servers: &'a [IceServer],
        ice_expires: u64,
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        t: Option<&'a RawValue>,
    },
    Error {
        code: ErrorCode,
        message: &'a str,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        ref_: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        peer: Option<Id>,
    },
}

impl ServerMsg<'_> {
    pub fn to_text(&self) -> String {
        // Serializing these types cannot fail: no maps with non-string keys, no failing Serialize impls.
        serde_json::to_string(self)
            .unwrap_or_else(|_| String::from(r#"{"type":"error","code":"bad_message","message":"internal"}"#))
    }
}

/// `signal{from, data}` built around the sender's raw JSON, so the payload is forwarded byte for byte.
pub fn signal(from: Id, data: &RawValue) -> String {
    let raw = data.get();
    let mut s = String::with_capacity(raw.len() + 48);
    s.push_str(r#"{"type":"signal","from":""#);
    s.push_str(from.as_str());
    s.push_str(r#"","data":"#);
    s.push_str(raw);
    s.push('}');
    s
}

pub fn error(code: ErrorCode, message: &str, ref_: Option<&str>, peer: Option<Id>) -> String {
    ServerMsg::Error { code, message, ref_, peer }.to_text()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_classes() {
        assert_eq!(parse("nope").unwrap_err(), ParseError::BadJson);
        assert_eq!(parse("[\"hello\",1]").unwrap_err(), ParseError::BadJson);
        assert_eq!(parse("{\"type\":").unwrap_err(), ParseError::BadJson);
        assert!(matches!(parse("{\"type\":5}").unwrap_err(), ParseError::BadMessage { ty: None, .. }));
        assert!(matches!(parse("{}").unwrap_err(), ParseError::BadMessage { ty: None, .. }));
        assert_eq!(parse("{\"type\":\"dance\"}").unwrap_err(), ParseError::UnknownType("dance".into()));
        match parse("{\"type\":\"connect\",\"to\":5}").unwrap_err() {
            ParseError::BadMessage { ty, detail } => {
                assert_eq!(ty.as_deref(), Some("connect"));
                assert!(!detail.contains("line"), "{detail}");
            }
            e => panic!("{e:?}"),
        }
        assert!(matches!(parse("{\"type\":\"signal\",\"to\":\"x\"}").unwrap_err(), ParseError::BadMessage { .. }));
    }

    #[test]
    fn identity_messages_parse_with_their_fields() {
        let m = parse(r#"{"type":"hello","v":1,"identity":{"key":"BAAA"}}"#).unwrap();
        assert!(matches!(m, ClientMsg::Hello { identity: Some(ref k), token: None, .. } if k == "BAAA"));
        assert!(matches!(parse(r#"{"type":"hello","v":1}"#).unwrap(), ClientMsg::Hello { identity: None, .. }));
        // `identity` must be an object with a string key.
        for bad in [r#"{"type":"hello","v":1,"identity":"BAAA"}"#, r#"{"type":"hello","v":1,"identity":{}}"#] {
            assert!(matches!(parse(bad).unwrap_err(), ParseError::BadMessage { ty: Some(ref t), .. } if t == "hello"));
        }
        let m = parse(r#"{"type":"identity_proof","signature":"c2ln"}"#).unwrap();
        assert!(matches!(m, ClientMsg::IdentityProof { ref signature } if signature == "c2ln"));
        for (ty, idx) in [("contact_add", 11), ("contact_remove", 12), ("block", 13), ("unblock", 14)] {
            let text = format!(r#"{{"type":"{ty}","id":"abcd2345"}}"#);
            let m = parse(&text).unwrap();
            assert_eq!((m.type_name(), m.index()), (ty, idx));
            assert_eq!(ClientMsg::TYPES[idx], ty);
            let e = parse(&format!(r#"{{"type":"{ty}","to":"abcd2345"}}"#)).unwrap_err();
            assert!(matches!(e, ParseError::BadMessage { ty: Some(ref t), .. } if t == ty), "{e:?}");
        }
        assert!(matches!(parse(r#"{"type":"identity_proof"}"#).unwrap_err(), ParseError::BadMessage { .. }));
    }

    #[test]
    fn identity_server_messages_shape() {
        let peer = Id::parse("abcd2345").unwrap();
        let v = |m: ServerMsg<'_>| serde_json::from_str::<serde_json::Value>(&m.to_text()).unwrap();
        assert_eq!(
            v(ServerMsg::Presence { peer, online: true }),
            serde_json::json!({"type":"presence","peer":"abcd2345","online":true})
        );
        assert_eq!(
            v(ServerMsg::Contact { peer, mutual: false, online: false }),
            serde_json::json!({"type":"contact","peer":"abcd2345","mutual":false,"online":false})
        );
        assert_eq!(
            v(ServerMsg::Incoming { peer, peer_key: None }),
            serde_json::json!({"type":"incoming","peer":"abcd2345"})
        );
        assert_eq!(
            v(ServerMsg::Incoming { peer, peer_key: Some("k".into()) }),
            serde_json::json!({"type":"incoming","peer":"abcd2345","peer_key":"k"})
        );
        assert_eq!(
            v(ServerMsg::IdentityChallenge { challenge: "c".into() }),
            serde_json::json!({"type":"identity_challenge","challenge":"c"})
        );
    }

    #[test]
    fn signal_is_forwarded_verbatim_and_from_is_ours() {
        let m = parse(r#"{"type":"signal","to":"abcd2345","from":"evil","data":{"sdp":"v=0\r\n","n":[1,2]}}"#).unwrap();
        let ClientMsg::Signal { to, data } = m else { panic!() };
        assert_eq!(to, "abcd2345");
        let from = Id::parse("k7m2x9p4").unwrap();
        let out: serde_json::Value = serde_json::from_str(&signal(from, data)).unwrap();
        assert_eq!(out["from"], "k7m2x9p4");
        assert_eq!(out["data"]["sdp"], "v=0\r\n");
        assert_eq!(out["data"]["n"][1], 2);
    }

    #[test]
    fn server_messages_shape() {
        let peer = Id::parse("abcd2345").unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&ServerMsg::IncomingCancelled { peer, reason: CancelReason::Timeout }.to_text())
                .unwrap();
        assert_eq!(v, serde_json::json!({"type":"incoming_cancelled","peer":"abcd2345","reason":"timeout"}));
        let v: serde_json::Value =
            serde_json::from_str(&error(ErrorCode::NotPaired, "m", Some("signal"), Some(peer))).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"error","code":"not_paired","message":"m","ref":"signal","peer":"abcd2345"})
        );
        let v: serde_json::Value = serde_json::from_str(&ServerMsg::Pong { t: None }.to_text()).unwrap();
        assert_eq!(v, serde_json::json!({"type":"pong"}));
        for c in ErrorCode::ALL {
            assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
        }
    }
}
