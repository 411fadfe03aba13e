//! The page-version store and the segment's control record, in redb (an embedded, crash-safe
//! B-tree store) — the layered shape of docs/STORAGE.md: the log is the history, this indexes it.
//!
//! - **Deltas** (`page_deltas`): per page and coalescing round, (page, LSN of the round's first
//!   record of it) → for each of its records, the LSN, the epoch it was written under and where
//!   its frame is in the segment's log (28 bytes a record; the record's bytes stay in the log
//!   file, which is immutable once rotated). One entry per page per round, not per record: a hot
//!   page's dozens of records in a round cost one B-tree entry.
//! - **Images** (`page_versions`): whole page images keyed by (page, LSN of the newest record in
//!   them), written only where they pay: a page's delta chain passed a threshold, or a
//!   retention checkpoint. Each carries a CRC-32C, verified on every read.
//!
//! A read at any retained LSN is the newest image at or below it plus the deltas above it, from
//! one read transaction (a consistent snapshot). The control record (one row, versioned JSON)
//! holds what must survive a restart and outlive the log files: the descriptor, the installed
//! epoch, truncations, how far the log is materialized, the retention horizon and checkpoints.
//! A coalescing round writes its deltas, images and control record in one transaction; so does
//! a checkpoint (its images, the deltas and images it makes unreachable, the new horizon).
//!
//! redb refuses every call after one I/O error (a full disk during a commit): the store then
//! drops its handle and opens the file again on the next call — redb's crash recovery brings
//! back the last committed state — so a disk that filled for a while costs the calls made
//! while it was full, not the segment.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use redb::{Database, Durability, ReadableTable, TableDefinition};

use crate::segment_log::Loc;
use logdb_types::{Epoch, Lsn, PageId};

const VERSIONS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("page_versions");
const DELTAS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("page_deltas");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const CONTROL_KEY: &str = "control";
const CACHE_BYTES: usize = 16 << 20;
pub use crate::control::{Control, Descriptor, Round, Truncation, CONTROL_FORMAT};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("page store {path}: {source}")]
    Redb {
        path: PathBuf,
        source: Box<redb::Error>,
    },
    #[error("page store {path} is being reopened after an I/O error ({reason}); retry")]
    Reopening { path: PathBuf, reason: String },
    #[error("page store {path}: control record unreadable: {reason}")]
    Control { path: PathBuf, reason: String },
    #[error("page {page} delta index entry at LSN {lsn} is malformed; not served")]
    CorruptDelta { page: PageId, lsn: Lsn },
    #[error("page store {path}: {reason}")]
    Unencodable { path: PathBuf, reason: String },
    #[error("page {page} version at LSN {lsn} is corrupt (checksum {stored:#010x}, computed {computed:#010x}); not served")]
    CorruptVersion {
        page: PageId,
        lsn: Lsn,
        stored: u32,
        computed: u32,
    },
}

/// Where a materialized record is: its log frame, and the epoch it was written under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeltaRef {
    pub epoch: Epoch,
    pub loc: Loc,
}

/// One record in a delta entry: LSN (8), epoch (4), log file (4), offset (8), length (4).
const DELTA_LEN: usize = 28;

fn encode_delta(out: &mut Vec<u8>, lsn: Lsn, d: &DeltaRef) -> Result<(), String> {
    let small = |what: &str, v: u64| {
        u32::try_from(v).map_err(|_| format!("{what} {v} does not fit the delta index's 32 bits"))
    };
    out.extend_from_slice(&lsn.0.to_le_bytes());
    out.extend_from_slice(&small("epoch", d.epoch.0)?.to_le_bytes());
    out.extend_from_slice(&small("log file", d.loc.file)?.to_le_bytes());
    out.extend_from_slice(&d.loc.offset.to_le_bytes());
    out.extend_from_slice(&d.loc.len.to_le_bytes());
    Ok(())
}

/// The records of one delta entry, oldest first (`None`: malformed).
fn decode_deltas(raw: &[u8]) -> Option<Vec<(Lsn, DeltaRef)>> {
    if raw.is_empty() || !raw.len().is_multiple_of(DELTA_LEN) {
        return None;
    }
    let u32_at = |b: &[u8], i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4"));
    let u64_at = |b: &[u8], i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8"));
    Some(
        raw.chunks_exact(DELTA_LEN)
            .map(|b| {
                (
                    Lsn(u64_at(b, 0)),
                    DeltaRef {
                        epoch: Epoch(u32_at(b, 8) as u64),
                        loc: Loc {
                            file: u32_at(b, 12) as u64,
                            offset: u64_at(b, 16),
                            len: u32_at(b, 24),
                        },
                    },
                )
            })
            .collect(),
    )
}

/// The LSN of the newest record of a delta entry.
fn last_lsn(raw: &[u8]) -> u64 {
    raw.len().checked_sub(DELTA_LEN).map_or(0, |i| {
        u64::from_le_bytes(raw[i..i + 8].try_into().expect("8"))
    })
}

/// What a read of a page at an LSN starts from: the newest image at or below it (`None`: the
/// page starts zeroed at `lsn` 0) and the deltas above it, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Base {
    pub lsn: Lsn,
    pub image: Option<Vec<u8>>,
    pub deltas: Vec<(Lsn, DeltaRef)>,
}

/// What a checkpoint removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub deltas: usize,
    pub images: usize,
}

pub struct PageStore {
    path: PathBuf,
    /// `None` only while a reopen after an I/O error has not succeeded yet.
    db: RwLock<Option<Arc<Database>>>,
    /// redb met an I/O error and refuses every call until reopened.
    failed: AtomicBool,
}

fn open_db(path: &Path) -> Result<Database, StoreError> {
    // A small cache: reads of old images and deltas are rare and the OS caches the file;
    // redb's default (1 GiB) would grow with the store and the node's RSS with it.
    redb::Builder::new()
        .set_cache_size(CACHE_BYTES)
        .create(path)
        .map_err(|e| StoreError::Redb {
            path: path.to_path_buf(),
            source: Box::new(e.into()),
        })
}

impl PageStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let store = PageStore {
            path: path.to_path_buf(),
            db: RwLock::new(Some(Arc::new(open_db(path)?))),
            failed: AtomicBool::new(false),
        };
        // Create the tables so readers never meet a missing table.
        let tx = store.write_tx()?;
        {
            tx.open_table(VERSIONS).map_err(|e| store.err(e))?;
            tx.open_table(DELTAS).map_err(|e| store.err(e))?;
            tx.open_table(META).map_err(|e| store.err(e))?;
        }
        tx.commit().map_err(|e| store.err(e))?;
        Ok(store)
    }

    fn err(&self, e: impl Into<redb::Error>) -> StoreError {
        let e = e.into();
        if matches!(e, redb::Error::Io(_) | redb::Error::PreviousIo) {
            self.failed.store(true, Ordering::Release);
        }
        StoreError::Redb {
            path: self.path.clone(),
            source: Box::new(e),
        }
    }

    /// The database, reopened first if an I/O error failed it.
    fn db(&self) -> Result<Arc<Database>, StoreError> {
        if self.failed.load(Ordering::Acquire) {
            self.reopen()?;
        }
        self.db
            .read()
            .expect("page store lock")
            .clone()
            .ok_or_else(|| StoreError::Reopening {
                path: self.path.clone(),
                reason: "not open yet".into(),
            })
    }

    fn reopen(&self) -> Result<(), StoreError> {
        let mut db = self.db.write().expect("page store lock");
        if !self.failed.load(Ordering::Acquire) {
            return Ok(());
        }
        // A call that began on the failed handle may report its error after a reopen: the
        // current handle is kept if it takes a write transaction (redb refuses one after an
        // I/O error).
        if let Some(current) = db.as_ref() {
            if current.begin_write().is_ok() {
                self.failed.store(false, Ordering::Release);
                return Ok(());
            }
        }
        // The failed handle goes first (redb locks its file); while a call still holds it the
        // open below is refused and the next call tries again.
        drop(db.take());
        let fresh = open_db(&self.path).map_err(|e| StoreError::Reopening {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        *db = Some(Arc::new(fresh));
        self.failed.store(false, Ordering::Release);
        tracing::info!(path = %self.path.display(), "page store reopened after an I/O error");
        Ok(())
    }

    fn write_tx(&self) -> Result<redb::WriteTransaction, StoreError> {
        let mut tx = self.db()?.begin_write().map_err(|e| self.err(e))?;
        tx.set_durability(Durability::Immediate);
        Ok(tx)
    }

    pub fn control(&self) -> Result<Option<Control>, StoreError> {
        let tx = self.db()?.begin_read().map_err(|e| self.err(e))?;
        let meta = tx.open_table(META).map_err(|e| self.err(e))?;
        let Some(raw) = meta.get(CONTROL_KEY).map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        let control = Control::decode(raw.value()).map_err(|reason| StoreError::Control {
            path: self.path.clone(),
            reason,
        })?;
        Ok(Some(control))
    }

    fn put_control(
        &self,
        tx: &redb::WriteTransaction,
        control: &Control,
    ) -> Result<(), StoreError> {
        let raw = serde_json::to_vec(control).expect("control serializes");
        let mut meta = tx.open_table(META).map_err(|e| self.err(e))?;
        meta.insert(CONTROL_KEY, raw.as_slice())
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Durably replaces the control record.
    pub fn save_control(&self, control: &Control) -> Result<(), StoreError> {
        let tx = self.write_tx()?;
        self.put_control(&tx, control)?;
        tx.commit().map_err(|e| self.err(e))
    }

    fn put_images(
        &self,
        tx: &redb::WriteTransaction,
        images: &[(PageId, Lsn, Vec<u8>)],
    ) -> Result<(), StoreError> {
        let mut table = tx.open_table(VERSIONS).map_err(|e| self.err(e))?;
        let mut value = Vec::new();
        for (page, lsn, data) in images {
            value.clear();
            value.extend_from_slice(&crc32c::crc32c(data).to_le_bytes());
            value.extend_from_slice(data);
            table
                .insert((page.0, lsn.0), value.as_slice())
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// A coalescing round: its deltas (by page, oldest first: one entry per page), the images
    /// it wrote and the control record, in one durable transaction.
    pub fn commit_round(
        &self,
        deltas: &[(PageId, Lsn, DeltaRef)],
        images: &[(PageId, Lsn, Vec<u8>)],
        control: &Control,
    ) -> Result<(), StoreError> {
        let tx = self.write_tx()?;
        {
            let mut table = tx.open_table(DELTAS).map_err(|e| self.err(e))?;
            let mut value = Vec::new();
            for group in deltas.chunk_by(|a, b| a.0 == b.0) {
                value.clear();
                for (_, lsn, d) in group {
                    encode_delta(&mut value, *lsn, d).map_err(|reason| {
                        StoreError::Unencodable {
                            path: self.path.clone(),
                            reason,
                        }
                    })?;
                }
                let (page, first, _) = group[0];
                table
                    .insert((page.0, first.0), value.as_slice())
                    .map_err(|e| self.err(e))?;
            }
        }
        self.put_images(&tx, images)?;
        self.put_control(&tx, control)?;
        tx.commit().map_err(|e| self.err(e))
    }

    /// What a read of `page` at `at` starts from, from one snapshot: the newest image at or
    /// below `at` and the deltas above it up to `through` (what the caller holds above
    /// `through` it applies itself).
    pub fn base(&self, page: PageId, at: Lsn, through: Lsn) -> Result<Base, StoreError> {
        let tx = self.db()?.begin_read().map_err(|e| self.err(e))?;
        let images = tx.open_table(VERSIONS).map_err(|e| self.err(e))?;
        let (lsn, image) = match self.newest_in(&images, page, at)? {
            Some((lsn, image)) => (lsn, Some(image)),
            None => (Lsn::ZERO, None),
        };
        let deltas = tx.open_table(DELTAS).map_err(|e| self.err(e))?;
        let through = through.min(at);
        let out = if lsn < through {
            self.deltas_in(&deltas, page, lsn, through)?
        } else {
            Vec::new()
        };
        Ok(Base {
            lsn,
            image,
            deltas: out,
        })
    }

    /// The deltas of `page` in (`above`, `through`], oldest first: from the entry that may
    /// straddle `above` (the newest starting at or below it) on.
    fn deltas_in(
        &self,
        table: &redb::ReadOnlyTable<(u64, u64), &'static [u8]>,
        page: PageId,
        above: Lsn,
        through: Lsn,
    ) -> Result<Vec<(Lsn, DeltaRef)>, StoreError> {
        let start = match table
            .range((page.0, 0)..=(page.0, above.0))
            .map_err(|e| self.err(e))?
            .next_back()
        {
            Some(entry) => entry.map_err(|e| self.err(e))?.0.value().1,
            None => above.0.saturating_add(1),
        };
        let mut out = Vec::new();
        for entry in table
            .range((page.0, start)..=(page.0, through.0))
            .map_err(|e| self.err(e))?
        {
            let (key, value) = entry.map_err(|e| self.err(e))?;
            let records = decode_deltas(value.value()).ok_or(StoreError::CorruptDelta {
                page,
                lsn: Lsn(key.value().1),
            })?;
            out.extend(
                records
                    .into_iter()
                    .filter(|(l, _)| *l > above && *l <= through),
            );
        }
        Ok(out)
    }

    /// The deltas of `page` above its newest image: how many, and their frames' bytes (what
    /// reconstructing it costs; the image policy decides from this).
    pub fn chain_above_image(&self, page: PageId) -> Result<(u64, u64), StoreError> {
        let tx = self.db()?.begin_read().map_err(|e| self.err(e))?;
        let images = tx.open_table(VERSIONS).map_err(|e| self.err(e))?;
        let image_lsn = match images
            .range((page.0, 0)..=(page.0, u64::MAX))
            .map_err(|e| self.err(e))?
            .next_back()
        {
            Some(entry) => entry.map_err(|e| self.err(e))?.0.value().1,
            None => 0,
        };
        let deltas = tx.open_table(DELTAS).map_err(|e| self.err(e))?;
        let above = self.deltas_in(&deltas, page, Lsn(image_lsn), Lsn(u64::MAX))?;
        Ok((
            above.len() as u64,
            above.iter().map(|(_, d)| d.loc.len as u64).sum(),
        ))
    }

    /// For every page with deltas at or below `horizon`: the LSN of its last one there (what
    /// a checkpoint at `horizon` images).
    pub fn last_deltas_through(&self, horizon: Lsn) -> Result<Vec<(PageId, Lsn)>, StoreError> {
        let tx = self.db()?.begin_read().map_err(|e| self.err(e))?;
        let deltas = tx.open_table(DELTAS).map_err(|e| self.err(e))?;
        let mut out: Vec<(PageId, Lsn)> = Vec::new();
        for entry in deltas.iter().map_err(|e| self.err(e))? {
            let (key, value) = entry.map_err(|e| self.err(e))?;
            let (page, first) = key.value();
            if first > horizon.0 {
                continue;
            }
            let records = decode_deltas(value.value()).ok_or(StoreError::CorruptDelta {
                page: PageId(page),
                lsn: Lsn(first),
            })?;
            let Some(lsn) = records
                .iter()
                .map(|(l, _)| *l)
                .take_while(|l| *l <= horizon)
                .last()
            else {
                continue;
            };
            match out.last_mut() {
                Some((p, l)) if p.0 == page => *l = lsn,
                _ => out.push((PageId(page), lsn)),
            }
        }
        Ok(out)
    }

    /// A retention checkpoint at `control.horizon`, in one durable transaction: stores
    /// `images` (each page's state at its last delta at or below the horizon), then removes
    /// every delta entry wholly at or below the horizon (one that straddles it stays; reads
    /// skip what lies below their image) and, per page, every image older than its newest at or
    /// below the horizon — nothing a read at or above the horizon can need.
    pub fn checkpoint(
        &self,
        images: &[(PageId, Lsn, Vec<u8>)],
        control: &Control,
    ) -> Result<Removed, StoreError> {
        let horizon = control.horizon.0;
        let tx = self.write_tx()?;
        self.put_images(&tx, images)?;
        let mut removed = Removed::default();
        {
            let mut deltas = tx.open_table(DELTAS).map_err(|e| self.err(e))?;
            deltas
                .retain(|_, value| {
                    let keep = last_lsn(value) > horizon;
                    if !keep {
                        removed.deltas += value.len() / DELTA_LEN;
                    }
                    keep
                })
                .map_err(|e| self.err(e))?;
        }
        removed.images = self.remove_images_below(&tx, control.horizon)?;
        self.put_control(&tx, control)?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(removed)
    }

    /// The pages the store holds an image or a delta of, in order, at most `limit`.
    pub fn pages(&self, limit: usize) -> Result<Vec<PageId>, StoreError> {
        let tx = self.db()?.begin_read().map_err(|e| self.err(e))?;
        let mut out = std::collections::BTreeSet::new();
        for def in [VERSIONS, DELTAS] {
            let table = tx.open_table(def).map_err(|e| self.err(e))?;
            // Skip from page to page: one seek per page, not one step per entry.
            let mut next = 0u64;
            while out.len() < limit.saturating_mul(2) {
                let Some(entry) = table.range((next, 0)..).map_err(|e| self.err(e))?.next() else {
                    break;
                };
                let page = entry.map_err(|e| self.err(e))?.0.value().0;
                out.insert(PageId(page));
                match page.checked_add(1) {
                    Some(p) => next = p,
                    None => break,
                }
            }
        }
        Ok(out.into_iter().take(limit).collect())
    }

    /// Bytes of the store's file on disk.
    pub fn file_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }

    /// The newest version of `page` at or below `at`, verified: `(lsn, image)`.
    pub fn newest_version(
        &self,
        page: PageId,
        at: Lsn,
    ) -> Result<Option<(Lsn, Vec<u8>)>, StoreError> {
        let tx = self.db()?.begin_read().map_err(|e| self.err(e))?;
        let table = tx.open_table(VERSIONS).map_err(|e| self.err(e))?;
        self.newest_in(&table, page, at)
    }

    fn newest_in(
        &self,
        table: &redb::ReadOnlyTable<(u64, u64), &'static [u8]>,
        page: PageId,
        at: Lsn,
    ) -> Result<Option<(Lsn, Vec<u8>)>, StoreError> {
        let mut range = table
            .range((page.0, 0)..=(page.0, at.0))
            .map_err(|e| self.err(e))?;
        let Some(entry) = range.next_back() else {
            return Ok(None);
        };
        let (key, value) = entry.map_err(|e| self.err(e))?;
        let lsn = Lsn(key.value().1);
        let raw = value.value();
        if raw.len() < 4 {
            return Err(StoreError::CorruptVersion {
                page,
                lsn,
                stored: 0,
                computed: 0,
            });
        }
        let stored = u32::from_le_bytes(raw[..4].try_into().expect("4 bytes"));
        let data = &raw[4..];
        let computed = crc32c::crc32c(data);
        if stored != computed {
            return Err(StoreError::CorruptVersion {
                page,
                lsn,
                stored,
                computed,
            });
        }
        Ok(Some((lsn, data.to_vec())))
    }

    /// LSN of the newest version of `page` (any LSN), without reading the image.
    pub fn newest_version_lsn(&self, page: PageId) -> Result<Option<Lsn>, StoreError> {
        let tx = self.db()?.begin_read().map_err(|e| self.err(e))?;
        let table = tx.open_table(VERSIONS).map_err(|e| self.err(e))?;
        let mut range = table
            .range((page.0, 0)..=(page.0, u64::MAX))
            .map_err(|e| self.err(e))?;
        match range.next_back() {
            None => Ok(None),
            Some(entry) => Ok(Some(Lsn(entry.map_err(|e| self.err(e))?.0.value().1))),
        }
    }

    /// Deletes, for every page, the images older than its newest image at or below
    /// `horizon` (reads below the horizon are refused, so nothing can need them).
    fn remove_images_below(
        &self,
        tx: &redb::WriteTransaction,
        horizon: Lsn,
    ) -> Result<usize, StoreError> {
        let mut removed = 0;
        {
            let mut table = tx.open_table(VERSIONS).map_err(|e| self.err(e))?;
            let mut doomed = Vec::new();
            let mut prev: Option<(u64, u64)> = None;
            for entry in table.iter().map_err(|e| self.err(e))? {
                let (key, _) = entry.map_err(|e| self.err(e))?;
                let (page, lsn) = key.value();
                if let Some((p, l)) = prev {
                    // `prev` is older than this version of the same page, and this one is
                    // still at or below the horizon: `prev` can never be read again.
                    if p == page && lsn <= horizon.0 {
                        doomed.push((p, l));
                    }
                }
                prev = Some((page, lsn));
            }
            for key in doomed {
                table.remove(key).map_err(|e| self.err(e))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use logdb_types::Epoch;

    fn delta(file: u64, offset: u64) -> DeltaRef {
        DeltaRef {
            epoch: Epoch(3),
            loc: Loc {
                file,
                offset,
                len: 90,
            },
        }
    }

    #[test]
    fn a_read_base_is_the_newest_image_and_the_deltas_above_it_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pages.redb");
        let mut control = Control::new(Descriptor::for_tests(), Epoch(1));
        {
            let store = PageStore::open(&path).unwrap();
            control.materialized = Lsn(30);
            store
                .commit_round(
                    &[
                        (PageId(1), Lsn(5), delta(1, 0)),
                        (PageId(1), Lsn(10), delta(1, 90)),
                        (PageId(1), Lsn(20), delta(1, 180)),
                        (PageId(1), Lsn(25), delta(2, 0)),
                        (PageId(2), Lsn(15), delta(1, 270)),
                    ],
                    &[(PageId(1), Lsn(10), vec![1; 4096])],
                    &control,
                )
                .unwrap();
        }
        let store = PageStore::open(&path).unwrap();
        assert_eq!(store.control().unwrap().unwrap(), control);
        // Below the image: no image, every delta from the start.
        let b = store.base(PageId(1), Lsn(9), Lsn(30)).unwrap();
        assert_eq!((b.lsn, b.image.is_none()), (Lsn::ZERO, true));
        assert_eq!(b.deltas, vec![(Lsn(5), delta(1, 0))]);
        // Above it: the image, then the deltas up to the read point and the caller's bound.
        let b = store.base(PageId(1), Lsn(99), Lsn(30)).unwrap();
        assert_eq!(
            (b.lsn, b.image.as_deref()),
            (Lsn(10), Some(&[1u8; 4096][..]))
        );
        assert_eq!(
            b.deltas.iter().map(|d| d.0).collect::<Vec<_>>(),
            [Lsn(20), Lsn(25)]
        );
        let b = store.base(PageId(1), Lsn(99), Lsn(22)).unwrap();
        assert_eq!(b.deltas, vec![(Lsn(20), delta(1, 180))]);
        assert_eq!(store.chain_above_image(PageId(1)).unwrap(), (2, 180));
        assert_eq!(store.chain_above_image(PageId(2)).unwrap(), (1, 90));
        assert_eq!(
            store.last_deltas_through(Lsn(22)).unwrap(),
            [(PageId(1), Lsn(20)), (PageId(2), Lsn(15))]
        );

        // A checkpoint at 22: the images it brings, the deltas and the older images it frees.
        control.horizon = Lsn(22);
        let removed = store
            .checkpoint(
                &[
                    (PageId(1), Lsn(20), vec![2; 4096]),
                    (PageId(2), Lsn(15), vec![3; 4096]),
                ],
                &control,
            )
            .unwrap();
        // Page 1's entry (5, 10, 20, 25) straddles the horizon and stays; page 2's goes.
        assert_eq!(
            removed,
            Removed {
                deltas: 1,
                images: 1
            }
        );
        let b = store.base(PageId(1), Lsn(99), Lsn(30)).unwrap();
        assert_eq!((b.lsn, b.image.unwrap()[0]), (Lsn(20), 2));
        assert_eq!(b.deltas, vec![(Lsn(25), delta(2, 0))]);
        let b = store.base(PageId(2), Lsn(22), Lsn(30)).unwrap();
        assert_eq!((b.lsn, b.deltas.len()), (Lsn(15), 0));
        assert_eq!(store.newest_version_lsn(PageId(2)).unwrap(), Some(Lsn(15)));
        assert_eq!(store.control().unwrap().unwrap().horizon, Lsn(22));
    }

    #[test]
    fn truncation_rule() {
        let t = Truncation {
            epoch: Epoch(5),
            above: Lsn(100),
            next: Lsn(120),
        };
        assert!(t.discards(Epoch(4), Lsn(101)));
        assert!(!t.discards(Epoch(4), Lsn(100)));
        assert!(
            !t.discards(Epoch(5), Lsn(101)),
            "the new writer's own records stay"
        );
    }
}
