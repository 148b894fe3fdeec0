//! Relay sockets (RFC 8656 §7.2 relayed transport address): one UDP socket per allocation, bound within `turn.relay_port_min..=max` on the relay address, and the data-path threads that poll them.
//!
//! A relay socket has no task of its own: it is registered with one [`Poller`], the epoll instance of one
//! data-path thread (src/turn/udp.rs), normally the thread whose listener received the Allocate, so that both
//! directions of an allocation are handled by the same thread without any hand-over. Per datagram the thread asks
//! the core (one shard read-lock, one uncontended per-allocation mutex) where to send, with the header written
//! into the receive slot's headroom — no allocation and no lock on the peer→client path, one `sendmmsg` per batch.

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use rand::seq::SliceRandom;

use socket2::{Domain, Protocol, Socket, Type};

use super::core::RelayRequest;
use super::Shell;

/// Largest peer datagram relayed. Peers of browsers send at most about 1,200 bytes (WebRTC keeps under the path
/// MTU), and nothing larger crosses the internet unfragmented; a bigger datagram is truncated by the kernel,
/// flagged, and dropped rather than misread. (The receive slots belong to the data-path thread, not to the
/// allocation: an allocation costs its socket and its core state, no buffer.)
pub(crate) const RELAY_SLOT: usize = 4096;
/// How many ports held by other programs to skip before answering 508: a bounded search keeps a range that
/// another program has filled from turning each Allocate into a port scan.
const BIND_ATTEMPTS: u32 = 128;

/// The token of a poller's waker (shutdown, a relay closed from another thread).
pub(crate) const WAKE: mio::Token = mio::Token(usize::MAX);
/// The token of a data-path thread's UDP listener.
pub(crate) const LISTENER: mio::Token = mio::Token(usize::MAX - 1);

thread_local! {
    /// The index of the poller whose thread this is (`usize::MAX` elsewhere): relays opened here are polled here,
    /// and only here may a full send buffer make the caller wait (a runtime worker must never block).
    static CURRENT: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// Mark the calling thread as data-path thread `index` (for [`open`] and [`on_data_thread`]).
pub(crate) fn set_current(index: usize) {
    CURRENT.with(|c| c.set(index));
}

/// Whether the calling thread is a data-path thread (which may wait briefly for room in a send buffer).
pub(crate) fn on_data_thread() -> bool {
    CURRENT.with(|c| c.get()) != usize::MAX
}

/// A change to a data-path thread's set of relay sockets, applied by that thread before it next reads.
pub(crate) enum Change {
    /// The thread holds a weak handle: the socket closes as soon as the allocation lets go of it (its port is free
    /// again at once), not when the thread next wakes.
    Add(mio::Token, Weak<UdpSocket>, SocketAddr),
    Remove(mio::Token),
}

/// The handle other threads use to give a data-path thread relay sockets to poll, or take them away. The
/// `mio::Poll` itself is owned by the thread.
pub(crate) struct Poller {
    registry: mio::Registry,
    waker: mio::Waker,
    index: usize,
    next: AtomicUsize,
    changes: Mutex<Vec<Change>>,
}

impl Poller {
    pub fn new(poll: &mio::Poll, index: usize) -> io::Result<Poller> {
        Ok(Poller {
            registry: poll.registry().try_clone()?,
            waker: mio::Waker::new(poll.registry(), WAKE)?,
            index,
            next: AtomicUsize::new(0),
            changes: Mutex::new(Vec::new()),
        })
    }

    /// Poll `socket` (bound at `local`) from now on. The change is queued before the registration, so the thread
    /// knows the token by the time epoll reports it.
    fn add(&self, socket: Arc<UdpSocket>, local: SocketAddr) -> io::Result<mio::Token> {
        let token = mio::Token(self.next.fetch_add(1, Ordering::Relaxed));
        let fd = socket.as_raw_fd();
        self.changes.lock().push(Change::Add(token, Arc::downgrade(&socket), local));
        if let Err(e) = self.registry.register(&mut mio::unix::SourceFd(&fd), token, mio::Interest::READABLE) {
            self.changes.lock().push(Change::Remove(token));
            return Err(e);
        }
        Ok(token)
    }

    /// Stop polling `socket`; the thread forgets it when it next wakes.
    fn remove(&self, token: mio::Token, socket: &UdpSocket) {
        let _ = self.registry.deregister(&mut mio::unix::SourceFd(&socket.as_raw_fd()));
        self.changes.lock().push(Change::Remove(token));
        if CURRENT.with(|c| c.get()) != self.index {
            self.wake();
        }
    }

    pub fn wake(&self) {
        let _ = self.waker.wake();
    }

    /// The changes queued since the last call (cheap when there are none: one uncontended lock).
    pub fn take_changes(&self, into: &mut Vec<Change>) {
        let mut c = self.changes.lock();
        if !c.is_empty() {
            into.append(&mut c);
        }
    }
}

/// A live relay socket, registered in the shell so that client→peer sends find it.
pub struct Relay {
    pub socket: Arc<UdpSocket>,
    poller: usize,
    token: mio::Token,
}

impl Relay {
    /// Stop reading from the socket; it closes when this `Relay` is dropped (the data-path thread holds it weakly).
    pub fn stop(&self, shell: &Shell) {
        shell.pollers[self.poller].remove(self.token, &self.socket);
    }
}

/// Bind a relay socket for `req`, register it and hand it to a data-path thread. Returns the local address.
pub fn open(shell: &Arc<Shell>, req: &RelayRequest) -> io::Result<SocketAddr> {
    let std = if let Some(addr) = req.reserved {
        // RESERVATION-TOKEN: the port held since the EVEN-PORT (R=1) allocation.
        shell
            .reserved
            .remove(&addr)
            .map(|(_, s)| s)
            .ok_or_else(|| io::Error::new(io::ErrorKind::AddrNotAvailable, "reserved port no longer held"))?
    } else if req.reserve_next {
        let (even, next) = shell.ports.take_pair(req.ip)?;
        shell.reserved.insert(next.local_addr()?, next);
        even
    } else {
        shell.ports.take(req.ip, req.even_port)?
    };
    let local = std.local_addr()?;
    let socket = Arc::new(std);
    // The thread that received the Allocate (both directions then stay on one thread); from a TCP/TLS task, spread
    // by port.
    let here = CURRENT.with(|c| c.get());
    let poller = if here < shell.pollers.len() { here } else { local.port() as usize % shell.pollers.len() };
    let token = match shell.pollers[poller].add(socket.clone(), local) {
        Ok(t) => t,
        Err(e) => {
            shell.ports.give_back(local);
            return Err(e);
        }
    };
    shell.relays.insert(local, Relay { socket, poller, token });
    Ok(local)
}

/// The free relay ports of `turn.relay_port_min..=max`, per relay IP, in random order.
///
/// Allocations take ports from the front and closed relays return theirs to the back, so finding a port costs one
/// `bind` at any fill level — random probing needs ever more probes as the range fills, and probing with a fixed
/// stride clusters like linear probing, refusing allocations with a fifth of the range still free — and a freed
/// port is reused as late as possible, so stray peer traffic for an old allocation does not reach a new one. Ports
/// held by other programs fail to bind and go to the back; they are tried again later.
pub struct PortPool {
    min: u16,
    max: u16,
    by_ip: Mutex<HashMap<IpAddr, Free>>,
}

struct Free {
    order: VecDeque<u16>,
    /// `present[p - min]`: whether `p` is in `order` (no duplicates when a port is given back twice; O(1) lookups).
    present: Vec<bool>,
}

impl PortPool {
    pub fn new((min, max): (u16, u16)) -> PortPool {
        PortPool { min, max, by_ip: Mutex::new(HashMap::new()) }
    }

    fn free_for<'a>(&self, map: &'a mut HashMap<IpAddr, Free>, ip: IpAddr) -> &'a mut Free {
        map.entry(ip).or_insert_with(|| {
            let mut ports: Vec<u16> = (self.min..=self.max).collect();
            ports.shuffle(&mut rand::rng());
            Free { present: vec![true; ports.len()], order: ports.into() }
        })
    }

    /// Bind a free port on `ip` (an even one if asked).
    pub fn take(&self, ip: IpAddr, even: bool) -> io::Result<std::net::UdpSocket> {
        let mut map = self.by_ip.lock();
        let free = self.free_for(&mut map, ip);
        let mut busy = 0;
        for _ in 0..free.order.len() {
            let Some(port) = free.order.pop_front() else { break };
            if even && port % 2 == 1 {
                free.order.push_back(port);
                continue;
            }
            match bind_port(SocketAddr::new(ip, port)) {
                Ok(s) => {
                    free.present[(port - self.min) as usize] = false;
                    return Ok(s);
                }
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                    free.order.push_back(port);
                    busy += 1;
                    if busy >= BIND_ATTEMPTS {
                        break;
                    }
                }
                Err(e) => {
                    free.order.push_front(port);
                    return Err(e);
                }
            }
        }
        Err(io::Error::new(io::ErrorKind::AddrInUse, "no free port in the relay range"))
    }

    /// Bind an even port and the port after it (EVEN-PORT with R=1, RFC 8656 §14.6).
    pub fn take_pair(&self, ip: IpAddr) -> io::Result<(std::net::UdpSocket, std::net::UdpSocket)> {
        let mut map = self.by_ip.lock();
        let min = self.min;
        let free = self.free_for(&mut map, ip);
        let in_pool = |free: &Free, p: u16| p >= min && free.present.get((p - min) as usize).copied().unwrap_or(false);
        let candidates: Vec<u16> =
            free.order.iter().copied().filter(|&p| p % 2 == 0 && p < u16::MAX && in_pool(free, p + 1)).collect();
        let mut busy = 0;
        for p in candidates {
            if !in_pool(free, p) || !in_pool(free, p + 1) {
                continue;
            }
            let bound = bind_port(SocketAddr::new(ip, p))
                .and_then(|even| bind_port(SocketAddr::new(ip, p + 1)).map(|next| (even, next)));
            match bound {
                Ok(pair) => {
                    free.order.retain(|&q| q != p && q != p + 1);
                    free.present[(p - min) as usize] = false;
                    free.present[(p + 1 - min) as usize] = false;
                    return Ok(pair);
                }
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                    busy += 1;
                    if busy >= BIND_ATTEMPTS {
                        break;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(io::ErrorKind::AddrInUse, "no free even/odd port pair in the relay range"))
    }

    /// The relay socket bound at `addr` is closed (or about to be): its port goes to the back of the pool.
    pub fn give_back(&self, addr: SocketAddr) {
        let port = addr.port();
        if port < self.min || port > self.max {
            return;
        }
        let mut map = self.by_ip.lock();
        let free = self.free_for(&mut map, addr.ip());
        let slot = &mut free.present[(port - self.min) as usize];
        if !*slot {
            *slot = true;
            free.order.push_back(port);
        }
    }

    /// Free ports on `ip` as far as this pool knows (ports other programs hold are counted as free).
    #[cfg(test)]
    fn free_count(&self, ip: IpAddr) -> usize {
        let mut map = self.by_ip.lock();
        self.free_for(&mut map, ip).order.len()
    }
}

fn bind_port(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // Best effort: bursts from a peer should queue, not drop (capped by net.core.rmem_max).
    let _ = socket.set_recv_buffer_size(1 << 20);
    let _ = socket.set_send_buffer_size(1 << 20);
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::net::Ipv4Addr;

    // Each test uses its own ports below the ephemeral range, so parallel tests and the kernel do not collide.
    const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    fn port(s: &std::net::UdpSocket) -> u16 {
        s.local_addr().unwrap().port()
    }

    #[test]
    fn every_port_of_the_range_is_used_before_508_and_a_freed_one_comes_back() {
        let pool = PortPool::new((12000, 12099));
        let held: Vec<_> = (0..100).map(|i| pool.take(LO, false).unwrap_or_else(|e| panic!("port {i}: {e}"))).collect();
        let ports: HashSet<u16> = held.iter().map(port).collect();
        assert_eq!(ports.len(), 100, "every port once");
        assert!(ports.iter().all(|p| (12000..=12099).contains(p)));
        let e = pool.take(LO, false).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        let freed = port(&held[37]);
        drop(held);
        pool.give_back(SocketAddr::new(LO, freed));
        pool.give_back(SocketAddr::new(LO, freed)); // twice: still one entry
        assert_eq!(pool.free_count(LO), 1);
        assert_eq!(port(&pool.take(LO, false).unwrap()), freed);
    }

    #[test]
    fn a_freed_port_is_reused_last() {
        let pool = PortPool::new((12100, 12107));
        let first = pool.take(LO, false).unwrap();
        let a = port(&first);
        drop(first);
        pool.give_back(SocketAddr::new(LO, a));
        let next: Vec<_> = (0..7).map(|_| pool.take(LO, false).unwrap()).collect();
        assert!(next.iter().all(|s| port(s) != a), "the 7 never-used ports go first");
        assert_eq!(port(&pool.take(LO, false).unwrap()), a);
    }

    #[test]
    fn ports_held_by_other_programs_are_skipped() {
        let other = std::net::UdpSocket::bind((LO, 12200)).unwrap();
        let pool = PortPool::new((12200, 12201));
        let s = pool.take(LO, false).unwrap();
        assert_eq!(port(&s), 12201);
        assert_eq!(pool.take(LO, false).unwrap_err().kind(), io::ErrorKind::AddrInUse);
        drop(other);
        assert_eq!(port(&pool.take(LO, false).unwrap()), 12200, "tried again once the other program let go");
    }

    #[test]
    fn even_ports_and_pairs() {
        let pool = PortPool::new((12300, 12309));
        for _ in 0..3 {
            assert_eq!(port(&pool.take(LO, true).unwrap()) % 2, 0);
        }
        let (even, next) = pool.take_pair(LO).unwrap();
        assert_eq!(port(&even) % 2, 0);
        assert_eq!(port(&next), port(&even) + 1);
        // 10 ports: 3 even taken alone, one pair, so one even port is left and its odd neighbour is free too.
        let (e2, n2) = pool.take_pair(LO).unwrap();
        assert_eq!(port(&n2), port(&e2) + 1);
        assert_eq!(pool.take(LO, true).unwrap_err().kind(), io::ErrorKind::AddrInUse, "no even port left");
        assert_eq!(pool.free_count(LO), 3, "the odd neighbours of the lone even ports");
    }
}
