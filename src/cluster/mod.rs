//! Several ponte nodes as one service (`[cluster]`): the Redis link that carries signaling between nodes.
//!
//! Why this shape:
//! - **Redis, not a home-made mesh.** Nodes never talk to each other directly: each node PUBLISHes to the channel
//!   of the node that holds the target ID, and SUBSCRIBEs to its own channel. Presence (`ID → node`) is a Redis
//!   string with a TTL that the holder refreshes, so a node killed with `kill -9` frees its IDs by itself.
//! - **The hub stays synchronous.** `signaling::hub::State` runs under one lock and never awaits. What it wants
//!   done on another node it hands to [`Link`] (a bounded queue, `try_send`: a full queue is a clear error to
//!   the sender, never a wait); this module's task drains it. Envelopes from other nodes come back to the hub
//!   through another bounded queue ([`Inbound`]) that `signaling::Hub::run` applies under the lock.
//! - **Order per pair.** One task drains the queue in order and writes on one multiplexed connection (a
//!   pipeline per batch), and each node reads one subscription: two messages from A to B are published, and
//!   so delivered, in the order A sent them.
//! - **This layer knows no signaling.** It routes opaque bodies by ID string, keeps presence, replicates the
//!   identity table as hash operations, and reports up/down. The meaning of an envelope (consent, halves of a
//!   pairing) is `signaling/remote.rs`'s business. Layer: signaling → cluster → config, metrics, health.
//! - **Redis down is not fatal.** Pairs on one node keep working (nothing of theirs touches Redis); cross-node
//!   operations are refused at once with `cluster_unavailable` (the hub checks [`Link::is_up`]); `/healthz`
//!   says degraded; both connections retry with backoff; on return the presence of every local ID is written
//!   again, and no other node is judged dead before every live one has had time to write its record again
//!   ([`NodeWatch`]). The queues are bounded, so nothing grows while Redis is away.
//!
//! Redis layout (P = `cluster.key_prefix`): `P:node:<name>` (heartbeat, JSON with the node's public
//! addresses and relay port range, EX ttl), `P:nodes` (set of node names), `P:id:<id>` (node name, EX ttl),
//! `P:identities` and `P:reserved` (hashes: the identity table), `P:identity_keys` and `P:identity_key_of`
//! (hashes: the unique index key ↔ ID, written with the records by one script), `P:identity_epoch` (random,
//! set once: tells a Redis that kept its data from one that lost it), channels `P:node:<name>` (envelopes to one node) and `P:all`
//! (identity changes, "ID moved" notes).

mod stats;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use parking_lot::Mutex;
use redis::aio::ConnectionManager;
use redis::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::ClusterConfig;
use crate::health::{Component, Health, Status};
use crate::metrics::Metrics;

pub use stats::Stats;

/// Envelopes waiting for the cluster task; beyond this the hub refuses cross-node operations.
const OUT_QUEUE: usize = 8192;
/// Envelopes from other nodes waiting for the hub.
const IN_QUEUE: usize = 8192;
/// Most envelopes written in one pipeline.
const BATCH: usize = 256;
/// Route cache entries kept at most (IDs on other nodes that this node talked to recently).
const ROUTES_MAX: usize = 65_536;
/// How long a cached route is trusted without use before it is looked up again.
const ROUTE_IDLE: Duration = Duration::from_secs(600);
/// Reconnection backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Per-command and connect timeouts: a Redis that hangs must look like a Redis that is down.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
/// Presence records refreshed per pipeline at each heartbeat.
const REFRESH_CHUNK: usize = 1000;
/// Identity deletions made while Redis was unreachable, kept to apply when it is back; beyond this they are
/// counted as lost (`ponte_cluster_identity_ops_lost`).
const PENDING_DELETIONS_MAX: usize = 65_536;

/// Deletes `KEYS[1]` only if it still names this node (`ARGV[1]`): an ID that moved on must stay claimed.
const RELEASE_SCRIPT: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

/// Claims a fresh ID: sets `KEYS[1]` to this node (`ARGV[1]`, EX `ARGV[2]`) unless another node holds it, and
/// returns the holder. Idempotent for the same node, unlike a bare `SET NX`: a claim that runs after this node
/// already wrote the key (its heartbeat refreshed the ID, which the hub marks held before the claim is sent; or a
/// retry of a claim whose reply was lost) is a success, not a clash. A script rather than `SET … NX GET` so that
/// Redis 6 works too.
const CLAIM_SCRIPT: &str = "local v = redis.call('GET', KEYS[1]) \
    if v == false or v == ARGV[1] then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) return ARGV[1] end \
    return v";

/// Sets field `ARGV[1]` of `KEYS[1]` (`P:identities`) to `ARGV[3]` unless another live field holds its unique
/// value `ARGV[2]` (the identity key; `KEYS[2]` = `P:identity_keys`, unique value → field, and `KEYS[3]` =
/// `P:identity_key_of`, field → unique value, kept in step). Returns `{1}` when written, `{0, holder, value}` when
/// the holder keeps it. An index entry whose field is gone or holds another value is stale and is replaced.
const PUT_SCRIPT: &str = "local cur = redis.call('HGET', KEYS[2], ARGV[2]) \
    if cur and cur ~= ARGV[1] and redis.call('HGET', KEYS[3], cur) == ARGV[2] \
        and redis.call('HEXISTS', KEYS[1], cur) == 1 then \
        return {0, cur, redis.call('HGET', KEYS[1], cur)} end \
    local old = redis.call('HGET', KEYS[3], ARGV[1]) \
    if old and old ~= ARGV[2] and redis.call('HGET', KEYS[2], old) == ARGV[1] then redis.call('HDEL', KEYS[2], old) end \
    redis.call('HSET', KEYS[2], ARGV[2], ARGV[1]) \
    redis.call('HSET', KEYS[3], ARGV[1], ARGV[2]) \
    redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]) \
    return {1}";

/// Deletes field `ARGV[1]` of `KEYS[1]` (`P:identities`) and its entries in the unique index (keys as in
/// [`PUT_SCRIPT`]), so that its key may be bound again.
const DELETE_SCRIPT: &str = "local k = redis.call('HGET', KEYS[3], ARGV[1]) \
    if k then \
        if redis.call('HGET', KEYS[2], k) == ARGV[1] then redis.call('HDEL', KEYS[2], k) end \
        redis.call('HDEL', KEYS[3], ARGV[1]) \
    end \
    return redis.call('HDEL', KEYS[1], ARGV[1])";

/// One change to the replicated identity table: a field of `P:identities` (or `P:reserved`) set or deleted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HashOp {
    /// `P:reserved` (forgotten IDs) rather than `P:identities`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reserved: bool,
    pub field: String,
    /// `None`: delete the field.
    pub value: Option<String>,
    /// A value no other field of `P:identities` may hold at the same time (the identity's public key): a set is
    /// written only if no other live field holds it, atomically in Redis ([`PUT_SCRIPT`]); otherwise the hub
    /// hears [`Inbound::BindingLost`]. So two nodes that bind one new key at the same instant end with one ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unique: Option<String>,
}

/// What the hub asks of the cluster task.
#[derive(Debug)]
pub enum Outbound {
    /// Deliver `body` to the node that holds `to`. If that fails, `bounce` (when given) comes back as
    /// [`Inbound::Bounced`] so the hub can tell the sender.
    To { from: String, to: String, body: String, bounce: Option<String> },
    /// Write presence for `id` (just started here). `exclusive`: a fresh ID, claimed with SET NX
    /// ([`Inbound::ClaimLost`] if another node holds it); otherwise the ID is taken over from wherever it was.
    Claim { id: String, exclusive: bool },
    /// `id`'s session ended here: drop its presence (if it still names this node).
    Release { id: String },
    /// Changes to the identity table, to write to Redis and tell the other nodes.
    Identities(Vec<HashOp>),
    /// Which of `ids` are online on some node; answered with [`Inbound::Online`].
    Online { for_id: String, ids: Vec<String> },
    /// Which of `ids` (IDs on other nodes that sessions here are paired with or asked) are held by no live node
    /// any more: no presence, or presence naming one of the `gone` nodes. Answered with [`Inbound::NodeGone`]
    /// (with no `nodes`). The route cache alone cannot say: a route forgotten after a failed delivery, or
    /// pointing elsewhere after a move, would leave a partner waiting for ever.
    Locate { ids: Vec<String>, gone: Vec<String> },
    /// Identity fields (reserved, field) this node holds that the last snapshot lacked while Redis kept its data:
    /// deleted by another node while this one could not hear, unless a write of this node queued before this
    /// one put them back. Those Redis still lacks come back as [`Inbound::Identities`] deletions.
    Confirm(Vec<(bool, String)>),
}

/// What the cluster task hands to the hub.
#[derive(Debug)]
pub enum Inbound {
    /// An envelope another node addressed to an ID here.
    Envelope { body: String },
    /// An outbound envelope that could not be delivered: `unreachable` if no live node holds the target,
    /// otherwise Redis is unavailable.
    Bounced { body: String, unreachable: bool },
    /// The IDs of the query for `for_id` that are online.
    Online { for_id: String, ids: Vec<String> },
    /// A fresh ID turned out to be held by another node (a clash); the session must not keep it.
    ClaimLost { id: String },
    /// Another node took this ID over (its browser reconnected there, or opened another tab there).
    TakeOver { id: String },
    /// These IDs were on a node that stopped (its heartbeat expired): their partners here must hear they are away.
    /// `nodes`: the nodes that stopped (empty in the answer to [`Outbound::Locate`]); the hub then locates the
    /// other remote partners of its sessions, which the route cache may not have tied to those nodes.
    NodeGone { ids: Vec<String>, nodes: Vec<String> },
    /// Changes to the identity table made on another node.
    Identities(Vec<HashOp>),
    /// This node's set of `field` was refused: another node bound the same unique value (identity key) to
    /// `holder` first, whose record is `value`. The hub drops its own binding and takes the holder's.
    BindingLost { field: String, holder: String, value: String },
    /// The whole identity table as Redis holds it, read at (re)connect. The hub writes back what it holds and
    /// Redis lacks (a Redis restarted without persistence loses nothing the nodes still know) — unless
    /// `kept` says Redis kept its data since this node's last load, and then only what this node wrote while
    /// it could not reach Redis (`written`): anything else it holds and Redis lacks was deleted by another node
    /// meanwhile, and goes here too. `written`: (reserved, field) of the writes that did not reach Redis; `None`
    /// if there were more than could be kept (then everything missing is written back).
    Snapshot { ops: Vec<HashOp>, kept: bool, written: Option<HashSet<(bool, String)>> },
}

/// Why the hub may not hand a cross-node operation to the cluster now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Redis is unreachable.
    Down,
    /// The queue to the cluster task is full.
    Full,
}

/// The hub's handle on the cluster: a bounded queue, the up/down flag, this node's name and the IDs it holds.
#[derive(Debug, Clone)]
pub struct Link {
    tx: mpsc::Sender<Outbound>,
    up: Arc<AtomicBool>,
    node: Arc<str>,
    /// IDs held here, kept by the hub's calls (so it is right even while Redis is away and the queue refuses):
    /// the heartbeat refreshes their presence, and writes it again after Redis comes back.
    held: Arc<Mutex<HashSet<String>>>,
    /// Identity deletions Redis has not seen yet (see [`Pending`]).
    pending: Arc<Mutex<Pending>>,
    stats: Arc<Stats>,
}

/// Identity table deletions that could not be written (Redis away, a command failed, the queue full), to apply
/// when Redis is back and before the table is read again. Without them a deleted identity came back: the record
/// Redis kept (or another node wrote back) was loaded again. Writes need no such record: what Redis lacks is
/// written back from the table after the reload. Keyed by (`reserved`, field); a later write to a field
/// supersedes its deletion. Bounded: beyond [`PENDING_DELETIONS_MAX`] deletions are counted as lost.
#[derive(Debug, Default)]
struct Pending {
    deletions: HashSet<(bool, String)>,
    /// Fields written here that did not reach Redis (the next load writes them back even where Redis kept its
    /// data); `writes_overflow`: more than [`PENDING_DELETIONS_MAX`] of them.
    writes: HashSet<(bool, String)>,
    writes_overflow: bool,
}

impl Pending {
    /// `ops` were not written: remember their deletions. Returns how many could not be kept.
    fn note(&mut self, ops: &[HashOp]) -> u64 {
        let mut lost = 0;
        for op in ops {
            let k = (op.reserved, op.field.clone());
            match op.value {
                Some(_) => {
                    self.deletions.remove(&k);
                    if self.writes.len() < PENDING_DELETIONS_MAX || self.writes.contains(&k) {
                        self.writes.insert(k);
                    } else {
                        self.writes_overflow = true;
                    }
                }
                None if self.deletions.len() < PENDING_DELETIONS_MAX || self.deletions.contains(&k) => {
                    self.writes.remove(&k);
                    self.deletions.insert(k);
                }
                None => {
                    self.writes.remove(&k);
                    lost += 1;
                }
            }
        }
        lost
    }

    /// `ops` were written: deletions pending for their fields are settled (a write or a deletion since).
    fn settled(&mut self, ops: &[HashOp]) {
        if !self.deletions.is_empty() || !self.writes.is_empty() {
            for op in ops {
                let k = (op.reserved, op.field.clone());
                self.deletions.remove(&k);
                self.writes.remove(&k);
            }
        }
    }
}

impl Link {
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Redis answered the last command (or the last heartbeat).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Queue a cross-node operation; refused at once when Redis is down or the queue is full (never blocks).
    pub fn send(&self, o: Outbound) -> Result<(), Refused> {
        if !self.is_up() {
            Stats::inc(&self.stats.refused);
            return Err(Refused::Down);
        }
        self.tx.try_send(o).map_err(|_| {
            Stats::inc(&self.stats.refused);
            Refused::Full
        })
    }

    /// The hub refused a cross-node operation by itself (it checked [`Link::is_up`] first): count it.
    pub fn refused(&self) {
        Stats::inc(&self.stats.refused);
    }

    /// A session for `id` started here.
    pub fn claim(&self, id: &str, exclusive: bool) {
        self.held.lock().insert(id.to_string());
        let _ = self.tx.try_send(Outbound::Claim { id: id.to_string(), exclusive });
    }

    /// The session for `id` ended here.
    pub fn release(&self, id: &str) {
        self.held.lock().remove(id);
        let _ = self.tx.try_send(Outbound::Release { id: id.to_string() });
    }

    /// Identity table changes. While Redis is away the table on this node keeps the writes (written back when
    /// it returns) and [`Pending`] the deletions (applied when it returns).
    pub fn identities(&self, ops: Vec<HashOp>) {
        if ops.is_empty() {
            return;
        }
        if let Err(e) = self.tx.try_send(Outbound::Identities(ops)) {
            let (mpsc::error::TrySendError::Full(o) | mpsc::error::TrySendError::Closed(o)) = e;
            if let Outbound::Identities(ops) = o {
                // The batch's writes wait for the next write-back; its deletions are kept unless over the bound.
                let lost = self.pending.lock().note(&ops);
                self.stats.identity_ops_lost.fetch_add(1 + lost, Ordering::Relaxed);
            }
        }
    }

    /// Ask which of these identity fields other nodes deleted ([`Outbound::Confirm`]). Queued even while the
    /// link is not up yet (it is asked right after a load); dropped if the queue is full (the next load asks
    /// again).
    pub fn confirm_deleted(&self, fields: Vec<(bool, String)>) {
        if !fields.is_empty() && self.tx.try_send(Outbound::Confirm(fields)).is_err() {
            Stats::inc(&self.stats.refused);
        }
    }

    /// A link whose task is not running, for unit tests of the hub (everything sent is simply queued).
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn detached(node: &str, up: bool) -> (Link, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(OUT_QUEUE);
        let link = Link {
            tx,
            up: Arc::new(AtomicBool::new(up)),
            node: node.into(),
            held: Arc::default(),
            pending: Arc::default(),
            stats: Arc::default(),
        };
        (link, rx)
    }
}

/// Keys and channels, all under `cluster.key_prefix`.
#[derive(Debug, Clone)]
struct Names {
    prefix: String,
}

impl Names {
    fn id(&self, id: &str) -> String {
        format!("{}:id:{id}", self.prefix)
    }
    fn node(&self, node: &str) -> String {
        format!("{}:node:{node}", self.prefix)
    }
    fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }
    fn all(&self) -> String {
        format!("{}:all", self.prefix)
    }
    fn identities(&self, reserved: bool) -> String {
        format!("{}:{}", self.prefix, if reserved { "reserved" } else { "identities" })
    }
    /// A random value set once per data set: a different (or no) value at the next load means Redis lost its
    /// data meanwhile (restarted without persistence, flushed).
    fn epoch(&self) -> String {
        format!("{}:identity_epoch", self.prefix)
    }
    /// The unique index of `P:identities`: identity key → ID, and ID → identity key.
    fn unique(&self) -> [String; 2] {
        [format!("{}:identity_keys", self.prefix), format!("{}:identity_key_of", self.prefix)]
    }
    /// The command that writes one identity table change (see [`PUT_SCRIPT`], [`DELETE_SCRIPT`]); whether its
    /// reply says if a set was refused.
    fn write(&self, op: &HashOp) -> (redis::Cmd, bool) {
        let key = self.identities(op.reserved);
        let [index, of] = self.unique();
        match (&op.value, &op.unique, op.reserved) {
            (Some(v), Some(u), false) => {
                let mut c = redis::cmd("EVAL");
                c.arg(PUT_SCRIPT).arg(3).arg(key).arg(index).arg(of).arg(&op.field).arg(u).arg(v);
                (c, true)
            }
            (None, _, false) => {
                let mut c = redis::cmd("EVAL");
                c.arg(DELETE_SCRIPT).arg(3).arg(key).arg(index).arg(of).arg(&op.field);
                (c, false)
            }
            (Some(v), _, _) => (redis::Cmd::hset(key, &op.field, v), false),
            (None, _, true) => (redis::Cmd::hdel(key, &op.field), false),
        }
    }
}

/// Where IDs on other nodes live, as last seen (from presence look-ups and from envelopes they sent).
#[derive(Debug, Default)]
struct Routes {
    map: HashMap<String, (Arc<str>, Instant)>,
}

impl Routes {
    fn get(&mut self, id: &str, now: Instant) -> Option<Arc<str>> {
        match self.map.get_mut(id) {
            Some((node, at)) if now.saturating_duration_since(*at) < ROUTE_IDLE => {
                *at = now;
                Some(node.clone())
            }
            _ => None,
        }
    }

    fn set(&mut self, id: &str, node: Arc<str>, now: Instant) {
        if self.map.len() >= ROUTES_MAX && !self.map.contains_key(id) {
            self.map.retain(|_, (_, at)| now.saturating_duration_since(*at) < ROUTE_IDLE);
            if self.map.len() >= ROUTES_MAX {
                // Still full of recent routes: forget them all rather than grow (they are looked up again).
                self.map.clear();
            }
        }
        self.map.insert(id.to_string(), (node, now));
    }

    fn forget(&mut self, id: &str) {
        self.map.remove(id);
    }

    /// Forget every route to `node`; returns the IDs that were on it.
    fn drop_node(&mut self, node: &str) -> Vec<String> {
        let ids: Vec<String> = self.map.iter().filter(|(_, (n, _))| &**n == node).map(|(id, _)| id.clone()).collect();
        for id in &ids {
            self.map.remove(id);
        }
        ids
    }
}

/// The cluster link and its task, built from the config before the hub (which takes [`Cluster::link`] and
/// [`Cluster::inbound`]) and run by the daemon as a core task until shutdown ([`Runner::run`]).
pub struct Cluster {
    pub link: Link,
    pub inbound: mpsc::Receiver<Inbound>,
    /// The relay addresses and relay port ranges the other live nodes announce, for this node's TURN peer
    /// policy (`(address, first port, last port)`).
    pub peers: tokio::sync::watch::Receiver<Vec<(IpAddr, u16, u16)>>,
    pub runner: Runner,
}

/// The cluster task, not started yet.
pub struct Runner(Task);

impl Runner {
    /// Write what the hub queues, keep presence, follow the other nodes; until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        self.0.run(shutdown).await
    }
}

impl Cluster {
    /// `addresses`: this node's public relay addresses, announced to the other nodes with `relay_ports` (its
    /// `turn.relay_port_min..=relay_port_max`): the other nodes' TURN lets their relays reach these ports only.
    pub fn new(
        cfg: &ClusterConfig,
        addresses: Vec<IpAddr>,
        relay_ports: (u16, u16),
        health: Arc<Health>,
        metrics: &Metrics,
    ) -> anyhow::Result<Cluster> {
        let url = cfg.redis_url.as_ref().ok_or_else(|| anyhow::anyhow!("cluster.redis_url is not set"))?;
        // The URL may carry a password: the error says which key, never the value.
        let client =
            redis::Client::open(url.expose()).map_err(|e| anyhow::anyhow!("cluster.redis_url: {:?}", e.kind()))?;
        let node: Arc<str> = cfg.node_name.clone().unwrap_or_default().into();
        let stats = Arc::new(Stats::default());
        metrics.register(Arc::new(stats::Source(stats.clone())));
        let (tx, rx) = mpsc::channel(OUT_QUEUE);
        let (in_tx, inbound) = mpsc::channel(IN_QUEUE);
        let (peers_tx, peers) = tokio::sync::watch::channel(Vec::new());
        let up = Arc::new(AtomicBool::new(false));
        let held: Arc<Mutex<HashSet<String>>> = Arc::default();
        health.set(Component::Cluster, Status::Starting);
        let pending: Arc<Mutex<Pending>> = Arc::default();
        let link = Link {
            tx,
            up: up.clone(),
            node: node.clone(),
            held: held.clone(),
            pending: pending.clone(),
            stats: stats.clone(),
        };
        let task = Task {
            client,
            names: Names { prefix: cfg.key_prefix.clone() },
            node,
            ttl: Duration::from_secs(cfg.presence_ttl_secs),
            addresses,
            relay_ports,
            rx,
            in_tx,
            up,
            held,
            pending,
            stats,
            health,
            routes: Arc::new(Mutex::new(Routes::default())),
            conn: None,
            watch: NodeWatch::new(Duration::from_secs(cfg.presence_ttl_secs)),
            peers_tx,
            instance: format!("{:016x}", rand::random::<u64>()),
            sub_up: false,
            need_load: true,
            epoch: None,
        };
        Ok(Cluster { link, inbound, peers, runner: Runner(task) })
    }
}

/// Which other nodes are alive, judged at each heartbeat, and when this node may call one dead.
///
/// A node is dead when its heartbeat record expired (it is in `P:nodes` without a record), or when it was seen
/// alive and is not any more (another node already removed it from the set, or Redis lost the set). Neither is
/// evidence just after Redis was away: nobody could refresh a record then, so when Redis returns every record
/// looks expired (or is gone, if Redis lost its data) until its node's next heartbeat, and the nodes notice
/// Redis's return at different times (their reconnection backoffs). So after a reconnection a node is declared
/// dead only once this node has been up (Redis reachable, subscription live) without a break for
/// [`NodeWatch::grace`]: the heartbeat expiry plus the longest reconnection backoff and one connection timeout,
/// time enough for every live node to have reconnected (within a backoff and a timeout of Redis's return) and
/// written its record again (within a third of the expiry, two thirds if its first command after the outage
/// failed). Until then nothing is declared dead, every node seen alive is remembered (so a node killed during
/// the outage is still judged, and found dead, once the grace is over, even if Redis lost the node set), and a
/// node whose record reappears is simply alive. The first connection needs no grace: cross-node operations are
/// refused until then, so no session here has a half with another node that a wrong verdict could end.
#[derive(Debug)]
struct NodeWatch {
    /// Other nodes seen alive (since the last judgement, while unsettled).
    known: HashSet<String>,
    /// From when this node's readings are evidence; `None` while it is not up.
    settled_at: Option<Instant>,
    /// This node has been up before (a connection now is a reconnection).
    was_up: bool,
    grace: Duration,
}

impl NodeWatch {
    fn new(ttl: Duration) -> NodeWatch {
        NodeWatch { known: HashSet::new(), settled_at: None, was_up: false, grace: ttl + BACKOFF_MAX + REDIS_TIMEOUT }
    }

    /// This node's link went up or down.
    fn set_up(&mut self, up: bool, now: Instant) {
        if !up {
            self.settled_at = None;
        } else if self.settled_at.is_none() {
            self.settled_at = Some(if self.was_up { now + self.grace } else { now });
            self.was_up = true;
        }
    }

    /// Up long enough for an absent record to mean a dead node.
    fn settled(&self, now: Instant) -> bool {
        self.settled_at.is_some_and(|t| now >= t)
    }

    /// One heartbeat's reading: `alive`, the other nodes with a record; `expired`, those in the node set
    /// without one. Returns the nodes to declare dead (and to remove from the set): none until settled.
    fn judge(&mut self, alive: HashSet<String>, expired: Vec<String>, now: Instant) -> Vec<String> {
        if !self.settled(now) {
            self.known.extend(alive);
            return Vec::new();
        }
        let mut gone: Vec<String> = self.known.iter().filter(|n| !alive.contains(*n)).cloned().collect();
        for e in expired {
            if !gone.contains(&e) {
                gone.push(e);
            }
        }
        self.known = alive;
        gone
    }
}

struct Task {
    client: redis::Client,
    names: Names,
    node: Arc<str>,
    ttl: Duration,
    addresses: Vec<IpAddr>,
    relay_ports: (u16, u16),
    rx: mpsc::Receiver<Outbound>,
    in_tx: mpsc::Sender<Inbound>,
    up: Arc<AtomicBool>,
    held: Arc<Mutex<HashSet<String>>>,
    pending: Arc<Mutex<Pending>>,
    stats: Arc<Stats>,
    health: Arc<Health>,
    routes: Arc<Mutex<Routes>>,
    conn: Option<ConnectionManager>,
    /// Which other nodes are alive, and whether this node may call one dead yet.
    watch: NodeWatch,
    /// The other live nodes' announced relay addresses, for TURN.
    peers_tx: tokio::sync::watch::Sender<Vec<(IpAddr, u16, u16)>>,
    /// Random per process: tells this run's heartbeat from an earlier process's of the same name.
    instance: String,
    /// The subscriber task holds a live subscription.
    sub_up: bool,
    /// The identity table must be (re)loaded from Redis: set at each (re)subscription, cleared once read.
    need_load: bool,
    /// The identity data set this node last loaded ([`Names::epoch`]).
    epoch: Option<String>,
}

/// What the subscriber task tells the main task.
enum SubEvent {
    Up,
    Down,
}

impl Task {
    async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let (ev_tx, mut ev_rx) = mpsc::channel::<SubEvent>(16);
        let sub = tokio::spawn(subscriber(
            self.client.clone(),
            vec![self.names.node(&self.node), self.names.all()],
            self.node.clone(),
            self.in_tx.clone(),
            self.routes.clone(),
            self.stats.clone(),
            ev_tx,
            shutdown.clone(),
        ));
        let mut beat = tokio::time::interval(self.ttl / 3);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::with_capacity(BATCH);
        let mut backoff = BACKOFF_MIN;
        let mut next_try = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                ev = ev_rx.recv() => match ev {
                    Some(SubEvent::Up) => {
                        self.sub_up = true;
                        // (Re)subscribed: anything written while we were away is missing here. Load the identity
                        // table and write presence again at once (or at the next heartbeat if a command fails:
                        // the command connection may notice the outage only now).
                        self.need_load = true;
                        if self.ensure_conn().await {
                            self.need_load = !self.load_identities().await;
                            self.heartbeat().await;
                        }
                    }
                    Some(SubEvent::Down) => {
                        self.sub_up = false;
                        self.set_up(false);
                    }
                    None => {}
                },
                _ = beat.tick() => {
                    if self.conn.is_none() && tokio::time::Instant::now() < next_try {
                        continue;
                    }
                    if !self.ensure_conn().await {
                        next_try = tokio::time::Instant::now() + backoff;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        continue;
                    }
                    backoff = BACKOFF_MIN;
                    if self.need_load {
                        self.need_load = !self.load_identities().await;
                    } else {
                        // A command failed while the subscription stayed up: its deletions are due now.
                        self.apply_pending().await;
                    }
                    self.heartbeat().await;
                }
                n = self.rx.recv_many(&mut batch, BATCH) => {
                    if n == 0 {
                        break;
                    }
                    let items: Vec<Outbound> = std::mem::take(&mut batch);
                    self.process(items).await;
                }
            }
        }
        // Leave cleanly: our IDs and heartbeat go now rather than after the TTL.
        if let Some(conn) = self.conn.as_mut() {
            let held: Vec<String> = self.held.lock().drain().collect();
            let mut pipe = redis::pipe();
            for id in &held {
                pipe.cmd("EVAL").arg(RELEASE_SCRIPT).arg(1).arg(self.names.id(id)).arg(&*self.node).ignore();
            }
            pipe.del(self.names.node(&self.node)).ignore();
            pipe.srem(self.names.nodes(), &*self.node).ignore();
            let _ = tokio::time::timeout(REDIS_TIMEOUT, pipe.query_async::<()>(conn)).await;
        }
        sub.abort();
        self.health.set(Component::Cluster, Status::Stopping);
        Ok(())
    }

    fn set_up(&mut self, up: bool) {
        let was = self.up.swap(up, Ordering::Relaxed);
        self.watch.set_up(up, Instant::now());
        self.stats.redis_up.store(up as u64, Ordering::Relaxed);
        self.health.set(Component::Cluster, if up { Status::Ok } else { Status::Failed });
        if was != up {
            if up {
                tracing::info!(node = %self.node, "cluster: Redis reachable; cross-node signaling on");
            } else {
                tracing::warn!(
                    node = %self.node,
                    "cluster: Redis unreachable; pairs on this node keep working, cross-node operations are \
                     refused (cluster_unavailable) until it is back"
                );
            }
        }
    }

    /// A command connection, made if there is none (the connection manager then reconnects by itself).
    async fn ensure_conn(&mut self) -> bool {
        if self.conn.is_some() {
            return true;
        }
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(BACKOFF_MAX);
        match tokio::time::timeout(REDIS_TIMEOUT * 2, self.client.get_connection_manager_with_config(config)).await {
            Ok(Ok(c)) => {
                self.conn = Some(c);
                true
            }
            Ok(Err(e)) => {
                tracing::debug!("cluster: cannot connect to Redis: {:?}", e.kind());
                self.set_up(false);
                false
            }
            Err(_) => {
                self.set_up(false);
                false
            }
        }
    }

    async fn query(&mut self, pipe: &redis::Pipeline, ops: usize) -> Option<Vec<Value>> {
        let conn = self.conn.as_mut()?;
        self.stats.redis_ops.fetch_add(ops as u64, Ordering::Relaxed);
        match tokio::time::timeout(REDIS_TIMEOUT, pipe.query_async::<Vec<Value>>(conn)).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                tracing::debug!("cluster: Redis command failed: {:?}", e.kind());
                self.set_up(false);
                None
            }
            Err(_) => {
                self.set_up(false);
                None
            }
        }
    }

    /// Every third of the TTL: our heartbeat and the presence of every ID we hold; then which nodes are gone.
    async fn heartbeat(&mut self) {
        if self.conn.is_none() {
            return;
        }
        let ttl = self.ttl.as_secs();
        let info = serde_json::json!({
            "addresses": self.addresses,
            "relay_ports": [self.relay_ports.0, self.relay_ports.1],
            "instance": self.instance,
        })
        .to_string();
        let mut pipe = redis::pipe();
        pipe.cmd("SET").arg(self.names.node(&self.node)).arg(&info).arg("EX").arg(ttl).ignore();
        pipe.sadd(self.names.nodes(), &*self.node).ignore();
        pipe.smembers(self.names.nodes());
        let Some(v) = self.query(&pipe, 3).await else { return };
        let members: Vec<String> =
            v.into_iter().next().and_then(|m| redis::from_redis_value(m).ok()).unwrap_or_default();
        let held: Vec<String> = self.held.lock().iter().cloned().collect();
        for chunk in held.chunks(REFRESH_CHUNK) {
            let mut pipe = redis::pipe();
            for id in chunk {
                pipe.cmd("SET").arg(self.names.id(id)).arg(&*self.node).arg("EX").arg(ttl).ignore();
            }
            if self.query(&pipe, chunk.len()).await.is_none() {
                return;
            }
        }
        // Nodes in the set whose heartbeat expired are gone (once [`NodeWatch`] trusts the reading): their IDs'
        // partners here hear they are away.
        let others: Vec<&String> = members.iter().filter(|m| **m != *self.node).collect();
        let mut alive = HashSet::new();
        let mut expired = Vec::new();
        let mut addresses: Vec<(IpAddr, u16, u16)> = Vec::new();
        if !others.is_empty() {
            let mut pipe = redis::pipe();
            for m in &others {
                pipe.get(self.names.node(m));
            }
            let Some(v) = self.query(&pipe, others.len()).await else { return };
            for (m, e) in others.iter().zip(v) {
                match redis::from_redis_value::<Option<String>>(e).ok().flatten() {
                    Some(info) => {
                        alive.insert((*m).clone());
                        let info: serde_json::Value = serde_json::from_str(&info).unwrap_or_default();
                        let (lo, hi) = relay_ports_of(&info);
                        addresses.extend(
                            info["addresses"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .filter_map(|a| a.as_str()?.parse::<IpAddr>().ok())
                                .map(|a| (a, lo, hi)),
                        );
                    }
                    None => expired.push((*m).clone()),
                }
            }
        }
        let nodes = alive.len() as u64 + 1;
        let dead = self.watch.judge(alive, expired, Instant::now());
        if !dead.is_empty() {
            let mut pipe = redis::pipe();
            for d in &dead {
                pipe.srem(self.names.nodes(), d).ignore();
            }
            let _ = self.query(&pipe, dead.len()).await;
        }
        addresses.sort();
        addresses.dedup();
        self.peers_tx.send_if_modified(|cur| {
            let changed = *cur != addresses;
            *cur = addresses;
            changed
        });
        // Always told, even with no route to it: the hub locates its sessions' other remote partners then.
        for gone in dead {
            let ids = self.routes.lock().drop_node(&gone);
            tracing::info!(node = %gone, ids = ids.len(), "cluster: node gone (heartbeat expired)");
            if self.in_tx.try_send(Inbound::NodeGone { ids, nodes: vec![gone] }).is_err() {
                Stats::inc(&self.stats.inbound_dropped);
            }
        }
        self.stats.nodes.store(nodes, Ordering::Relaxed);
        // Up only with the subscription too: without it, envelopes to this node would be lost.
        self.set_up(self.sub_up);
    }

    /// Write the deletions made while Redis was away ([`Pending`]) and announce them to the other nodes; false
    /// if Redis did not answer (they stay pending).
    async fn apply_pending(&mut self) -> bool {
        let due: Vec<(bool, String)> = self.pending.lock().deletions.iter().cloned().collect();
        if due.is_empty() {
            return true;
        }
        let ops: Vec<HashOp> =
            due.into_iter().map(|(reserved, field)| HashOp { reserved, field, value: None, unique: None }).collect();
        for chunk in ops.chunks(REFRESH_CHUNK) {
            let mut pipe = redis::pipe();
            for op in chunk {
                pipe.add_command(self.names.write(op).0).ignore();
            }
            let text = serde_json::to_string(chunk).unwrap_or_default();
            pipe.publish(self.names.all(), format!("i {}\n{text}", self.node)).ignore();
            if self.query(&pipe, chunk.len() + 1).await.is_none() {
                return false;
            }
            let mut p = self.pending.lock();
            for op in chunk {
                p.deletions.remove(&(op.reserved, op.field.clone()));
            }
        }
        tracing::info!(count = ops.len(), "cluster: identity deletions made while Redis was away applied");
        true
    }

    /// Read the whole identity table (at start and after Redis comes back), after applying the deletions made
    /// while it was away (so that what they deleted is not loaded again, nor written back); false if Redis did
    /// not answer.
    async fn load_identities(&mut self) -> bool {
        if !self.apply_pending().await {
            return false;
        }
        let mut pipe = redis::pipe();
        pipe.cmd("SETNX").arg(self.names.epoch()).arg(format!("{:016x}", rand::random::<u64>())).ignore();
        pipe.get(self.names.epoch());
        pipe.hgetall(self.names.identities(false)).hgetall(self.names.identities(true));
        let Some(v) = self.query(&pipe, 4).await else { return false };
        let mut v = v.into_iter();
        let epoch: Option<String> = v.next().and_then(|e| redis::from_redis_value(e).ok());
        let kept = epoch.is_some() && self.epoch.is_some() && epoch == self.epoch;
        self.epoch = epoch;
        let written = {
            let mut p = self.pending.lock();
            let overflow = std::mem::take(&mut p.writes_overflow);
            let w = std::mem::take(&mut p.writes);
            (!overflow).then_some(w)
        };
        let mut ops = Vec::new();
        for (reserved, m) in [false, true].into_iter().zip(v) {
            let map: HashMap<String, String> = redis::from_redis_value(m).unwrap_or_default();
            ops.extend(map.into_iter().map(|(field, value)| HashOp {
                reserved,
                field,
                value: Some(value),
                unique: None,
            }));
        }
        if self.in_tx.send(Inbound::Snapshot { ops, kept, written }).await.is_err() {
            Stats::inc(&self.stats.inbound_dropped);
        }
        true
    }

    /// Identity changes that did not reach Redis: keep their deletions for later ([`Pending`]).
    fn not_written(&self, ops: &[HashOp]) {
        let lost = self.pending.lock().note(ops);
        if lost > 0 {
            self.stats.identity_ops_lost.fetch_add(lost, Ordering::Relaxed);
        }
    }

    fn bounce(&self, body: Option<String>, unreachable: bool) {
        if let Some(body) = body {
            if self.in_tx.try_send(Inbound::Bounced { body, unreachable }).is_err() {
                Stats::inc(&self.stats.inbound_dropped);
            }
        }
    }

    /// The node holding `id`: the route cache, else its presence record.
    async fn resolve(&mut self, id: &str) -> Option<Arc<str>> {
        if let Some(n) = self.routes.lock().get(id, Instant::now()) {
            return Some(n);
        }
        let mut pipe = redis::pipe();
        pipe.get(self.names.id(id));
        let v = self.query(&pipe, 1).await?;
        let node: Option<String> = v.into_iter().next().and_then(|x| redis::from_redis_value(x).ok());
        let node: Arc<str> = node?.into();
        if *node == *self.node {
            // A stale record of ours (the session just ended): nobody else holds it.
            return None;
        }
        self.routes.lock().set(id, node.clone(), Instant::now());
        Some(node)
    }

    fn frame(&self, from: &str, body: &str) -> String {
        format!("e {} {from}\n{body}", self.node)
    }

    /// Carry out one batch, in order, as one pipeline (plus look-ups for IDs not in the route cache).
    async fn process(&mut self, items: Vec<Outbound>) {
        if self.conn.is_none() || !self.up.load(Ordering::Relaxed) {
            for item in items {
                match item {
                    Outbound::To { bounce, .. } => {
                        Stats::inc(&self.stats.refused);
                        self.bounce(bounce, false);
                    }
                    Outbound::Identities(ops) => self.not_written(&ops),
                    _ => {}
                }
            }
            return;
        }
        let ttl = self.ttl.as_secs();
        let mut pipe = redis::pipe();
        let mut ops = 0;
        /// What each item expects back, in pipeline order.
        enum Want {
            Published {
                from: String,
                to: String,
                body: String,
                bounce: Option<String>,
                node: Arc<str>,
            },
            Claimed {
                id: String,
                exclusive: bool,
            },
            Online {
                for_id: String,
                ids: Vec<String>,
            },
            Located {
                ids: Vec<String>,
                gone: Vec<String>,
            },
            Confirmed {
                reserved: bool,
                field: String,
            },
            /// The reply of [`PUT_SCRIPT`] for op `idx` of identity list `list`.
            Put {
                list: usize,
                idx: usize,
            },
        }
        // Identity changes are announced on `P:all` after the pipeline, without the sets Redis refused.
        let mut lists: Vec<(Vec<HashOp>, Vec<bool>)> = Vec::new();
        // Fields of [`Outbound::Confirm`] that Redis lacks.
        let mut deleted: Vec<HashOp> = Vec::new();
        let mut wants = Vec::new();
        for item in items {
            match item {
                Outbound::To { from, to, body, bounce } => {
                    let Some(node) = self.resolve(&to).await else {
                        Stats::inc(&self.stats.refused);
                        self.bounce(bounce, self.conn.is_some() && self.up.load(Ordering::Relaxed));
                        continue;
                    };
                    pipe.publish(self.names.node(&node), self.frame(&from, &body));
                    ops += 1;
                    wants.push(Want::Published { from, to, body, bounce, node });
                }
                Outbound::Claim { id, exclusive } => {
                    let key = self.names.id(&id);
                    // The ID lives here now: a route to another node (where it was before) is stale.
                    self.routes.lock().forget(&id);
                    if exclusive {
                        pipe.add_command(claim_cmd(&key, &self.node, ttl));
                    } else {
                        pipe.cmd("SET").arg(key).arg(&*self.node).arg("EX").arg(ttl).arg("GET");
                        // Other nodes that routed to this ID elsewhere learn where it is now.
                        pipe.publish(self.names.all(), format!("m {} {id}", self.node)).ignore();
                        ops += 1;
                    }
                    ops += 1;
                    wants.push(Want::Claimed { id, exclusive });
                }
                Outbound::Release { id } => {
                    pipe.cmd("EVAL").arg(RELEASE_SCRIPT).arg(1).arg(self.names.id(&id)).arg(&*self.node).ignore();
                    ops += 1;
                }
                Outbound::Identities(list) => {
                    for (idx, op) in list.iter().enumerate() {
                        let (cmd, checked) = self.names.write(op);
                        if checked {
                            pipe.add_command(cmd);
                            wants.push(Want::Put { list: lists.len(), idx });
                        } else {
                            pipe.add_command(cmd).ignore();
                        }
                        ops += 1;
                    }
                    let n = list.len();
                    lists.push((list, vec![true; n]));
                }
                Outbound::Online { for_id, ids } => {
                    if ids.is_empty() {
                        continue;
                    }
                    let keys: Vec<String> = ids.iter().map(|i| self.names.id(i)).collect();
                    pipe.cmd("MGET").arg(keys);
                    ops += 1;
                    wants.push(Want::Online { for_id, ids });
                }
                Outbound::Confirm(fields) => {
                    for (reserved, field) in fields {
                        pipe.hexists(self.names.identities(reserved), &field);
                        ops += 1;
                        wants.push(Want::Confirmed { reserved, field });
                    }
                }
                Outbound::Locate { ids, gone } => {
                    if ids.is_empty() {
                        continue;
                    }
                    let keys: Vec<String> = ids.iter().map(|i| self.names.id(i)).collect();
                    pipe.cmd("MGET").arg(keys);
                    ops += 1;
                    wants.push(Want::Located { ids, gone });
                }
            }
        }
        if ops == 0 {
            return;
        }
        let Some(results) = self.query(&pipe, ops).await else {
            for w in wants {
                if let Want::Published { bounce, .. } = w {
                    Stats::inc(&self.stats.refused);
                    self.bounce(bounce, false);
                }
            }
            for (list, _) in &lists {
                self.not_written(list);
            }
            return;
        };
        {
            let mut p = self.pending.lock();
            for (list, _) in &lists {
                p.settled(list);
            }
        }
        let mut retry = Vec::new();
        for (w, v) in wants.into_iter().zip(results) {
            match w {
                Want::Published { from, to, body, bounce, node } => {
                    let receivers: i64 = redis::from_redis_value(v).unwrap_or(0);
                    if receivers > 0 {
                        Stats::inc(&self.stats.published);
                    } else {
                        // Nobody listens on that node's channel: it is gone (or the ID moved). Look again once.
                        self.routes.lock().forget(&to);
                        retry.push((from, to, body, bounce, node));
                    }
                }
                Want::Claimed { id, exclusive } => {
                    if exclusive {
                        if !claimed_by(v, &self.node) {
                            tracing::warn!(%id, "cluster: a fresh ID is held by another node; dropping it here");
                            self.held.lock().remove(&id);
                            if self.in_tx.try_send(Inbound::ClaimLost { id }).is_err() {
                                Stats::inc(&self.stats.inbound_dropped);
                            }
                        }
                    } else if let Ok(Some(old)) = redis::from_redis_value::<Option<String>>(v) {
                        if old != *self.node {
                            // The ID was held on another node: that node drops its session.
                            let mut pipe = redis::pipe();
                            pipe.publish(self.names.node(&old), format!("t {id}")).ignore();
                            let _ = self.query(&pipe, 1).await;
                        }
                    }
                }
                Want::Online { for_id, ids } => {
                    let nodes: Vec<Option<String>> = redis::from_redis_value(v).unwrap_or_default();
                    let online: Vec<String> = ids
                        .into_iter()
                        .zip(nodes)
                        .filter_map(|(id, n)| n.filter(|n| *n != *self.node).map(|_| id))
                        .collect();
                    if !online.is_empty() && self.in_tx.try_send(Inbound::Online { for_id, ids: online }).is_err() {
                        Stats::inc(&self.stats.inbound_dropped);
                    }
                }
                Want::Put { list, idx } => {
                    // `{1}`: written. `{0, holder, value}`: another ID holds this key.
                    let reply: Vec<Value> = redis::from_redis_value(v).unwrap_or_default();
                    if let [_, holder, value] = reply.as_slice() {
                        let (Ok(holder), Ok(value)) =
                            (redis::from_redis_value::<String>(holder.clone()), redis::from_redis_value(value.clone()))
                        else {
                            continue;
                        };
                        let entry = &mut lists[list];
                        entry.1[idx] = false;
                        let field = entry.0[idx].field.clone();
                        tracing::warn!(id = %field, %holder, "cluster: an identity key was bound to another ID first; keeping that one");
                        if self.in_tx.try_send(Inbound::BindingLost { field, holder, value }).is_err() {
                            Stats::inc(&self.stats.inbound_dropped);
                        }
                    }
                }
                Want::Confirmed { reserved, field } => {
                    if !redis::from_redis_value::<bool>(v).unwrap_or(true) {
                        deleted.push(HashOp { reserved, field, value: None, unique: None });
                    }
                }
                Want::Located { ids, gone } => {
                    let nodes: Vec<Option<String>> = redis::from_redis_value(v).unwrap_or_default();
                    let lost: Vec<String> = ids
                        .into_iter()
                        .zip(nodes)
                        .filter(|(_, n)| n.as_ref().is_none_or(|n| gone.contains(n)))
                        .map(|(id, _)| id)
                        .collect();
                    if !lost.is_empty() {
                        {
                            let mut routes = self.routes.lock();
                            for id in &lost {
                                routes.forget(id);
                            }
                        }
                        if self.in_tx.try_send(Inbound::NodeGone { ids: lost, nodes: Vec::new() }).is_err() {
                            Stats::inc(&self.stats.inbound_dropped);
                        }
                    }
                }
            }
        }
        if !deleted.is_empty() {
            tracing::info!(count = deleted.len(), "cluster: identities other nodes deleted while this one was away");
            if self.in_tx.try_send(Inbound::Identities(deleted)).is_err() {
                Stats::inc(&self.stats.inbound_dropped);
            }
        }
        let mut announce = redis::pipe();
        let mut n = 0;
        for (list, written) in lists {
            let list: Vec<HashOp> = list.into_iter().zip(written).filter(|(_, w)| *w).map(|(op, _)| op).collect();
            if !list.is_empty() {
                let text = serde_json::to_string(&list).unwrap_or_default();
                announce.publish(self.names.all(), format!("i {}\n{text}", self.node)).ignore();
                n += 1;
            }
        }
        if n > 0 {
            let _ = self.query(&announce, n).await;
        }
        for (from, to, body, bounce, old) in retry {
            match self.resolve(&to).await {
                Some(node) if node != old => {
                    let mut pipe = redis::pipe();
                    pipe.publish(self.names.node(&node), self.frame(&from, &body));
                    let n: i64 = self
                        .query(&pipe, 1)
                        .await
                        .and_then(|v| v.into_iter().next())
                        .and_then(|v| redis::from_redis_value(v).ok())
                        .unwrap_or(0);
                    if n > 0 {
                        Stats::inc(&self.stats.published);
                        continue;
                    }
                    Stats::inc(&self.stats.refused);
                    self.bounce(bounce, true);
                }
                _ => {
                    Stats::inc(&self.stats.refused);
                    self.routes.lock().forget(&to);
                    self.bounce(bounce, true);
                }
            }
        }
    }
}

/// The relay port range a node record announces; a record without one (a node of an earlier version) gets the
/// default `turn.relay_port_min..=relay_port_max`.
fn relay_ports_of(info: &serde_json::Value) -> (u16, u16) {
    let port = |i: usize| info["relay_ports"].get(i).and_then(|p| p.as_u64()).and_then(|p| u16::try_from(p).ok());
    match (port(0), port(1)) {
        (Some(lo), Some(hi)) if lo <= hi => (lo, hi),
        _ => (49152, 65535),
    }
}

/// The claim of a fresh ID's presence record `key` by `node`; its reply goes to [`claimed_by`].
fn claim_cmd(key: &str, node: &str, ttl: u64) -> redis::Cmd {
    let mut c = redis::cmd("EVAL");
    c.arg(CLAIM_SCRIPT).arg(1).arg(key).arg(node).arg(ttl);
    c
}

/// Whether the reply of [`CLAIM_SCRIPT`] names `node` as the holder.
fn claimed_by(v: Value, node: &str) -> bool {
    redis::from_redis_value::<Option<String>>(v).ok().flatten().is_some_and(|holder| holder == node)
}

/// One subscription (this node's channel and the broadcast channel), made again with backoff whenever it drops.
#[allow(clippy::too_many_arguments)]
async fn subscriber(
    client: redis::Client,
    channels: Vec<String>,
    node: Arc<str>,
    in_tx: mpsc::Sender<Inbound>,
    routes: Arc<Mutex<Routes>>,
    stats: Arc<Stats>,
    events: mpsc::Sender<SubEvent>,
    shutdown: CancellationToken,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let connected = async {
            let mut ps = tokio::time::timeout(REDIS_TIMEOUT, client.get_async_pubsub()).await.ok()?.ok()?;
            for c in &channels {
                tokio::time::timeout(REDIS_TIMEOUT, ps.subscribe(c)).await.ok()?.ok()?;
            }
            Some(ps)
        }
        .await;
        let Some(ps) = connected else {
            let _ = events.send(SubEvent::Down).await;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
            continue;
        };
        backoff = BACKOFF_MIN;
        let _ = events.send(SubEvent::Up).await;
        let mut stream = ps.into_on_message();
        loop {
            let msg = tokio::select! {
                _ = shutdown.cancelled() => return,
                m = stream.next() => m,
            };
            let Some(msg) = msg else { break };
            let Ok(text) = std::str::from_utf8(msg.get_payload_bytes()) else { continue };
            if let Some(inbound) = parse_frame(text, &node, &routes) {
                Stats::inc(&stats.received);
                if in_tx.try_send(inbound).is_err() {
                    // The hub is not keeping up: drop rather than grow (the sender's node is not told; the
                    // messages of one pair stay in order, with a gap).
                    Stats::inc(&stats.inbound_dropped);
                }
            }
        }
        tracing::debug!("cluster: subscription to Redis lost; reconnecting");
        let _ = events.send(SubEvent::Down).await;
    }
}

/// One pub/sub message: `e <node> <from-id>\n<body>` (an envelope), `t <id>` (take-over), `m <node> <id>` (an
/// ID moved), `i <node>\n<json ops>` (identity changes). Our own broadcasts are skipped.
fn parse_frame(text: &str, me: &str, routes: &Mutex<Routes>) -> Option<Inbound> {
    let (head, body) = text.split_once('\n').unwrap_or((text, ""));
    let mut parts = head.split(' ');
    match (parts.next()?, parts.next(), parts.next()) {
        ("e", Some(node), Some(from)) => {
            if !from.is_empty() && node != me {
                routes.lock().set(from, node.into(), Instant::now());
            }
            Some(Inbound::Envelope { body: body.to_string() })
        }
        ("t", Some(id), None) => Some(Inbound::TakeOver { id: id.to_string() }),
        ("m", Some(node), Some(id)) => {
            if node != me {
                let mut r = routes.lock();
                if r.map.contains_key(id) {
                    r.set(id, node.into(), Instant::now());
                }
            }
            None
        }
        ("i", Some(node), None) if node != me => serde_json::from_str(body).ok().map(Inbound::Identities),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_and_teach_routes() {
        let routes = Mutex::new(Routes::default());
        let Some(Inbound::Envelope { body }) = parse_frame("e node-b abcd2345\n{\"t\":1}", "node-a", &routes) else {
            panic!("envelope")
        };
        assert_eq!(body, "{\"t\":1}");
        assert_eq!(routes.lock().get("abcd2345", Instant::now()).as_deref(), Some("node-b"));
        assert!(matches!(parse_frame("t abcd2345", "node-a", &routes), Some(Inbound::TakeOver { .. })));
        assert!(parse_frame("m node-c abcd2345", "node-a", &routes).is_none());
        assert_eq!(routes.lock().get("abcd2345", Instant::now()).as_deref(), Some("node-c"));
        // Our own identity broadcast is not applied twice.
        assert!(parse_frame("i node-a\n[]", "node-a", &routes).is_none());
        assert!(matches!(parse_frame("i node-b\n[]", "node-a", &routes), Some(Inbound::Identities(_))));
        assert!(parse_frame("garbage", "node-a", &routes).is_none());
        assert_eq!(routes.lock().drop_node("node-c"), vec!["abcd2345".to_string()]);
    }

    #[test]
    fn deletions_made_while_redis_is_away_are_kept_bounded_and_superseded_by_writes() {
        let op = |reserved, field: &str, value: Option<&str>| HashOp {
            reserved,
            field: field.into(),
            value: value.map(Into::into),
            unique: None,
        };
        let mut p = Pending::default();
        // A forgotten identity: its record deleted, its ID reserved.
        assert_eq!(p.note(&[op(false, "abcd2345", None), op(true, "abcd2345", Some("99"))]), 0);
        assert!(p.deletions.contains(&(false, "abcd2345".into())));
        // A later write to the same field supersedes the deletion (the write-back carries it).
        assert_eq!(p.note(&[op(true, "wxyz6789", None), op(true, "wxyz6789", Some("5"))]), 0);
        assert!(!p.deletions.contains(&(true, "wxyz6789".into())));
        // Writes that did not reach Redis are remembered too (the next load writes them back over what Redis kept).
        assert!(p.writes.contains(&(true, "abcd2345".into())) && p.writes.contains(&(true, "wxyz6789".into())));
        // Written later (Redis back): settled.
        p.settled(&[op(false, "abcd2345", Some("{}")), op(true, "abcd2345", Some("99")), op(true, "wxyz6789", None)]);
        assert!(p.deletions.is_empty() && p.writes.is_empty());
        // Bounded: beyond the cap deletions are counted as lost; one already pending is not counted twice.
        for i in 0..PENDING_DELETIONS_MAX {
            assert_eq!(p.note(&[op(false, &i.to_string(), None)]), 0);
        }
        assert_eq!(p.note(&[op(false, "one-more", None), op(false, "0", None)]), 1);
        assert_eq!(p.deletions.len(), PENDING_DELETIONS_MAX);
    }

    /// The dead-node check after a Redis outage: until this node has been up again for the grace (expiry plus
    /// the longest backoff and a connection timeout), records missing because nobody could refresh them are no
    /// evidence. A node that writes its record again within the grace is alive; one killed meanwhile is found
    /// dead once the grace is over, whether Redis kept the node set (its record expired) or lost it (it was seen
    /// alive before the outage). The first connection judges at once (no cross-node half exists before it).
    #[test]
    fn nodes_are_declared_dead_only_after_a_grace_of_continuous_uptime() {
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<HashSet<String>>();
        let ttl = Duration::from_secs(3);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut w = NodeWatch::new(ttl);
        assert_eq!(w.grace, Duration::from_secs(10), "TTL + backoff + connection timeout");
        // Not up yet: no verdict.
        assert!(w.judge(set(&["n2"]), vec!["old".into()], at(0)).is_empty());
        // First connection: a record that expired is a dead node at once, and only once.
        w.set_up(true, at(1));
        assert_eq!(w.judge(set(&["n2", "n3"]), vec!["old".into()], at(1)), vec!["old".to_string()]);
        assert!(w.judge(set(&["n2", "n3"]), vec![], at(2)).is_empty());
        w.set_up(true, at(3));
        assert!(w.settled(at(3)), "staying up is no reconnection");

        // Redis goes away; the link is down.
        w.set_up(false, at(12));
        assert!(!w.settled(at(30)));
        // Back at 30 s (the outage outlived every record). Redis kept its data: n2 and n3 look expired at the first
        // heartbeats (n2 notices the return later); Redis lost it: they are not in the set at all.
        w.set_up(true, at(30));
        assert!(w.judge(set(&[]), vec!["n2".into(), "n3".into()], at(30)).is_empty(), "expired during the outage");
        assert!(w.judge(set(&[]), vec![], at(31)).is_empty(), "not re-registered yet");
        // n2 writes its record again within the grace; n3 was killed during the outage and never does.
        assert!(w.judge(set(&["n2"]), vec!["n3".into()], at(36)).is_empty());
        assert!(w.judge(set(&["n2"]), vec!["n3".into()], at(39)).is_empty());
        // Grace over: n3 is dead (its record expired, Redis kept the set), n2 is not.
        assert_eq!(w.judge(set(&["n2"]), vec!["n3".into()], at(40)), vec!["n3".to_string()]);
        assert!(w.judge(set(&["n2"]), vec![], at(41)).is_empty(), "declared once");

        // The same outage with Redis emptied: n3 is in no set, but it was seen alive before and is not now.
        let mut w = NodeWatch::new(ttl);
        w.set_up(true, at(0));
        assert!(w.judge(set(&["n2", "n3"]), vec![], at(1)).is_empty());
        w.set_up(false, at(12));
        w.set_up(true, at(30));
        assert!(w.judge(set(&[]), vec![], at(30)).is_empty());
        assert!(w.judge(set(&["n2"]), vec![], at(32)).is_empty());
        // A break in the uptime (Redis blinked) restarts the grace.
        w.set_up(false, at(35));
        w.set_up(true, at(36));
        assert!(w.judge(set(&["n2"]), vec![], at(45)).is_empty(), "grace restarted at 36 s");
        assert_eq!(w.judge(set(&["n2"]), vec![], at(46)), vec!["n3".to_string()]);
        assert!(w.judge(set(&["n2"]), vec![], at(47)).is_empty());
    }

    #[test]
    fn node_records_announce_their_relay_ports() {
        let rec = |t: &str| serde_json::from_str::<serde_json::Value>(t).unwrap();
        assert_eq!(relay_ports_of(&rec(r#"{"addresses":[],"relay_ports":[50000,50099]}"#)), (50000, 50099));
        // An earlier node's record, or a damaged one: the default relay range, never every port.
        assert_eq!(relay_ports_of(&rec(r#"{"addresses":[]}"#)), (49152, 65535));
        assert_eq!(relay_ports_of(&rec(r#"{"relay_ports":[70000,80000]}"#)), (49152, 65535));
        assert_eq!(relay_ports_of(&rec(r#"{"relay_ports":[60000,50000]}"#)), (49152, 65535));
    }

    /// A redis-server of the test's own (Debian's; a missing one is a failure), killed when dropped, with its
    /// directory (removed after it).
    struct TestRedis {
        child: std::process::Child,
        _dir: tempfile::TempDir,
    }

    impl Drop for TestRedis {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    async fn test_redis() -> (TestRedis, redis::aio::MultiplexedConnection) {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--dir", dir.path().to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        let guard = TestRedis { child, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/0")).unwrap();
        (guard, client.get_multiplexed_async_connection().await.unwrap())
    }

    /// The identity writes against a real redis-server: one key, one live ID; the loser learns the holder and its
    /// record; a deletion frees the key; stale index entries (a deleted ID, an ID now bound to another key) do not
    /// block; a write for an existing binding (last seen, contacts) goes through.
    #[tokio::test]
    async fn identity_keys_are_bound_to_one_id_in_redis() {
        let (_redis, mut r) = test_redis().await;
        let names = Names { prefix: "p".into() };
        let put = |id: &str, key: &str, v: &str| HashOp {
            reserved: false,
            field: id.into(),
            value: Some(v.into()),
            unique: Some(key.into()),
        };
        let del = |id: &str| HashOp { reserved: false, field: id.into(), value: None, unique: None };
        let mut run = async |op: HashOp| -> Vec<Value> {
            let v: Value = names.write(&op).0.query_async(&mut r).await.unwrap();
            redis::from_redis_value(v).unwrap_or_default()
        };
        assert_eq!(run(put("aaaa2345", "K1", "a1")).await.len(), 1, "a new key is bound");
        let lost = run(put("bbbb2345", "K1", "b1")).await;
        assert_eq!(lost.len(), 3, "another ID for the same key is refused");
        assert_eq!(redis::from_redis_value::<String>(lost[1].clone()).unwrap(), "aaaa2345");
        assert_eq!(redis::from_redis_value::<String>(lost[2].clone()).unwrap(), "a1");
        assert_eq!(run(put("aaaa2345", "K1", "a2")).await.len(), 1, "the holder updates its record");
        // Deleted (forgotten): the key is free again.
        run(del("aaaa2345")).await;
        assert_eq!(run(put("bbbb2345", "K1", "b1")).await.len(), 1);
        // An ID bound to another key later (after its reservation ran out) does not hold the first key.
        assert_eq!(run(put("bbbb2345", "K2", "b2")).await.len(), 1);
        assert_eq!(run(put("cccc2345", "K1", "c1")).await.len(), 1, "K1's index entry was stale");
        assert_eq!(run(put("dddd2345", "K2", "d1")).await.len(), 3, "K2 is bbbb2345's");
        let records: HashMap<String, String> =
            redis::cmd("HGETALL").arg("p:identities").query_async(&mut r).await.unwrap();
        assert_eq!(records.len(), 2, "{records:?}");
        assert_eq!(records.get("cccc2345").map(String::as_str), Some("c1"));
        assert_eq!(records.get("bbbb2345").map(String::as_str), Some("b2"));
    }

    /// The claim of a fresh ID against a real redis-server: claiming again for the same node succeeds (a retried
    /// claim, or one that runs after the heartbeat already wrote the ID: the bench saw a lone node drop its own
    /// fresh IDs), another node's claim fails and changes nothing.
    #[tokio::test]
    async fn claiming_a_fresh_id_is_idempotent_for_its_node() {
        let (_redis, mut r) = test_redis().await;
        let claim = |node: &'static str| claim_cmd("p:id:abcd2345", node, 30);
        let v: Value = claim("node-a").query_async(&mut r).await.unwrap();
        assert!(claimed_by(v, "node-a"));
        // Again (a retry whose first reply was lost): still ours.
        let v: Value = claim("node-a").query_async(&mut r).await.unwrap();
        assert!(claimed_by(v, "node-a"));
        // Another node's claim fails, and the record still names node-a.
        let v: Value = claim("node-b").query_async(&mut r).await.unwrap();
        assert!(!claimed_by(v, "node-b"));
        let holder: Option<String> = redis::cmd("GET").arg("p:id:abcd2345").query_async(&mut r).await.unwrap();
        assert_eq!(holder.as_deref(), Some("node-a"));
        // The heartbeat's plain SET got there first: the claim is still a success, with the TTL set.
        let _: () = redis::cmd("SET").arg("p:id:wxyz6789").arg("node-a").query_async(&mut r).await.unwrap();
        let v: Value = claim_cmd("p:id:wxyz6789", "node-a", 30).query_async(&mut r).await.unwrap();
        assert!(claimed_by(v, "node-a"));
        let ttl: i64 = redis::cmd("TTL").arg("p:id:wxyz6789").query_async(&mut r).await.unwrap();
        assert!((1..=30).contains(&ttl), "ttl {ttl}");
        // A free ID is claimed with the TTL.
        let v: Value = claim_cmd("p:id:free2345", "node-b", 30).query_async(&mut r).await.unwrap();
        assert!(claimed_by(v, "node-b"));
        let ttl: i64 = redis::cmd("TTL").arg("p:id:free2345").query_async(&mut r).await.unwrap();
        assert!((1..=30).contains(&ttl), "ttl {ttl}");
    }
}
