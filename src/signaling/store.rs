//! The identity store on disk: `identities.redb` in the state directory. The table lives in memory
//! ([`Identities`]); this file loads it at start and writes its changes from a thread of its own, so the hub's
//! lock never waits for a disk.
//!
//! redb: pure Rust (no C toolchain, nothing else to install), one file, ACID transactions that survive a crash
//! or power loss mid-write, no dependencies of its own (cheap to compile), maintained. A few thousand small
//! records need nothing more; SQLite would bring C code and a schema language for two key-value tables.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;

use anyhow::Context;
use redb::{Database, ReadableTable, TableDefinition};

use super::identity::{Identities, Op, Record};
use super::ids::Id;

pub const FILE: &str = "identities.redb";
/// ID -> JSON record (key, last seen, consents, blocks).
const IDENTITIES: TableDefinition<&str, &[u8]> = TableDefinition::new("identities");
/// Forgotten ID -> unix time until which it is not handed out again.
const RESERVED: TableDefinition<&str, u64> = TableDefinition::new("reserved_ids");

/// Writes batches of [`Op`]s in order, one transaction per batch, on its own thread.
pub struct Writer {
    tx: Option<mpsc::Sender<Vec<Op>>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Writer")
    }
}

impl Writer {
    pub fn send(&self, ops: Vec<Op>) {
        if let Some(tx) = &self.tx {
            // The thread only goes away after `finish`; if it died, the error was logged there.
            let _ = tx.send(ops);
        }
    }

    /// Write what is queued and close the file (so a new process, or a restarted test server, can open it).
    pub fn finish(mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The loaded table, and the writer that keeps the file in step with it (`None`: kept in memory only).
#[derive(Debug)]
pub struct Opened {
    pub table: Identities,
    pub writer: Option<Writer>,
    pub path: Option<PathBuf>,
}

impl Opened {
    /// No state directory: bindings last as long as the process.
    pub fn in_memory() -> Opened {
        Opened { table: Identities::default(), writer: None, path: None }
    }
}

/// Open (or create) `<dir>/identities.redb` and load it; without a directory, an in-memory table (logged).
pub fn open(dir: Option<&Path>) -> anyhow::Result<Opened> {
    let Some(dir) = dir else {
        tracing::info!(
            "no signaling.state_dir: lasting identities (ID <-> key bindings, presence consents) are kept in memory \
             and forgotten at every restart"
        );
        return Ok(Opened::in_memory());
    };
    let path = dir.join(FILE);
    std::fs::create_dir_all(dir).with_context(|| format!("signaling.state_dir: cannot create {}", dir.display()))?;
    let db = Database::create(&path).with_context(|| {
        format!(
            "signaling.state_dir: cannot open the identity store {} (another ponte running on the same state_dir? \
             a damaged file can be moved away: identities then start afresh)",
            path.display()
        )
    })?;
    let (records, reserved) =
        load(&db).with_context(|| format!("cannot read the identity store {}", path.display()))?;
    let table = Identities::load(records, reserved);
    tracing::info!(identities = table.len(), path = %path.display(), "identity store loaded");
    let (tx, rx) = mpsc::channel::<Vec<Op>>();
    let thread = std::thread::Builder::new()
        .name("identity-store".into())
        .spawn(move || write_loop(db, rx))
        .context("cannot start the identity store's writer thread")?;
    Ok(Opened { table, writer: Some(Writer { tx: Some(tx), thread: Some(thread) }), path: Some(path) })
}

type Loaded = (Vec<(Id, Record)>, Vec<(Id, u64)>);

fn load(db: &Database) -> anyhow::Result<Loaded> {
    // Make both tables exist, so a read transaction can open them.
    let w = db.begin_write()?;
    w.open_table(IDENTITIES)?;
    w.open_table(RESERVED)?;
    w.commit()?;
    let r = db.begin_read()?;
    let mut records = Vec::new();
    for entry in r.open_table(IDENTITIES)?.iter()? {
        let (k, v) = entry?;
        match (Id::parse(k.value()), Record::from_bytes(v.value())) {
            (Some(id), Some(rec)) => records.push((id, rec)),
            _ => tracing::warn!(key = k.value(), "identity store: unreadable record skipped"),
        }
    }
    let mut reserved = Vec::new();
    for entry in r.open_table(RESERVED)?.iter()? {
        let (k, v) = entry?;
        if let Some(id) = Id::parse(k.value()) {
            reserved.push((id, v.value()));
        }
    }
    Ok((records, reserved))
}

fn write_loop(db: Database, rx: mpsc::Receiver<Vec<Op>>) {
    while let Ok(mut ops) = rx.recv() {
        // Whatever queued up meanwhile goes into the same transaction: one fsync for a burst.
        while let Ok(more) = rx.try_recv() {
            ops.extend(more);
        }
        if let Err(e) = write(&db, &ops) {
            tracing::error!("identity store: writing {} change(s) failed: {e:#}", ops.len());
        }
    }
}

fn write(db: &Database, ops: &[Op]) -> anyhow::Result<()> {
    let w = db.begin_write()?;
    {
        let mut ids = w.open_table(IDENTITIES)?;
        let mut reserved = w.open_table(RESERVED)?;
        for op in ops {
            match op {
                Op::Put(id, r) => {
                    ids.insert(id.as_str(), r.to_bytes().as_slice())?;
                }
                Op::Delete(id) => {
                    ids.remove(id.as_str())?;
                }
                Op::Reserve(id, until) => {
                    reserved.insert(id.as_str(), *until)?;
                }
                Op::Unreserve(id) => {
                    reserved.remove(id.as_str())?;
                }
            }
        }
    }
    w.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::identity::{PublicKey, KEY_LEN};
    use super::*;

    #[test]
    fn changes_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (Id::parse("aaaa2345").unwrap(), Id::parse("bbbb2345").unwrap());
        {
            let mut o = open(Some(dir.path())).unwrap();
            assert!(o.table.is_empty());
            o.table.register(a, PublicKey([4; KEY_LEN]), 10);
            o.table.register(b, PublicKey([5; KEY_LEN]), 10);
            o.table.add_contact(a, b).unwrap();
            o.table.add_contact(b, a).unwrap();
            o.writer.as_ref().unwrap().send(o.table.take_ops());
            // Forget b: its record goes, its ID is reserved, a's edge to it goes.
            o.table.forget_unused(10 + 365 * 86_400, 180, |id| id == a);
            o.writer.as_ref().unwrap().send(o.table.take_ops());
            o.writer.take().unwrap().finish();
        }
        let o = open(Some(dir.path())).unwrap();
        assert_eq!(o.table.len(), 1);
        assert_eq!(o.table.id_of(&PublicKey([4; KEY_LEN])), Some(a));
        assert!(o.table.get(a).unwrap().contacts.is_empty());
        assert!(o.table.is_taken(b) && o.table.key_of(b).is_none());
        o.table.check_invariants().unwrap();
    }

    #[test]
    fn a_second_open_of_one_file_is_refused_with_the_key_named() {
        let dir = tempfile::tempdir().unwrap();
        let _first = open(Some(dir.path())).unwrap();
        let e = format!("{:#}", open(Some(dir.path())).unwrap_err());
        assert!(e.contains("signaling.state_dir") && e.contains(FILE), "{e}");
    }
}
