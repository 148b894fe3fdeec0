//! Abuse limits shared by the listeners (HTTP, TLS, signaling): token buckets for message and connect rates, and RAII connection slots counting connections
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
        TokenBucket::full_at(rate_per_sec, burst, Instant::now())
    }

    /// A full bucket as of `now` (the hub's state machine runs on the time it is given, not the clock).
    pub fn full_at(rate_per_sec: f64, burst: f64, now: Instant) -> TokenBucket {
        TokenBucket { tokens: burst, rate: rate_per_sec, burst, last: now }
    }

    /// New rate and burst (a config reload); tokens above the new burst are dropped.
    pub fn set_rate(&mut self, rate_per_sec: f64, burst: f64) {
        self.rate = rate_per_sec;
        self.burst = burst;
        self.tokens = self.tokens.min(burst);
    }

    /// True when the bucket will be full again by `now` without taking anything: forgetting it then loses nothing.
    pub fn is_full_at(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * self.rate >= self.burst
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
        let ip = source_key(ip);
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

/// The key a connection (and the hub's per-source state) counts under: see [`crate::addr::source_of`].
pub use crate::addr::source_of as source_key;

/// Rate-limits one kind of log line that a client can trigger at will (a refused Origin, a full server): at most
/// one per `every`, carrying how many were suppressed since the last one, so an attacker cannot fill the disk or
/// drown the journal (200 upgrades with a 64 KiB Origin once wrote 13 MB in a second).
#[derive(Debug)]
pub struct LogLimiter {
    every: std::time::Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl LogLimiter {
    pub const fn new(every: std::time::Duration) -> LogLimiter {
        LogLimiter { every, state: Mutex::new((None, 0)) }
    }

    /// `Some(suppressed)` when this event may be logged (with the count of those dropped since the last one).
    pub fn allow(&self, now: Instant) -> Option<u64> {
        let mut st = self.state.lock();
        let (last, suppressed) = &mut *st;
        if last.is_some_and(|l| now.saturating_duration_since(l) < self.every) {
            *suppressed += 1;
            return None;
        }
        *last = Some(now);
        Some(std::mem::take(suppressed))
    }
}

/// A client-controlled value cut to at most `max` bytes (at a character boundary) for a log line, with the
/// original length when it was cut, so that logging it costs a bounded amount whatever the client sent.
pub fn for_log(value: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(&value[..value.len().min(max)]);
    let text: String = text.chars().map(|c| if c.is_control() { '?' } else { c }).collect();
    if value.len() > max {
        format!("{text}… ({} bytes)", value.len())
    } else {
        text
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

    #[test]
    fn log_limiter_lets_one_through_per_period_and_counts_the_rest() {
        let l = LogLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(l.allow(t0), Some(0));
        assert_eq!(l.allow(t0 + Duration::from_secs(1)), None);
        assert_eq!(l.allow(t0 + Duration::from_secs(2)), None);
        assert_eq!(l.allow(t0 + Duration::from_secs(10)), Some(2));
    }

    #[test]
    fn logged_values_are_cut() {
        assert_eq!(for_log(b"http://a.example", 64), "http://a.example");
        let long = vec![b'a'; 65536];
        let cut = for_log(&long, 64);
        assert!(cut.len() < 100, "{cut}");
        assert!(cut.ends_with("(65536 bytes)"));
        assert_eq!(for_log(b"a\nb", 64), "a?b");
    }
}
