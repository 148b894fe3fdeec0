//! Abuse limits: token buckets for message and connect rates, and RAII connection slots counting connections
//! per source IP and in total.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

/// A token bucket: `rate` tokens per second, holding at most `burst`.
#[derive(Debug)]
pub struct TokenBucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate_per_sec: f64, burst: f64) -> TokenBucket {
        TokenBucket { tokens: burst, rate: rate_per_sec, burst, last: Instant::now() }
    }

    /// Take one token if there is one.
    pub fn try_take(&mut self) -> bool {
        self.try_take_at(Instant::now())
    }

    pub fn try_take_at(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Why a connection was refused before the upgrade.
#[derive(Debug, PartialEq, Eq)]
pub enum SlotError {
    PerIp,
    Total,
}

/// Counts live WebSocket connections (from the accepted upgrade until the socket task ends).
#[derive(Debug)]
pub struct ConnCounter {
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

impl ConnCounter {
    pub fn new() -> Arc<ConnCounter> {
        Arc::new(ConnCounter { total: AtomicUsize::new(0), per_ip: Mutex::new(HashMap::new()) })
    }

    /// Reserve a slot for `ip` under the given limits (passed per call: they follow config reloads); the slot is
    /// given back when the returned guard drops, whatever path the connection takes (failed upgrade, error,
    /// normal close).
    pub fn acquire(self: &Arc<Self>, ip: IpAddr, max_total: usize, max_per_ip: usize) -> Result<Slot, SlotError> {
        let ip = canonical(ip);
        let mut per_ip = self.per_ip.lock();
        let n = per_ip.get(&ip).copied().unwrap_or(0);
        if n >= max_per_ip {
            return Err(SlotError::PerIp);
        }
        // Checked and incremented under the per-IP lock, so two racing upgrades cannot both take the last slot.
        if self.total.load(Ordering::Relaxed) >= max_total {
            return Err(SlotError::Total);
        }
        self.total.fetch_add(1, Ordering::Relaxed);
        per_ip.insert(ip, n + 1);
        Ok(Slot { counter: self.clone(), ip })
    }

    pub fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}

/// The key a connection counts under. IPv4-mapped IPv6 (`::ffff:1.2.3.4`, seen on dual-stack listeners) counts as
/// the IPv4 address; other IPv6 addresses count per /64, because one host is normally given a whole /64 and could
/// otherwise pick a fresh address for every connection.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
        v4 => v4,
    }
}

#[derive(Debug)]
pub struct Slot {
    counter: Arc<ConnCounter>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut per_ip = self.counter.per_ip.lock();
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                // Drop empty entries so the map only ever holds IPs with live connections.
                per_ip.remove(&self.ip);
            }
        }
        self.counter.total.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_bursts_then_refills() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(2.0, 4.0);
        b.last = t0;
        assert!((0..4).all(|_| b.try_take_at(t0)));
        assert!(!b.try_take_at(t0));
        assert!(b.try_take_at(t0 + Duration::from_millis(500)));
        assert!(!b.try_take_at(t0 + Duration::from_millis(500)));
    }

    #[test]
    fn slots_count_per_ip_and_total() {
        let c = ConnCounter::new();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = c.acquire(a, 3, 2).unwrap();
        let _s2 = c.acquire("::ffff:10.0.0.1".parse().unwrap(), 3, 2).unwrap();
        assert_eq!(c.acquire(a, 3, 2).unwrap_err(), SlotError::PerIp);
        let _s3 = c.acquire(b, 3, 2).unwrap();
        assert_eq!(c.acquire(b, 3, 2).unwrap_err(), SlotError::Total);
        drop(s1);
        assert_eq!(c.total(), 2);
        assert!(c.acquire(a, 3, 2).is_ok());
        // One IPv6 /64 is one client.
        let v6a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let _x = c.acquire(v6a, 100, 1).unwrap();
        assert_eq!(c.acquire(v6b, 100, 1).unwrap_err(), SlotError::PerIp);
        assert!(c.acquire(other, 100, 1).is_ok());
        // A raised limit (reload) applies to the next upgrade.
        assert!(c.acquire(b, 10, 10).is_ok());
    }
}
