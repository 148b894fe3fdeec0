//! Wire helpers over the `stun`/`turn::proto` codecs: STUN vs ChannelData classification, zero-copy attribute walking, TCP stream framing (RFC 8656 §11.5), and in-place encoding of relayed data (RFC 8656 §11.4, §12.4).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;

use stun::message::Message;

pub const MAGIC_COOKIE: u32 = 0x2112_A442;
pub const STUN_HEADER: usize = 20;

pub const ATTR_USERNAME: u16 = 0x0006;
pub const ATTR_MESSAGE_INTEGRITY: u16 = 0x0008;
pub const ATTR_ERROR_CODE: u16 = 0x0009;
pub const ATTR_UNKNOWN_ATTRIBUTES: u16 = 0x000A;
pub const ATTR_CHANNEL_NUMBER: u16 = 0x000C;
pub const ATTR_LIFETIME: u16 = 0x000D;
pub const ATTR_XOR_PEER_ADDRESS: u16 = 0x0012;
pub const ATTR_DATA: u16 = 0x0013;
pub const ATTR_REALM: u16 = 0x0014;
pub const ATTR_NONCE: u16 = 0x0015;
pub const ATTR_XOR_RELAYED_ADDRESS: u16 = 0x0016;
pub const ATTR_REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
pub const ATTR_EVEN_PORT: u16 = 0x0018;
pub const ATTR_REQUESTED_TRANSPORT: u16 = 0x0019;
pub const ATTR_DONT_FRAGMENT: u16 = 0x001A;
pub const ATTR_MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
pub const ATTR_PASSWORD_ALGORITHM: u16 = 0x001D;
pub const ATTR_USERHASH: u16 = 0x001E;
pub const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;
pub const ATTR_RESERVATION_TOKEN: u16 = 0x0022;
/// RFC 8656 §18.11/§18.12: a second relayed address of the other family (dual allocation), and why a family
/// could not be allocated (in a success response).
pub const ATTR_ADDITIONAL_ADDRESS_FAMILY: u16 = 0x8000;
pub const ATTR_ADDRESS_ERROR_CODE: u16 = 0x8001;
pub const ATTR_SOFTWARE: u16 = 0x8022;
pub const ATTR_FINGERPRINT: u16 = 0x8028;

/// STUN method numbers (RFC 8489 §18.2, RFC 8656 §17).
pub const METHOD_BINDING: u16 = 0x001;
pub const METHOD_ALLOCATE: u16 = 0x003;
pub const METHOD_REFRESH: u16 = 0x004;
pub const METHOD_SEND: u16 = 0x006;
pub const METHOD_DATA: u16 = 0x007;
pub const METHOD_CREATE_PERMISSION: u16 = 0x008;
pub const METHOD_CHANNEL_BIND: u16 = 0x009;

/// Room a relay socket task leaves in front of a peer datagram so that the core can prepend the
/// Data-indication header (20 header + XOR-PEER-ADDRESS for IPv6 (24) + DATA header (4)) without copying.
pub const HEADROOM: usize = 48;
/// Room behind a peer datagram for DATA / ChannelData-over-TCP padding.
pub const TAILROOM: usize = 4;

/// Input that cannot be a STUN message or ChannelData frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// What the first bytes of a datagram (or a TCP frame) say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Stun,
    ChannelData,
    Garbage,
}

/// Classify by the first byte (RFC 7983 demultiplexing: 0-3 STUN, 64-79 ChannelData) and the magic cookie.
pub fn classify(b: &[u8]) -> Kind {
    if b.len() >= STUN_HEADER && b[0] < 0x40 && b[4..8] == MAGIC_COOKIE.to_be_bytes() {
        Kind::Stun
    } else if b.len() >= 4 && (0x40..0x80).contains(&b[0]) {
        Kind::ChannelData
    } else {
        Kind::Garbage
    }
}

/// A parsed ChannelData header: channel number and where the application data sits in the input.
pub fn parse_channel_data(b: &[u8]) -> Option<(u16, Range<usize>)> {
    if b.len() < 4 {
        return None;
    }
    let ch = u16::from_be_bytes([b[0], b[1]]);
    let len = u16::from_be_bytes([b[2], b[3]]) as usize;
    if !(0x4000..=0x7FFF).contains(&ch) || 4 + len > b.len() {
        return None;
    }
    Some((ch, 4..4 + len))
}

/// Over TCP, how long the frame starting at `b` is (STUN: header + length; ChannelData: padded to 4, RFC 8656
/// §11.5), `Ok(None)` when more bytes are needed, `Err` when the stream cannot be a STUN/TURN stream.
pub fn tcp_frame_len(b: &[u8]) -> Result<Option<usize>, Malformed> {
    if b.len() < 4 {
        return Ok(None);
    }
    let len = u16::from_be_bytes([b[2], b[3]]) as usize;
    let total = match b[0] {
        0x00..=0x3F => {
            // STUN messages are always a multiple of 4 long.
            if len % 4 != 0 {
                return Err(Malformed);
            }
            STUN_HEADER + len
        }
        0x40..=0x7F => 4 + ((len + 3) & !3),
        _ => return Err(Malformed),
    };
    Ok(if b.len() >= total { Some(total) } else { None })
}

/// Iterate the attributes of a STUN message without copying: `(type, value range in b)`. Stops at the first
/// malformed attribute (`Err`) so that callers reject truncated input.
pub fn attrs(b: &[u8]) -> impl Iterator<Item = Result<(u16, Range<usize>), Malformed>> + '_ {
    let end =
        if b.len() >= STUN_HEADER { (STUN_HEADER + u16::from_be_bytes([b[2], b[3]]) as usize).min(b.len()) } else { 0 };
    let mut off = STUN_HEADER.min(end);
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || off >= end {
            return None;
        }
        if off + 4 > end {
            failed = true;
            return Some(Err(Malformed));
        }
        let t = u16::from_be_bytes([b[off], b[off + 1]]);
        let l = u16::from_be_bytes([b[off + 2], b[off + 3]]) as usize;
        let v = off + 4..off + 4 + l;
        if v.end > end {
            failed = true;
            return Some(Err(Malformed));
        }
        off = (v.end + 3) & !3;
        Some(Ok((t, v)))
    })
}

/// First attribute of type `t` (value range), `Err` if the message is malformed before it.
pub fn find_attr(b: &[u8], t: u16) -> Result<Option<Range<usize>>, Malformed> {
    for a in attrs(b) {
        let (ty, r) = a?;
        if ty == t {
            return Ok(Some(r));
        }
    }
    Ok(None)
}

/// The STUN message type split into (method, class bits) (RFC 8489 §5).
pub fn method_and_class(b: &[u8]) -> (u16, u8) {
    let t = u16::from_be_bytes([b[0], b[1]]);
    let method = (t & 0x000F) | ((t & 0x00E0) >> 1) | ((t & 0x3E00) >> 2);
    let class = (((t >> 4) & 1) | ((t >> 7) & 2)) as u8;
    (method, class)
}

pub fn transaction_id(b: &[u8]) -> [u8; 12] {
    let mut t = [0u8; 12];
    t.copy_from_slice(&b[8..20]);
    t
}

/// Decode an XOR-*-ADDRESS value strictly (exact length per family), RFC 8489 §14.2.
pub fn decode_xor_addr(v: &[u8], txid: &[u8; 12]) -> Option<SocketAddr> {
    if v.len() < 4 {
        return None;
    }
    let port = u16::from_be_bytes([v[2], v[3]]) ^ (MAGIC_COOKIE >> 16) as u16;
    let cookie = MAGIC_COOKIE.to_be_bytes();
    match (v[1], v.len()) {
        (0x01, 8) => {
            let mut ip = [0u8; 4];
            for i in 0..4 {
                ip[i] = v[4 + i] ^ cookie[i];
            }
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port))
        }
        (0x02, 20) => {
            let mut ip = [0u8; 16];
            for i in 0..16 {
                let k = if i < 4 { cookie[i] } else { txid[i - 4] };
                ip[i] = v[4 + i] ^ k;
            }
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port))
        }
        _ => None,
    }
}

/// Write an XOR-*-ADDRESS attribute (header + value) at `out[0..]`, returning its length (12 or 24).
fn encode_xor_addr_attr(out: &mut [u8], t: u16, addr: SocketAddr, txid: &[u8; 12]) -> usize {
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
    out[0..2].copy_from_slice(&t.to_be_bytes());
    out[4] = 0;
    out[6..8].copy_from_slice(&port.to_be_bytes());
    match addr.ip() {
        IpAddr::V4(ip) => {
            out[2..4].copy_from_slice(&8u16.to_be_bytes());
            out[5] = 0x01;
            let o = ip.octets();
            for i in 0..4 {
                out[8 + i] = o[i] ^ cookie[i];
            }
            12
        }
        IpAddr::V6(ip) => {
            out[2..4].copy_from_slice(&20u16.to_be_bytes());
            out[5] = 0x02;
            let o = ip.octets();
            for i in 0..16 {
                let k = if i < 4 { cookie[i] } else { txid[i - 4] };
                out[8 + i] = o[i] ^ k;
            }
            24
        }
    }
}

/// Wrap `buf[start..start+len]` (with [`HEADROOM`] before and [`TAILROOM`] after) as ChannelData in place;
/// pads to 4 bytes when `pad` (TCP, RFC 8656 §11.5). Returns the frame's range in `buf`.
pub fn wrap_channel_data(buf: &mut [u8], start: usize, len: usize, channel: u16, pad: bool) -> Range<usize> {
    let h = start - 4;
    buf[h..h + 2].copy_from_slice(&channel.to_be_bytes());
    buf[h + 2..h + 4].copy_from_slice(&(len as u16).to_be_bytes());
    let mut end = start + len;
    if pad {
        let p = (4 - len % 4) % 4;
        buf[end..end + p].fill(0);
        end += p;
    }
    h..end
}

/// Wrap `buf[start..start+len]` as a Data indication from `peer` in place (RFC 8656 §11.4 / §12.4): header,
/// XOR-PEER-ADDRESS, DATA (padded). No per-packet allocation: this is the peer→client hot path without a channel.
pub fn wrap_data_indication(
    buf: &mut [u8],
    start: usize,
    len: usize,
    peer: SocketAddr,
    txid: &[u8; 12],
) -> Range<usize> {
    let addr_len = if peer.is_ipv4() { 12 } else { 24 };
    let h = start - 4 - addr_len - STUN_HEADER;
    let pad = (4 - len % 4) % 4;
    let body = addr_len + 4 + len + pad;
    // Data indication: method 0x007, class indication → type 0x0017.
    buf[h..h + 2].copy_from_slice(&0x0017u16.to_be_bytes());
    buf[h + 2..h + 4].copy_from_slice(&(body as u16).to_be_bytes());
    buf[h + 4..h + 8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    buf[h + 8..h + 20].copy_from_slice(txid);
    encode_xor_addr_attr(&mut buf[h + 20..], ATTR_XOR_PEER_ADDRESS, peer, txid);
    let d = h + 20 + addr_len;
    buf[d..d + 2].copy_from_slice(&ATTR_DATA.to_be_bytes());
    buf[d + 2..d + 4].copy_from_slice(&(len as u16).to_be_bytes());
    let end = start + len;
    buf[end..end + pad].fill(0);
    h..end + pad
}

/// A Binding success response (RFC 8489 §7.3.1.1): XOR-MAPPED-ADDRESS, SOFTWARE if given, FINGERPRINT if the
/// request had one.
pub fn binding_success(txid: &[u8; 12], mapped: SocketAddr, software: Option<&str>, fingerprint: bool) -> Vec<u8> {
    let sw = software.map(|s| &s.as_bytes()[..s.len().min(763)]);
    let mut b = Vec::with_capacity(STUN_HEADER + 24 + sw.map_or(0, |s| 4 + s.len() + 3) + 8);
    b.extend_from_slice(&0x0101u16.to_be_bytes());
    b.extend_from_slice(&[0, 0]);
    b.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
    b.extend_from_slice(txid);
    let mut attr = [0u8; 24];
    let n = encode_xor_addr_attr(&mut attr, ATTR_XOR_MAPPED_ADDRESS, mapped, txid);
    b.extend_from_slice(&attr[..n]);
    if let Some(sw) = sw {
        b.extend_from_slice(&ATTR_SOFTWARE.to_be_bytes());
        b.extend_from_slice(&(sw.len() as u16).to_be_bytes());
        b.extend_from_slice(sw);
        b.resize((b.len() + 3) & !3, 0);
    }
    if fingerprint {
        let len = (b.len() - STUN_HEADER + 8) as u16;
        b[2..4].copy_from_slice(&len.to_be_bytes());
        let crc = stun::fingerprint::fingerprint_value(&b);
        b.extend_from_slice(&ATTR_FINGERPRINT.to_be_bytes());
        b.extend_from_slice(&4u16.to_be_bytes());
        b.extend_from_slice(&crc.to_be_bytes());
    } else {
        let len = (b.len() - STUN_HEADER) as u16;
        b[2..4].copy_from_slice(&len.to_be_bytes());
    }
    b
}

/// A STUN message decoded by the `stun` crate, for the control path (requests), where allocation is fine.
pub fn decode(b: &[u8]) -> Option<Message> {
    let mut m = Message::new();
    m.raw.clear();
    m.raw.extend_from_slice(b);
    m.decode().ok()?;
    Some(m)
}

/// A new message skeleton with the given method, class (0 request, 1 indication, 2 success, 3 error) and
/// transaction, ready for the `stun` crate's setters. (stun 0.17 keeps `Method`/`MessageClass` constructors
/// private, so the header is written here and decoded back.)
pub fn message(method: u16, class: u8, txid: [u8; 12]) -> Message {
    let t = (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | (((class & 1) as u16) << 4)
        | (((class & 2) as u16) << 7);
    let mut m = Message::new();
    m.raw.clear();
    m.raw.extend_from_slice(&t.to_be_bytes());
    m.raw.extend_from_slice(&[0, 0]);
    m.raw.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
    m.raw.extend_from_slice(&txid);
    m.decode().expect("a bare header decodes");
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_and_channel_data() {
        assert_eq!(classify(&[0x40, 0x00, 0x00, 0x00]), Kind::ChannelData);
        assert_eq!(classify(&[0x80, 0, 0, 0]), Kind::Garbage);
        assert_eq!(classify(&[0x00; 19]), Kind::Garbage);
        let mut stun = [0u8; 20];
        stun[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        assert_eq!(classify(&stun), Kind::Stun);
        assert_eq!(parse_channel_data(&[0x40, 0x01, 0, 2, 9, 9]), Some((0x4001, 4..6)));
        assert_eq!(parse_channel_data(&[0x40, 0x01, 0, 3, 9, 9]), None, "truncated");
        assert_eq!(parse_channel_data(&[0x80, 0x01, 0, 0]), None);
    }

    #[test]
    fn tcp_framing_pads_channel_data() {
        assert_eq!(tcp_frame_len(&[0x40, 0x00, 0x00]), Ok(None));
        assert_eq!(tcp_frame_len(&[0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5]), Ok(None), "needs 3 padding bytes");
        assert_eq!(tcp_frame_len(&[0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0, 0]), Ok(Some(12)));
        assert_eq!(tcp_frame_len(&[0x00, 0x01, 0x00, 0x03]), Err(Malformed), "STUN length not a multiple of 4");
        assert_eq!(tcp_frame_len(&[0xFF, 0x01, 0x00, 0x00]), Err(Malformed));
        let mut stun = vec![0u8; 24];
        stun[3] = 4;
        assert_eq!(tcp_frame_len(&stun), Ok(Some(24)));
    }

    #[test]
    fn data_indication_round_trips_through_stun_crate() {
        for peer in ["203.0.113.5:4000", "[2001:db8::7]:9"] {
            let peer: SocketAddr = peer.parse().unwrap();
            let mut buf = vec![0u8; HEADROOM + 5 + TAILROOM];
            buf[HEADROOM..HEADROOM + 5].copy_from_slice(b"hello");
            let txid = [7u8; 12];
            let r = wrap_data_indication(&mut buf, HEADROOM, 5, peer, &txid);
            let frame = &buf[r];
            assert_eq!(frame.len() % 4, 0);
            let m = decode(frame).expect("valid STUN");
            assert_eq!(method_and_class(&m.raw).0, METHOD_DATA);
            let mut pa = turn::proto::peeraddr::PeerAddress::default();
            stun::message::Getter::get_from(&mut pa, &m).unwrap();
            assert_eq!(SocketAddr::new(pa.ip, pa.port), peer);
            let d = find_attr(frame, ATTR_DATA).unwrap().unwrap();
            assert_eq!(&frame[d], b"hello");
            let x = find_attr(frame, ATTR_XOR_PEER_ADDRESS).unwrap().unwrap();
            assert_eq!(decode_xor_addr(&frame[x], &txid), Some(peer));
        }
    }

    #[test]
    fn binding_success_matches_the_stun_crate() {
        use stun::message::Setter;
        for (addr, sw, fp) in [
            ("192.0.2.1:3478", None, true),
            ("[2001:db8::1]:5", Some("ponte 1"), true),
            ("198.51.100.2:1", Some("abc"), false),
        ] {
            let addr: SocketAddr = addr.parse().unwrap();
            let txid = [5u8; 12];
            let mut m = message(METHOD_BINDING, 2, txid);
            stun::xoraddr::XorMappedAddress { ip: addr.ip(), port: addr.port() }.add_to(&mut m).unwrap();
            if let Some(s) = sw {
                m.add(stun::attributes::AttrType(ATTR_SOFTWARE), s.as_bytes());
            }
            if fp {
                stun::fingerprint::FINGERPRINT.add_to(&mut m).unwrap();
            }
            assert_eq!(binding_success(&txid, addr, sw, fp), m.raw, "{addr} {sw:?} {fp}");
        }
    }

    #[test]
    fn channel_data_wrap() {
        let mut buf = vec![0u8; HEADROOM + 5 + TAILROOM];
        let r = wrap_channel_data(&mut buf, HEADROOM, 5, 0x4001, true);
        assert_eq!(r.len(), 12);
        assert_eq!(parse_channel_data(&buf[r.clone()]), Some((0x4001, 4..9)));
        let r = wrap_channel_data(&mut buf, HEADROOM, 5, 0x4001, false);
        assert_eq!(r.len(), 9);
    }

    #[test]
    fn attrs_rejects_truncation() {
        let mut m = message(METHOD_BINDING, 0, [1; 12]);
        m.add(stun::attributes::AttrType(ATTR_SOFTWARE), b"abcde");
        let raw = m.raw.clone();
        assert_eq!(find_attr(&raw, ATTR_SOFTWARE).unwrap(), Some(24..29));
        let mut bad = raw.clone();
        bad[3] = 200; // length beyond the buffer: iteration clamps to the buffer and then fails
        bad[22..24].copy_from_slice(&100u16.to_be_bytes());
        assert!(find_attr(&bad, ATTR_SOFTWARE).is_err());
        assert_eq!(method_and_class(&raw), (METHOD_BINDING, 0));
    }
}
