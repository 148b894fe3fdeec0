//! Cluster counters (plain atomics) and their export at `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::metrics::Sample;

#[derive(Debug, Default)]
pub struct Stats {
    /// Envelopes PUBLISHed to another node (that had a subscriber).
    pub published: AtomicU64,
    /// Pub/sub messages received from other nodes.
    pub received: AtomicU64,
    /// Redis commands issued (each command of a pipeline counts).
    pub redis_ops: AtomicU64,
    /// 1 while Redis answers, 0 while it does not.
    pub redis_up: AtomicU64,
    /// Cross-node operations refused (Redis down, queue full, no live node holds the target).
    pub refused: AtomicU64,
    /// Messages from other nodes dropped because the hub's queue was full.
    pub inbound_dropped: AtomicU64,
    /// Identity changes that could not be queued for Redis.
    pub identity_ops_lost: AtomicU64,
    /// Nodes alive at the last heartbeat, this one included.
    pub nodes: AtomicU64,
}

impl Stats {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

pub struct Source(pub Arc<Stats>);

impl crate::metrics::Source for Source {
    fn collect(&self, out: &mut Vec<Sample>) {
        let s = &self.0;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        out.push(Sample::gauge("cluster_redis_up", "1 while Redis answers this node, else 0", get(&s.redis_up)));
        out.push(Sample::gauge("cluster_nodes", "Cluster nodes alive at the last heartbeat", get(&s.nodes)));
        out.push(Sample::counter("cluster_published", "Envelopes published to other nodes", get(&s.published)));
        out.push(Sample::counter("cluster_received", "Messages received from other nodes", get(&s.received)));
        out.push(Sample::counter("cluster_redis_ops", "Redis commands issued", get(&s.redis_ops)));
        out.push(Sample::counter(
            "cluster_refused",
            "Cross-node operations refused (Redis down, queue full, target on no live node)",
            get(&s.refused),
        ));
        out.push(Sample::counter(
            "cluster_inbound_dropped",
            "Messages from other nodes dropped because the hub's queue was full",
            get(&s.inbound_dropped),
        ));
        out.push(Sample::counter(
            "cluster_identity_ops_lost",
            "Identity table change batches that could not be queued for Redis, and deletions beyond the bound kept while Redis is away",
            get(&s.identity_ops_lost),
        ));
    }
}
