//! The change feed: an ordered log of every write to the replicated records (products,
//! builds, rings, deltas, and the TUF metadata under `tuf/` in the meta column family),
//! which edges follow to keep their own copy of the catalog and repository.
//!
//! Guarantees:
//! - **Atomic with the change**: a change's log entries are written in the same batch
//!   as the change itself, so the feed never shows a write that did not happen, nor
//!   misses one that did (crash at any point).
//! - **Order**: sequence numbers are assigned under one lock held across the write, so
//!   feed order is commit order.
//! - **Bounded**: the last [`RETAIN`] entries are kept; a follower further behind gets a
//!   full snapshot of the replicated records instead ([`Store::changes_after`]).

use std::sync::Mutex;

use tokio::sync::watch;

use super::kv::{Batch, Cf, Op};
use super::{Store, StoreError};

/// Log entries kept; older ones are dropped as new ones are written.
pub const RETAIN: u64 = 100_000;
/// Most entries in one page of the feed.
pub const PAGE_ENTRIES: usize = 1_000;
/// Most value bytes in one page (a page always carries at least one entry).
pub const PAGE_BYTES: usize = 8 << 20;

const LOG_PREFIX: &[u8] = b"changes/";
const SEQ_KEY: &[u8] = b"changes-seq";
/// The meta-family prefix of replicated records (TUF metadata).
pub const REPLICATED_META_PREFIX: &[u8] = b"tuf/";
/// Column families replicated whole.
pub const REPLICATED_CFS: [Cf; 4] = [Cf::Products, Cf::Builds, Cf::Rings, Cf::Deltas];

/// Whether a record is part of what edges replicate.
pub fn replicated(cf: Cf, key: &[u8]) -> bool {
    REPLICATED_CFS.contains(&cf) || (cf == Cf::Meta && key.starts_with(REPLICATED_META_PREFIX))
}

fn log_key(seq: u64) -> Vec<u8> {
    let mut k = LOG_PREFIX.to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// One replicated write: put (`value` = Some) or delete.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Change {
    pub seq: u64,
    pub cf: String,
    #[serde(with = "hex_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "hex_opt")]
    pub value: Option<Vec<u8>>,
}

/// A page of the feed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChangePage {
    /// True when this page is a full snapshot: the follower replaces every replicated
    /// record it holds with `changes` (all puts).
    pub reset: bool,
    pub changes: Vec<Change>,
    /// Resume with `after = next`.
    pub next: u64,
    /// The feed's head when the page was read (the follower is current at `next == head`).
    pub head: u64,
}

mod hex_bytes {
    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s: String = serde::Deserialize::deserialize(d)?;
        hex::decode(s).map_err(serde::de::Error::custom)
    }
}

mod hex_opt {
    pub fn serialize<S: serde::Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_some(&hex::encode(v)),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        let s: Option<String> = serde::Deserialize::deserialize(d)?;
        s.map(|s| hex::decode(s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

fn cf_by_name(name: &str) -> Option<Cf> {
    Cf::ALL.into_iter().find(|c| c.name() == name)
}

/// Binary form of a log entry: cf index, key length, key, then the value if any.
fn encode_entry(op: &Op) -> Vec<u8> {
    let (cf, key, value) = op;
    let idx = Cf::ALL.iter().position(|c| c == cf).unwrap_or(0) as u8;
    let mut out = Vec::with_capacity(6 + key.len() + value.as_ref().map_or(0, |v| v.len()));
    out.push(idx);
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    match value {
        Some(v) => {
            out.push(1);
            out.extend_from_slice(v);
        }
        None => out.push(0),
    }
    out
}

fn decode_entry(b: &[u8]) -> Option<Op> {
    let cf = *Cf::ALL.get(usize::from(*b.first()?))?;
    let klen = u32::from_le_bytes(b.get(1..5)?.try_into().ok()?) as usize;
    let key = b.get(5..5 + klen)?.to_vec();
    let value = match b.get(5 + klen)? {
        1 => Some(bytes::Bytes::copy_from_slice(&b[6 + klen..])),
        0 => None,
        _ => return None,
    };
    Some((cf, key, value))
}

/// The feed's writer state: the head sequence and a watch that long-polls wait on.
pub struct Feed {
    head: Mutex<u64>,
    tx: watch::Sender<u64>,
}

impl Feed {
    pub(super) fn load(kv: &dyn super::KvStore) -> Result<Feed, StoreError> {
        let head = kv
            .get(Cf::Meta, SEQ_KEY)?
            .and_then(|v| v.try_into().ok().map(u64::from_le_bytes))
            .unwrap_or(0);
        Ok(Feed {
            head: Mutex::new(head),
            tx: watch::channel(head).0,
        })
    }
}

impl Store {
    /// Applies `batch` atomically, logging its replicated writes in the same batch. Every
    /// catalog and repository write goes through here.
    pub fn commit(&self, mut batch: Batch, sync: bool) -> Result<(), StoreError> {
        let mut head = self.feed.head.lock().unwrap_or_else(|e| e.into_inner());
        let mut seq = *head;
        let logged: Vec<Vec<u8>> = batch
            .ops
            .iter()
            .filter(|(cf, key, _)| replicated(*cf, key))
            .map(encode_entry)
            .collect();
        for entry in logged {
            seq += 1;
            batch.put(Cf::Meta, log_key(seq), entry);
            if seq > RETAIN {
                batch.delete(Cf::Meta, log_key(seq - RETAIN));
            }
        }
        if seq != *head {
            batch.put(Cf::Meta, SEQ_KEY, seq.to_le_bytes());
        }
        self.kv.write(batch, sync)?;
        if seq != *head {
            *head = seq;
            self.feed.tx.send_replace(seq);
        }
        Ok(())
    }

    /// The feed's head sequence (0 before the first replicated write).
    pub fn change_head(&self) -> u64 {
        *self.feed.head.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A receiver that changes whenever the head moves (for long-polls).
    pub fn watch_changes(&self) -> watch::Receiver<u64> {
        self.feed.tx.subscribe()
    }

    /// The entries after `after`, at most a page; a full snapshot when `after` is 0 or
    /// older than what the log retains (blocking).
    pub fn changes_after(&self, after: u64) -> Result<ChangePage, StoreError> {
        let head = self.change_head();
        let oldest = head.saturating_sub(RETAIN) + 1;
        if after == 0 || after + 1 < oldest || after > head {
            return self.snapshot_page(head);
        }
        let mut changes = Vec::new();
        let mut bytes = 0usize;
        let mut bad = None;
        self.kv
            .scan_from(Cf::Meta, &log_key(after + 1), &mut |k, v| {
                if !k.starts_with(LOG_PREFIX) {
                    return false;
                }
                let Some(seq) = k[LOG_PREFIX.len()..]
                    .try_into()
                    .ok()
                    .map(u64::from_be_bytes)
                else {
                    return false;
                };
                let Some((cf, key, value)) = decode_entry(v) else {
                    bad = Some(seq);
                    return false;
                };
                bytes += key.len() + value.as_ref().map_or(0, |v| v.len());
                changes.push(Change {
                    seq,
                    cf: cf.name().into(),
                    key,
                    value: value.map(Vec::from),
                });
                changes.len() < PAGE_ENTRIES && bytes < PAGE_BYTES
            })?;
        if let Some(seq) = bad {
            return Err(StoreError::Engine(format!(
                "change log entry {seq} is corrupt"
            )));
        }
        let next = changes.last().map_or(after, |c| c.seq);
        Ok(ChangePage {
            reset: false,
            changes,
            next,
            head,
        })
    }

    /// Every replicated record as puts, resuming at `head` (read after `head`, so later
    /// entries may be reflected already; replaying them converges to the same state).
    fn snapshot_page(&self, head: u64) -> Result<ChangePage, StoreError> {
        let mut changes = Vec::new();
        let mut put = |cf: Cf, k: &[u8], v: &[u8]| {
            changes.push(Change {
                seq: head,
                cf: cf.name().into(),
                key: k.to_vec(),
                value: Some(v.to_vec()),
            });
        };
        for cf in REPLICATED_CFS {
            self.kv.scan(cf, &[], &mut |k, v| {
                put(cf, k, v);
                true
            })?;
        }
        self.kv
            .scan(Cf::Meta, REPLICATED_META_PREFIX, &mut |k, v| {
                put(Cf::Meta, k, v);
                true
            })?;
        Ok(ChangePage {
            reset: true,
            changes,
            next: head,
            head,
        })
    }

    /// Applies a page read from an upstream's feed, with `cursor_key` set to its `next`
    /// in the same batch (so a crash never skips or half-applies a page). A reset page
    /// first deletes every replicated record held.
    pub fn apply_changes(&self, page: &ChangePage, cursor_key: &[u8]) -> Result<(), StoreError> {
        let mut batch = Batch::default();
        if page.reset {
            for cf in REPLICATED_CFS {
                self.kv.scan_keys(cf, &mut |k| {
                    batch.delete(cf, k.to_vec());
                    true
                })?;
            }
            self.kv
                .scan(Cf::Meta, REPLICATED_META_PREFIX, &mut |k, _| {
                    batch.delete(Cf::Meta, k.to_vec());
                    true
                })?;
        }
        for c in &page.changes {
            let cf = cf_by_name(&c.cf)
                .filter(|cf| replicated(*cf, &c.key))
                .ok_or_else(|| {
                    StoreError::Engine(format!(
                        "change {} names a record that is not replicated ({} {})",
                        c.seq,
                        c.cf,
                        String::from_utf8_lossy(&c.key)
                    ))
                })?;
            match &c.value {
                Some(v) => batch.put(cf, c.key.clone(), v.clone()),
                None => batch.delete(cf, c.key.clone()),
            }
        }
        batch.put(Cf::Meta, cursor_key, page.next.to_le_bytes());
        self.commit(batch, true)
    }

    /// Loads full snapshot `page` into a store that holds no replicated record (a
    /// restore), without logging it, and moves the feed's head to `head`. A restore
    /// passes a head past every sequence the snapshot's origin can have issued, so every
    /// follower, wherever it was, is handed a full snapshot next.
    pub fn load_snapshot(&self, page: &ChangePage, head: u64) -> Result<usize, StoreError> {
        let mut held = 0usize;
        for cf in REPLICATED_CFS {
            self.kv.scan_keys(cf, &mut |_| {
                held += 1;
                false
            })?;
        }
        if held > 0 || !page.reset {
            return Err(StoreError::Engine(
                "a snapshot is loaded only into a store with no catalog".into(),
            ));
        }
        let mut batch = Batch::default();
        for c in &page.changes {
            let cf = cf_by_name(&c.cf)
                .filter(|cf| replicated(*cf, &c.key))
                .ok_or_else(|| {
                    StoreError::Engine(format!(
                        "snapshot names a record that is not replicated ({} {})",
                        c.cf,
                        String::from_utf8_lossy(&c.key)
                    ))
                })?;
            if let Some(v) = &c.value {
                batch.put(cf, c.key.clone(), v.clone());
            }
        }
        let mut at = self.feed.head.lock().unwrap_or_else(|e| e.into_inner());
        let head = head.max(*at);
        batch.put(Cf::Meta, SEQ_KEY, head.to_le_bytes());
        self.kv.write(batch, true)?;
        *at = head;
        self.feed.tx.send_replace(head);
        Ok(page.changes.len())
    }

    /// A cursor stored by [`Store::apply_changes`] (0 if none).
    pub fn cursor(&self, key: &[u8]) -> Result<u64, StoreError> {
        Ok(self
            .kv
            .get(Cf::Meta, key)?
            .and_then(|v| v.try_into().ok().map(u64::from_le_bytes))
            .unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::memory_store;
    use super::*;

    fn put(store: &Store, cf: Cf, k: &str, v: &str) {
        let mut b = Batch::default();
        b.put(cf, k.as_bytes(), v.as_bytes());
        store.commit(b, false).unwrap();
    }

    #[test]
    fn only_replicated_writes_are_logged_in_commit_order() {
        let (store, _) = memory_store();
        put(&store, Cf::Products, "p", "1");
        put(&store, Cf::Devices, "d", "x");
        put(&store, Cf::Meta, "stats-ish", "x");
        put(&store, Cf::Meta, "tuf/timestamp", "t1");
        let mut b = Batch::default();
        b.delete(Cf::Products, "p");
        b.put(Cf::Rings, "p\0general", "r");
        store.commit(b, false).unwrap();
        assert_eq!(store.change_head(), 4);
        let page = store.changes_after(1).unwrap();
        assert!(!page.reset);
        let got: Vec<(u64, &str, Option<&[u8]>)> = page
            .changes
            .iter()
            .map(|c| (c.seq, c.cf.as_str(), c.value.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                (2, "meta", Some(&b"t1"[..])),
                (3, "products", None),
                (4, "rings", Some(&b"r"[..]))
            ]
        );
        assert_eq!((page.next, page.head), (4, 4));
        let empty = store.changes_after(4).unwrap();
        assert!(empty.changes.is_empty() && !empty.reset && empty.next == 4);
    }

    #[test]
    fn a_follower_replays_pages_or_a_snapshot_to_the_same_records() {
        let (origin, _) = memory_store();
        let (edge, _) = memory_store();
        put(&origin, Cf::Products, "a", "1");
        put(&origin, Cf::Builds, "a\0v1", "b1");
        // First contact: a snapshot.
        let first = origin.changes_after(0).unwrap();
        assert!(first.reset && first.changes.len() == 2);
        edge.apply_changes(&first, b"cursor").unwrap();
        put(&origin, Cf::Builds, "a\0v2", "b2");
        let mut b = Batch::default();
        b.delete(Cf::Builds, "a\0v1");
        origin.commit(b, false).unwrap();
        let page = origin
            .changes_after(edge.cursor(b"cursor").unwrap())
            .unwrap();
        assert_eq!(page.changes.len(), 2);
        edge.apply_changes(&page, b"cursor").unwrap();
        let dump = |s: &Store| {
            let mut out = Vec::new();
            s.kv()
                .scan(Cf::Builds, &[], &mut |k, v| {
                    out.push((k.to_vec(), v.to_vec()));
                    true
                })
                .unwrap();
            out
        };
        assert_eq!(dump(&edge), dump(&origin));
        assert_eq!(dump(&edge).len(), 1);
        assert_eq!(edge.cursor(b"cursor").unwrap(), origin.change_head());
        // A follower ahead of the head (origin restored from an older backup) resyncs.
        assert!(origin.changes_after(99).unwrap().reset);
    }

    #[test]
    fn a_page_naming_an_unreplicated_record_is_refused_and_applies_nothing() {
        let (edge, _) = memory_store();
        let page = ChangePage {
            reset: false,
            changes: vec![
                Change {
                    seq: 1,
                    cf: "builds".into(),
                    key: b"x".to_vec(),
                    value: Some(b"y".to_vec()),
                },
                Change {
                    seq: 2,
                    cf: "chunks".into(),
                    key: b"k".to_vec(),
                    value: Some(b"v".to_vec()),
                },
            ],
            next: 2,
            head: 2,
        };
        assert!(edge.apply_changes(&page, b"cursor").is_err());
        assert_eq!(edge.kv().get(Cf::Builds, b"x").unwrap(), None);
        assert_eq!(edge.cursor(b"cursor").unwrap(), 0);
    }

    #[test]
    fn entries_round_trip_their_binary_form() {
        for op in [
            (
                Cf::Rings,
                b"k".to_vec(),
                Some(bytes::Bytes::from_static(b"v")),
            ),
            (Cf::Meta, b"tuf/x".to_vec(), None),
            (Cf::Builds, vec![], Some(bytes::Bytes::new())),
        ] {
            assert_eq!(decode_entry(&encode_entry(&op)), Some(op));
        }
        assert_eq!(decode_entry(&[200]), None);
        assert_eq!(decode_entry(&[1, 9, 0, 0, 0, 1]), None);
    }
}
