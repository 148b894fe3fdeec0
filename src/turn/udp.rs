//! The UDP data path (RFC 8489 §6.2.1, RFC 8656 §3): dedicated threads that own the UDP listeners and the relay
//! sockets, receive datagrams in batches, feed the core and carry out its actions.
//!
//! One thread per listening socket (`turn.udp_workers` sockets per address under SO_REUSEPORT; the kernel hashes
//! a client's 4-tuple to one of them, so per-client ordering holds without a lock between threads), plus the relay
//! sockets of the allocations made through that listener. Each thread blocks in its own `epoll_wait` and, when
//! woken, reads every ready socket itself: a datagram never waits for a task to be scheduled on another thread.
//! (The async runtime did exactly that: the relay task of an allocation was woken by whichever worker ran the
//! I/O driver and ran on another, often sleeping, worker; on a busy 2-core host that wake-up waited for the next
//! scheduler tick, 4 ms at HZ=250, and the relay's p99 was that tick. See docs/benchmarks.md.)
//!
//! Sockets are registered edge-triggered; a socket stays on the thread's ready list until a read finds its queue
//! empty, and the ready sockets are served one batch (up to [`BATCH`](super::mmsg::BATCH) datagrams, one
//! `recvmmsg`) each in turn, so a flood on one socket cannot starve the others. The answers and relayed datagrams
//! of a batch leave in one `sendmmsg` per destination socket ([`Shell::flush`]). No per-packet allocation on either
//! direction (payloads go out straight from the receive slots, headers written into their headroom).

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::codec::{HEADROOM, TAILROOM};
use super::core::{FiveTuple, Transport};
use super::mmsg::{RecvBatch, BATCH};
use super::relay::{self, Change, LISTENER, RELAY_SLOT, WAKE};
use super::FastMap;
use super::{Batch, Shell};

/// A relay socket as its thread knows it.
struct Polled {
    /// Weak: the allocation owns the socket ([`relay::Relay`]), so it closes the moment the allocation goes.
    socket: Weak<UdpSocket>,
    local: SocketAddr,
    /// On the ready list (readable, not yet read empty).
    queued: bool,
}

/// What one read from a socket found.
enum Read {
    /// The queue was read empty: wait for the next edge.
    Drained,
    /// More may be waiting: read again on the next round.
    More,
}

/// Run data-path thread `index` until the shell shuts down: its `listener` (none on a TCP-only server, where the
/// thread serves relay sockets only) and the relay sockets handed to it through `shell.pollers[index]`.
pub fn run(
    shell: Arc<Shell>,
    index: usize,
    mut poll: mio::Poll,
    listener: Option<Arc<UdpSocket>>,
) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    relay::set_current(index);
    // PONTE_UDP_SHORT_SLICE=0 keeps the default slice (for A/B measurements, docs/benchmarks.md).
    if std::env::var("PONTE_UDP_SHORT_SLICE").map_or(true, |v| v != "0") {
        if let Err(e) = request_short_slice() {
            tracing::debug!("sched_setattr (short slice for the UDP data path) refused: {e}");
        }
    }
    let server = match &listener {
        Some(l) => {
            let fd = l.as_raw_fd();
            poll.registry().register(&mut mio::unix::SourceFd(&fd), LISTENER, mio::Interest::READABLE)?;
            Some(l.local_addr()?)
        }
        None => None,
    };
    let mut events = mio::Events::with_capacity(256);
    let mut rx = RecvBatch::new();
    let mut relay_rx = RecvBatch::with_layout(BATCH, HEADROOM, RELAY_SLOT, TAILROOM);
    let mut batch = Batch { listener: server, ..Batch::default() };
    let mut relay_batch = Batch::default();
    let mut actions = Vec::with_capacity(BATCH);
    let mut relays: FastMap<mio::Token, Polled> = FastMap::default();
    let mut ready: Vec<mio::Token> = Vec::new();
    let mut listener_ready = server.is_some();
    let mut changes = Vec::new();
    let apply = |changes: &mut Vec<Change>, relays: &mut FastMap<mio::Token, Polled>, ready: &mut Vec<mio::Token>| {
        shell.pollers[index].take_changes(changes);
        for c in changes.drain(..) {
            match c {
                Change::Add(t, socket, local) => {
                    relays.insert(t, Polled { socket, local, queued: false });
                }
                Change::Remove(t) => {
                    if relays.remove(&t).is_some_and(|p| p.queued) {
                        ready.retain(|r| *r != t);
                    }
                }
            }
        }
    };
    loop {
        // Relays closed by this thread's own last batch are forgotten before it blocks.
        apply(&mut changes, &mut relays, &mut ready);
        // Block only when every socket has been read empty; otherwise just collect new readiness.
        let timeout = if listener_ready || !ready.is_empty() { Some(Duration::ZERO) } else { None };
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(anyhow::anyhow!("STUN/TURN data-path thread {index}: epoll failed: {e}"));
            }
        }
        if shell.shutdown.is_cancelled() {
            return Ok(());
        }
        // Relays added by other threads since: their tokens may be among these events.
        apply(&mut changes, &mut relays, &mut ready);
        for ev in events.iter() {
            match ev.token() {
                LISTENER => listener_ready = true,
                WAKE => {}
                t => {
                    if let Some(p) = relays.get_mut(&t) {
                        if !p.queued {
                            p.queued = true;
                            ready.push(t);
                        }
                    }
                }
            }
        }
        if let (true, Some(l), Some(server)) = (listener_ready, &listener, server) {
            match listener_batch(&shell, l, server, &mut rx, &mut batch, &mut actions)? {
                Read::Drained => listener_ready = false,
                Read::More => {}
            }
        }
        let mut i = 0;
        while i < ready.len() {
            let Some(p) = relays.get_mut(&ready[i]) else {
                ready.swap_remove(i);
                continue;
            };
            match relay_batch_from(&shell, p, &mut relay_rx, &mut relay_batch, &mut actions) {
                Read::More => i += 1,
                Read::Drained => {
                    p.queued = false;
                    ready.swap_remove(i);
                }
            }
        }
    }
}

/// The scheduler time slice this thread asks for (EEVDF custom slice, Linux 6.12+), in nanoseconds: the shortest
/// the kernel allows (0.1 ms; the default is 3 ms).
const SLICE_NS: u64 = 100_000;

/// Ask the kernel for a short time slice for the calling data-path thread, so that its wake-ups preempt whatever
/// else runs on the CPU.
///
/// Why (issue 17, docs/benchmarks.md): on a busy 2-core host, `perf sched` showed the relay's tail made of
/// wake-ups (a datagram arrived, epoll woke this thread) that then waited 1–10 ms for the CPU while another
/// process (compilers, in the measurement) finished its 3 ms slice: the woken thread was runnable but not run. Under
/// EEVDF a task's virtual deadline is its vruntime plus its slice, and a waking task preempts the running one when
/// its deadline is earlier, so a short slice makes the wake-up preempt at once. It does not change the thread's
/// CPU share (that is its weight, i.e. nice, untouched here), only how soon it runs after waking; a busy thread just
/// gets more, shorter turns. Unprivileged (no nice or policy change). Older kernels ignore `sched_runtime` for
/// SCHED_OTHER; a refusal (e.g. under a real-time policy) is harmless.
fn request_short_slice() -> io::Result<()> {
    #[repr(C)]
    struct SchedAttr {
        size: u32,
        policy: u32,
        flags: u64,
        nice: i32,
        priority: u32,
        runtime: u64,
        deadline: u64,
        period: u64,
    }
    const SCHED_FLAG_KEEP_POLICY: u64 = 0x08;
    // SAFETY: getpriority has no memory effects; -1 is also a valid nice value, which is what it means here.
    let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32, // SCHED_ATTR_SIZE_VER0 (48)
        // Ignored with SCHED_FLAG_KEEP_POLICY: a unit's CPUSchedulingPolicy= (batch, idle) stays.
        policy: libc::SCHED_OTHER as u32,
        flags: SCHED_FLAG_KEEP_POLICY,
        // sched_setattr sets nice too: keep the thread's (the unit's Nice=, if any).
        nice,
        priority: 0,
        runtime: SLICE_NS,
        deadline: 0,
        period: 0,
    };
    // SAFETY: a valid, fully initialised sched_attr of the size it declares, for the calling thread (pid 0).
    let r = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Read one batch from the listener and handle it: requests to the core, answers and client→peer payloads sent
/// in one `sendmmsg` per socket.
fn listener_batch(
    shell: &Arc<Shell>,
    socket: &UdpSocket,
    server: SocketAddr,
    rx: &mut RecvBatch,
    batch: &mut Batch,
    actions: &mut Vec<super::core::Action>,
) -> anyhow::Result<Read> {
    let n = match rx.recv(socket) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Read::Drained),
        // ICMP port unreachable from an earlier send, or a signal: not the socket's fault.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset | io::ErrorKind::Interrupted
            ) =>
        {
            return Ok(Read::More)
        }
        Err(e) => return Err(anyhow::anyhow!("STUN/TURN UDP listener udp://{server} failed: {e}")),
    };
    let now = Instant::now();
    for i in 0..n {
        let Some((pkt, client)) = rx.get(i) else {
            shell.core.count_dropped();
            continue;
        };
        let tuple = FiveTuple { client, server, transport: Transport::Udp };
        shell.core.handle(pkt, tuple, now, actions);
        if !actions.is_empty() {
            // Answers to this socket's clients and relayed payloads join the batch; relay sockets to open or
            // close and other transports are dealt with now, while `pkt` is still the packet they refer to.
            batch.slot = i;
            shell.execute(pkt, actions, Some(batch));
        }
    }
    shell.flush(batch, |i| rx.get(i).map_or(&[][..], |(p, _)| p));
    // A short batch read the queue empty (a datagram arriving since raises a new edge).
    Ok(if n < rx.capacity() { Read::Drained } else { Read::More })
}

/// Read one batch of peer datagrams from a relay socket; each is wrapped in place as ChannelData or a Data
/// indication by the core, and those bound for UDP clients leave in one `sendmmsg` from the listener.
fn relay_batch_from(
    shell: &Arc<Shell>,
    p: &Polled,
    rx: &mut RecvBatch,
    batch: &mut Batch,
    actions: &mut Vec<super::core::Action>,
) -> Read {
    // Gone: the allocation was deleted (its Remove is queued).
    let Some(socket) = p.socket.upgrade() else { return Read::Drained };
    let n = match rx.recv(&*socket) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Read::Drained,
        // ICMP errors from earlier sends surface here on Linux; they are not fatal for the socket.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset | io::ErrorKind::Interrupted
            ) =>
        {
            return Read::More
        }
        Err(e) => {
            tracing::warn!("TURN relay socket {} failed: {e}", p.local);
            return Read::Drained;
        }
    };
    let now = Instant::now();
    for i in 0..n {
        let Some((buf, len, peer)) = rx.slot_mut(i) else {
            shell.core.count_dropped();
            continue;
        };
        shell.core.from_peer(p.local, peer, buf, len, now, actions);
        if !actions.is_empty() {
            batch.slot = i;
            shell.execute(rx.slot(i), actions, Some(batch));
        }
    }
    shell.flush(batch, |i| rx.slot(i));
    if n < rx.capacity() {
        Read::Drained
    } else {
        Read::More
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_data_path_thread_gets_the_short_slice() {
        std::thread::spawn(|| {
            super::request_short_slice().expect("sched_setattr for SCHED_OTHER with a slice is unprivileged");
            // The kernel shows the slice where it has custom slices (6.12+) and scheduler debug info.
            let sched = std::fs::read_to_string("/proc/thread-self/sched").unwrap_or_default();
            if let Some(line) = sched.lines().find(|l| l.starts_with("se.slice")) {
                let v: u64 = line.rsplit(' ').next().unwrap().trim().parse().unwrap();
                assert_eq!(v, super::SLICE_NS, "{line}");
            }
        })
        .join()
        .unwrap();
    }
}
