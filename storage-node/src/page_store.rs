//! Durable page versions and the segment's control record, in redb (an embedded, crash-safe
//! B-tree store). A version is a whole page image keyed by (page, LSN of the newest record in it),
//! so a read at any retained LSN finds the newest version at or below it. Each version carries a
//! CRC-32C and is verified on every read: a damaged version is reported, never served.
//!
//! The control record (one row, versioned JSON) holds what must survive a restart and outlive the
//! log files: the segment's descriptor, the installed epoch, truncations, how far the log is
//! materialized and the retention horizon. A coalescing round writes its versions and the new
//! control record in one transaction, so they move together.

use std::path::{Path, PathBuf};

use redb::{Database, Durability, ReadableTable, TableDefinition};

use logdb_types::{Lsn, PageId};

const VERSIONS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("page_versions");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const CONTROL_KEY: &str = "control";
pub use crate::control::{Control, Descriptor, Round, Truncation, CONTROL_FORMAT};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("page store {path}: {source}")]
    Redb {
        path: PathBuf,
        source: Box<redb::Error>,
    },
    #[error("page store {path}: control record unreadable: {reason}")]
    Control { path: PathBuf, reason: String },
    #[error("page {page} version at LSN {lsn} is corrupt (checksum {stored:#010x}, computed {computed:#010x}); not served")]
    CorruptVersion {
        page: PageId,
        lsn: Lsn,
        stored: u32,
        computed: u32,
    },
}

pub struct PageStore {
    path: PathBuf,
    db: Database,
}

impl PageStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(|e| StoreError::Redb {
            path: path.to_path_buf(),
            source: Box::new(e.into()),
        })?;
        let store = PageStore {
            path: path.to_path_buf(),
            db,
        };
        // Create the tables so readers never meet a missing table.
        let tx = store.write_tx()?;
        {
            tx.open_table(VERSIONS).map_err(|e| store.err(e))?;
            tx.open_table(META).map_err(|e| store.err(e))?;
        }
        tx.commit().map_err(|e| store.err(e))?;
        Ok(store)
    }

    fn err(&self, e: impl Into<redb::Error>) -> StoreError {
        StoreError::Redb {
            path: self.path.clone(),
            source: Box::new(e.into()),
        }
    }

    fn write_tx(&self) -> Result<redb::WriteTransaction, StoreError> {
        let mut tx = self.db.begin_write().map_err(|e| self.err(e))?;
        tx.set_durability(Durability::Immediate);
        Ok(tx)
    }

    pub fn control(&self) -> Result<Option<Control>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let meta = tx.open_table(META).map_err(|e| self.err(e))?;
        let Some(raw) = meta.get(CONTROL_KEY).map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        let control: Control =
            serde_json::from_slice(raw.value()).map_err(|e| StoreError::Control {
                path: self.path.clone(),
                reason: e.to_string(),
            })?;
        if control.format != CONTROL_FORMAT {
            return Err(StoreError::Control {
                path: self.path.clone(),
                reason: format!(
                    "format {} is not the supported {CONTROL_FORMAT}",
                    control.format
                ),
            });
        }
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

    /// Stores new versions and the control record in one durable transaction.
    pub fn commit_round(
        &self,
        versions: &[(PageId, Lsn, Vec<u8>)],
        control: &Control,
    ) -> Result<(), StoreError> {
        let tx = self.write_tx()?;
        {
            let mut table = tx.open_table(VERSIONS).map_err(|e| self.err(e))?;
            let mut value = Vec::new();
            for (page, lsn, data) in versions {
                value.clear();
                value.extend_from_slice(&crc32c::crc32c(data).to_le_bytes());
                value.extend_from_slice(data);
                table
                    .insert((page.0, lsn.0), value.as_slice())
                    .map_err(|e| self.err(e))?;
            }
        }
        self.put_control(&tx, control)?;
        tx.commit().map_err(|e| self.err(e))
    }

    /// The newest version of `page` at or below `at`, verified: `(lsn, image)`.
    pub fn newest_version(
        &self,
        page: PageId,
        at: Lsn,
    ) -> Result<Option<(Lsn, Vec<u8>)>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = tx.open_table(VERSIONS).map_err(|e| self.err(e))?;
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
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = tx.open_table(VERSIONS).map_err(|e| self.err(e))?;
        let mut range = table
            .range((page.0, 0)..=(page.0, u64::MAX))
            .map_err(|e| self.err(e))?;
        match range.next_back() {
            None => Ok(None),
            Some(entry) => Ok(Some(Lsn(entry.map_err(|e| self.err(e))?.0.value().1))),
        }
    }

    /// Deletes, for every page, the versions older than its newest version at or below
    /// `horizon` (reads below the horizon are refused, so nothing can need them).
    pub fn remove_versions_below(&self, horizon: Lsn) -> Result<usize, StoreError> {
        let tx = self.write_tx()?;
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
        tx.commit().map_err(|e| self.err(e))?;
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

    #[test]
    fn versions_are_found_by_lsn_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pages.redb");
        let mut control = Control::new(Descriptor::for_tests(), Epoch(1));
        {
            let store = PageStore::open(&path).unwrap();
            control.materialized = Lsn(30);
            store
                .commit_round(
                    &[
                        (PageId(1), Lsn(10), vec![1; 4096]),
                        (PageId(1), Lsn(20), vec![2; 4096]),
                        (PageId(2), Lsn(15), vec![3; 4096]),
                    ],
                    &control,
                )
                .unwrap();
        }
        let store = PageStore::open(&path).unwrap();
        assert_eq!(store.control().unwrap().unwrap(), control);
        assert_eq!(store.newest_version(PageId(1), Lsn(9)).unwrap(), None);
        assert_eq!(
            store.newest_version(PageId(1), Lsn(19)).unwrap().unwrap().0,
            Lsn(10)
        );
        assert_eq!(
            store.newest_version(PageId(1), Lsn(99)).unwrap().unwrap(),
            (Lsn(20), vec![2; 4096])
        );
        assert_eq!(store.newest_version_lsn(PageId(2)).unwrap(), Some(Lsn(15)));
        assert_eq!(store.remove_versions_below(Lsn(25)).unwrap(), 1);
        assert_eq!(store.newest_version(PageId(1), Lsn(19)).unwrap(), None);
        assert_eq!(
            store.newest_version(PageId(2), Lsn(99)).unwrap().unwrap().0,
            Lsn(15)
        );
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
