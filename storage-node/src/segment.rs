//! One segment: a PG's copy on this node. Ties the durable log, the SCL chain, the record index,
//! the page store and the epoch together, and gives the four things the service needs — append
//! durably, read a page at an LSN, coalesce, and the recovery calls (install epoch, truncate).
//!
//! Concurrency: `state` (a short-held mutex) is the index; the log's flusher does the fsyncs
//! without it, so many requests share an fsync. `control_lock` serializes every change of the
//! durable control record (epoch, truncation, coalescing round, retention), so no change can
//! overwrite another's.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::acceptance::{Acceptance, Change, Header, Refusal};
use crate::chain::ChainError;
use crate::fencing::{Fenced, VolumeEpochs};
use crate::frame;
use crate::page_store::{Control, Descriptor, PageStore, Round, StoreError, Truncation};
use crate::segment_log::{Loc, LogError, ReplayReport, SegmentLog};
use logdb_types::page_apply;
use logdb_types::record::{RecordError, RedoRecord};
use logdb_types::{Epoch, Lsn, PageId, SegmentKey};

#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("segment {segment}: {source}")]
    Record {
        segment: SegmentKey,
        source: RecordError,
    },
    #[error("segment {segment}: {reason}")]
    Invalid { segment: SegmentKey, reason: String },
    #[error(transparent)]
    Fenced(#[from] Fenced),
    #[error("segment {segment}: {source}")]
    Chain {
        segment: SegmentKey,
        source: ChainError,
    },
    #[error("segment {segment}: requested LSN {requested} is above the segment complete LSN {scl}; retry later or read another segment")]
    NotYetComplete {
        segment: SegmentKey,
        requested: Lsn,
        scl: Lsn,
    },
    #[error(
        "segment {segment}: requested LSN {requested} is below the retention horizon {horizon}"
    )]
    BelowHorizon {
        segment: SegmentKey,
        requested: Lsn,
        horizon: Lsn,
    },
    #[error("segment {segment}: cannot truncate above {above}: records up to {materialized} are already materialized (truncation must not go below the writer's announced VDL)")]
    TruncateBelowMaterialized {
        segment: SegmentKey,
        above: Lsn,
        materialized: Lsn,
    },
    #[error("segment {segment}: {source}")]
    Store {
        segment: SegmentKey,
        source: StoreError,
    },
    #[error("segment {segment}: {source}")]
    Log {
        segment: SegmentKey,
        source: LogError,
    },
}

impl SegmentError {
    /// Whether the error reports damaged stored data.
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            SegmentError::Store {
                source: StoreError::CorruptVersion { .. },
                ..
            } | SegmentError::Log {
                source: LogError::Corrupt { .. },
                ..
            }
        )
    }
}

/// What the segment keeps with a retained record: where it is in the log, and its bytes while
/// not yet materialized.
#[derive(Clone, Debug)]
struct Stored {
    loc: Loc,
    rec: Option<Arc<RedoRecord>>,
}

#[derive(Debug)]
struct State {
    /// The acceptance rules and the record index (pure).
    core: Acceptance<Stored>,
    coalescing: HashSet<PageId>,
}

/// A snapshot of the segment's progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentStatus {
    pub descriptor: Descriptor,
    pub scl: Lsn,
    pub highest_lsn: Lsn,
    pub epoch: Epoch,
    pub materialized: Lsn,
    pub horizon: Lsn,
    pub pending_records: u64,
    pub last_committed: Lsn,
    pub highest_commit: Lsn,
    pub highest_commit_ts_us: u64,
    /// The recovery decisions this segment honours, oldest first.
    pub truncations: Vec<Truncation>,
}

/// Takes a write's records out of the in-flight tables when the write ends, however it ends.
struct InflightGuard<'a> {
    segment: &'a Segment,
    ticket: u64,
    entries: Vec<(Lsn, Lsn)>,
}

impl InflightGuard<'_> {
    fn release(&mut self, s: &mut State) {
        s.core.release(self.ticket, &self.entries);
        self.entries.clear();
    }
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        if !self.entries.is_empty() {
            let mut s = self.segment.lock();
            self.release(&mut s);
        }
    }
}

/// What a write acknowledges (cheap to compute on the hot path, unlike a full status).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteAck {
    pub scl: Lsn,
    pub highest_lsn: Lsn,
    pub epoch: Epoch,
}

/// A page as read at an LSN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageRead {
    pub data: Vec<u8>,
    /// LSN of the newest change the page contains (0: never written).
    pub lsn: Lsn,
    pub scl: Lsn,
}

/// One row of the per-page table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageRow {
    pub page: PageId,
    pub base_lsn: Lsn,
    pub pending: Vec<Lsn>,
    pub coalescing: bool,
}

/// What one coalescing round did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoundOutcome {
    pub records: usize,
    pub pages: usize,
}

pub struct Segment {
    key: SegmentKey,
    descriptor: Descriptor,
    dir: PathBuf,
    log: Arc<SegmentLog>,
    store: PageStore,
    state: Mutex<State>,
    control_lock: Mutex<()>,
    epochs: Arc<VolumeEpochs>,
    replay: ReplayReport,
}

const LOG_DIR: &str = "log";
const PAGES_FILE: &str = "pages.redb";

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

impl Segment {
    /// Creates a new segment in `dir` (which must not hold one).
    pub fn create(
        dir: &Path,
        descriptor: Descriptor,
        epoch: Epoch,
        log_file_bytes: u64,
        epochs: Arc<VolumeEpochs>,
    ) -> Result<Arc<Segment>, SegmentError> {
        let key = SegmentKey {
            volume: descriptor.volume.clone(),
            segment: descriptor.segment.clone(),
        };
        std::fs::create_dir_all(dir).map_err(|e| SegmentError::Log {
            segment: key.clone(),
            source: LogError::Io {
                path: dir.to_path_buf(),
                source: e,
            },
        })?;
        let store =
            PageStore::open(&dir.join(PAGES_FILE)).map_err(|source| SegmentError::Store {
                segment: key.clone(),
                source,
            })?;
        store
            .save_control(&Control::new(descriptor, epoch))
            .map_err(|source| SegmentError::Store {
                segment: key,
                source,
            })?;
        drop(store);
        Self::open(dir, log_file_bytes, epochs)
    }

    /// Opens an existing segment, rebuilding its index from the control record and the log.
    /// Returns `Ok(None)` when `dir` has no control record (a creation that never completed).
    pub fn open_existing(
        dir: &Path,
        log_file_bytes: u64,
        epochs: Arc<VolumeEpochs>,
    ) -> Result<Option<Arc<Segment>>, SegmentError> {
        let probe_key = SegmentKey {
            volume: "?".into(),
            segment: dir.display().to_string(),
        };
        let store =
            PageStore::open(&dir.join(PAGES_FILE)).map_err(|source| SegmentError::Store {
                segment: probe_key.clone(),
                source,
            })?;
        let has_control = store
            .control()
            .map_err(|source| SegmentError::Store {
                segment: probe_key,
                source,
            })?
            .is_some();
        drop(store);
        if !has_control {
            return Ok(None);
        }
        Self::open(dir, log_file_bytes, epochs).map(Some)
    }

    fn open(
        dir: &Path,
        log_file_bytes: u64,
        epochs: Arc<VolumeEpochs>,
    ) -> Result<Arc<Segment>, SegmentError> {
        let unknown = SegmentKey {
            volume: "?".into(),
            segment: dir.display().to_string(),
        };
        let store =
            PageStore::open(&dir.join(PAGES_FILE)).map_err(|source| SegmentError::Store {
                segment: unknown.clone(),
                source,
            })?;
        let control = store
            .control()
            .map_err(|source| SegmentError::Store {
                segment: unknown.clone(),
                source,
            })?
            .ok_or_else(|| SegmentError::Invalid {
                segment: unknown,
                reason: "no control record".into(),
            })?;
        let descriptor = control.descriptor.clone();
        let key = SegmentKey {
            volume: descriptor.volume.clone(),
            segment: descriptor.segment.clone(),
        };
        let mut state = State {
            core: Acceptance::new(control),
            coalescing: HashSet::new(),
        };
        let (log, replay) = SegmentLog::open(&dir.join(LOG_DIR), log_file_bytes, |f, loc| {
            let materialized = f.record.lsn <= state.core.control().materialized;
            let header = Header::of(&f.record);
            let stored = Stored {
                loc,
                rec: (!materialized).then(|| Arc::new(f.record)),
            };
            if let Err(e) = state.core.replay(f.epoch, header, stored) {
                tracing::error!(segment = %key, error = %e, "replayed record does not fit the chain; skipped");
            }
        })
        .map_err(|source| SegmentError::Log { segment: key.clone(), source })?;
        epochs.raise(&key.volume, state.core.epoch());
        tracing::info!(
            segment = %key,
            frames = replay.frames,
            scl = %state.core.scl(),
            materialized = %state.core.control().materialized,
            corrupt = replay.corrupt.len(),
            "segment opened"
        );
        Ok(Arc::new(Segment {
            key,
            descriptor,
            dir: dir.to_path_buf(),
            log,
            store,
            state: Mutex::new(state),
            control_lock: Mutex::new(()),
            epochs,
            replay,
        }))
    }

    pub fn key(&self) -> &SegmentKey {
        &self.key
    }

    pub fn descriptor(&self) -> &Descriptor {
        &self.descriptor
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Damaged log frames found when the segment was opened.
    pub fn corrupt_frames(&self) -> usize {
        self.replay.corrupt.len()
    }

    pub fn fsyncs(&self) -> u64 {
        self.log.fsyncs()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("segment state lock")
    }

    fn store_err(&self, source: StoreError) -> SegmentError {
        SegmentError::Store {
            segment: self.key.clone(),
            source,
        }
    }

    fn log_err(&self, source: LogError) -> SegmentError {
        SegmentError::Log {
            segment: self.key.clone(),
            source,
        }
    }

    /// The error for what the acceptance core refused `action` for.
    fn refused(&self, action: &'static str, refusal: Refusal) -> SegmentError {
        match refusal {
            Refusal::Fenced { requested, seen } => Fenced {
                action,
                volume: self.key.volume.clone(),
                requested,
                seen,
            }
            .into(),
            Refusal::Chain(source) => SegmentError::Chain {
                segment: self.key.clone(),
                source,
            },
            Refusal::BelowMaterialized {
                above,
                materialized,
            } => SegmentError::TruncateBelowMaterialized {
                segment: self.key.clone(),
                above,
                materialized,
            },
            Refusal::Different { .. } | Refusal::Invalid(_) => self.invalid(refusal.to_string()),
        }
    }

    fn invalid(&self, reason: String) -> SegmentError {
        SegmentError::Invalid {
            segment: self.key.clone(),
            reason,
        }
    }

    pub fn status(&self) -> SegmentStatus {
        let s = self.lock();
        let c = &s.core;
        SegmentStatus {
            descriptor: self.descriptor.clone(),
            scl: c.scl(),
            highest_lsn: c.highest_lsn(),
            epoch: c.epoch(),
            materialized: c.control().materialized,
            horizon: c.control().horizon,
            pending_records: c.pending() as u64,
            last_committed: c.last_committed(),
            highest_commit: c.highest_commit().0,
            highest_commit_ts_us: c.highest_commit().1,
            truncations: c.control().truncations.clone(),
        }
    }

    /// Installs `epoch` durably if it is newer than the segment's; refuses an older one.
    pub fn install_epoch(&self, action: &'static str, epoch: Epoch) -> Result<(), SegmentError> {
        self.epochs.check(action, &self.key.volume, epoch)?;
        if epoch <= self.lock().core.epoch() {
            return Ok(());
        }
        let _control = self.control_lock.lock().expect("control lock");
        let mut s = self.lock();
        self.epochs.check(action, &self.key.volume, epoch)?;
        let plan = s
            .core
            .plan_epoch(epoch)
            .map_err(|r| self.refused(action, r))?;
        if let Some(next) = plan {
            self.store
                .save_control(&next)
                .map_err(|e| self.store_err(e))?;
            s.core.set_control(next);
            self.epochs.raise(&self.key.volume, epoch);
            tracing::info!(segment = %self.key, %epoch, "epoch installed");
        }
        Ok(())
    }

    /// Appends `records` durably under `epoch`; returns the SCL once they are fsynced.
    /// Either every record of the batch is accepted or none is.
    pub async fn write(
        &self,
        epoch: Epoch,
        records: Vec<RedoRecord>,
        last_committed: Lsn,
    ) -> Result<WriteAck, SegmentError> {
        for r in &records {
            r.validate_for_page_size(self.descriptor.page_size)
                .map_err(|source| SegmentError::Record {
                    segment: self.key.clone(),
                    source,
                })?;
            if !self.descriptor.holds(r.page_id) {
                return Err(self.invalid(format!(
                    "record LSN {} is for page {}, outside this PG's pages {}..{}",
                    r.lsn,
                    r.page_id,
                    self.descriptor.first_page,
                    self.descriptor.first_page + self.descriptor.page_count
                )));
            }
        }
        self.install_epoch("write", epoch)?;

        let (wait_for, fresh, ticket) = {
            let mut s = self.lock();
            self.epochs.check("write", &self.key.volume, epoch)?;
            let headers: Vec<Header> = records.iter().map(Header::of).collect();
            let admission = s
                .core
                .admit(epoch, &headers, last_committed)
                .map_err(|r| self.refused("write", r))?;
            let mut wait_for = admission.wait_for;
            let mut records: Vec<Option<RedoRecord>> = records.into_iter().map(Some).collect();
            let fresh: Vec<RedoRecord> = admission
                .fresh
                .iter()
                .map(|i| records[*i].take().expect("each index once"))
                .collect();
            if fresh.is_empty() {
                (wait_for, Vec::new(), 0)
            } else {
                let frames: Vec<(Lsn, Vec<u8>)> = fresh
                    .iter()
                    .map(|r| {
                        let mut buf = Vec::with_capacity(frame::encoded_record_len(r));
                        frame::encode_record(epoch, r, &mut buf);
                        (r.lsn, buf)
                    })
                    .collect();
                let (ticket, locs) = self.log.push(&frames).map_err(|e| self.log_err(e))?;
                wait_for = wait_for.max(ticket);
                let fresh_headers: Vec<Header> =
                    admission.fresh.iter().map(|i| headers[*i]).collect();
                s.core.in_flight(epoch, &fresh_headers, ticket);
                (
                    wait_for,
                    fresh.into_iter().zip(locs).collect::<Vec<_>>(),
                    ticket,
                )
            }
        };

        // Whatever happens to this future from here (its caller may go away while it waits),
        // the records it put in flight leave the in-flight tables: a resend then starts afresh
        // instead of waiting on, or being refused by, a write nobody finishes.
        let mut guard = InflightGuard {
            segment: self,
            ticket,
            entries: fresh.iter().map(|(r, _)| (r.lsn, r.prev_lsn)).collect(),
        };
        let durable = if wait_for > 0 {
            self.log.wait_durable(wait_for).await
        } else {
            Ok(())
        };

        let mut s = self.lock();
        guard.release(&mut s);
        durable.map_err(|e| self.log_err(e))?;
        let held = fresh
            .into_iter()
            .map(|(r, loc)| {
                let header = Header::of(&r);
                let stored = Stored {
                    loc,
                    rec: Some(Arc::new(r)),
                };
                (header, stored)
            })
            .collect();
        s.core
            .durable(epoch, held)
            .map_err(|r| self.refused("write", r))?;
        Ok(WriteAck {
            scl: s.core.scl(),
            highest_lsn: s.core.highest_lsn(),
            epoch: s.core.epoch(),
        })
    }

    /// The page as of `at` (0: the SCL): the newest stored version at or below it plus the
    /// records between, applied on the fly.
    pub fn read_page(&self, page: PageId, at: Lsn) -> Result<PageRead, SegmentError> {
        if !self.descriptor.holds(page) {
            return Err(self.invalid(format!(
                "page {page} is outside this PG's pages {}..{}",
                self.descriptor.first_page,
                self.descriptor.first_page + self.descriptor.page_count
            )));
        }
        let (at, scl) = {
            let s = self.lock();
            let scl = s.core.scl();
            let at = if at == Lsn::ZERO { scl } else { at };
            self.check_readable(&s, at)?;
            (at, scl)
        };
        let (base_lsn, mut image) = match self.store.newest_version(page, at) {
            Ok(Some(v)) => v,
            Ok(None) => (Lsn::ZERO, vec![0; self.descriptor.page_size as usize]),
            Err(e) => return Err(self.store_err(e)),
        };
        let entries: Vec<(Lsn, Stored)> = {
            let s = self.lock();
            // Retention may have moved while the version was read.
            self.check_readable(&s, at)?;
            s.core
                .lsns_of(page)
                .filter(|_| base_lsn < at)
                .map(|set| {
                    set.range(Lsn(base_lsn.0 + 1)..=at)
                        .map(|lsn| (*lsn, s.core.records()[lsn].payload.clone()))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut lsn = base_lsn;
        for (l, entry) in entries {
            let rec = self.load(&entry)?;
            page_apply::apply(&mut image, &rec);
            lsn = l;
        }
        Ok(PageRead {
            data: image,
            lsn,
            scl,
        })
    }

    fn check_readable(&self, s: &State, at: Lsn) -> Result<(), SegmentError> {
        let scl = s.core.scl();
        let horizon = s.core.control().horizon;
        if at > scl {
            return Err(SegmentError::NotYetComplete {
                segment: self.key.clone(),
                requested: at,
                scl,
            });
        }
        if at < horizon {
            return Err(SegmentError::BelowHorizon {
                segment: self.key.clone(),
                requested: at,
                horizon,
            });
        }
        Ok(())
    }

    /// A record's bytes: from memory, or read back (and verified) from the log.
    fn load(&self, entry: &Stored) -> Result<Arc<RedoRecord>, SegmentError> {
        if let Some(r) = &entry.rec {
            return Ok(Arc::clone(r));
        }
        let f = self.log.read(entry.loc).map_err(|e| self.log_err(e))?;
        Ok(Arc::new(f.record))
    }

    /// Discards records above `above` written under epochs below `epoch` (recovery, after the
    /// new writer computed the VDL), and installs `epoch`.
    pub fn truncate(&self, epoch: Epoch, above: Lsn) -> Result<(), SegmentError> {
        self.change("truncate", epoch, |core| core.plan_truncate(epoch, above))
    }

    /// Recovery: adopts the new writer's decision history — every decision it honours, its own
    /// (under `epoch`) last — in place of the segment's (`Acceptance::plan_adopt` says which
    /// records that removes and why an older history is refused).
    pub fn adopt_history(&self, epoch: Epoch, history: &[Truncation]) -> Result<(), SegmentError> {
        self.change("truncate", epoch, |core| core.plan_adopt(epoch, history))
    }

    /// A recovery decision: planned by the core, made durable, then applied.
    fn change(
        &self,
        action: &'static str,
        epoch: Epoch,
        plan: impl FnOnce(&Acceptance<Stored>) -> Result<Change, Refusal>,
    ) -> Result<(), SegmentError> {
        self.epochs.check(action, &self.key.volume, epoch)?;
        let _control = self.control_lock.lock().expect("control lock");
        let mut s = self.lock();
        self.epochs.check(action, &self.key.volume, epoch)?;
        let change = plan(&s.core).map_err(|r| self.refused(action, r))?;
        self.store
            .save_control(&change.control)
            .map_err(|e| self.store_err(e))?;
        let cap = change.cap;
        let removed = s.core.apply(change);
        self.epochs.raise(&self.key.volume, epoch);
        tracing::info!(segment = %self.key, %epoch, above = %cap, removed, scl = %s.core.scl(), "recovery decision applied");
        Ok(())
    }

    /// Records with LSN in `[from, to]` (to = 0: all), each with the epoch it was written under;
    /// `headers_only`: without their redo data (recovery's scan); `with_predecessor`: first the
    /// highest record held below `from` (where the PG's chain stood before it).
    pub fn records_with_epochs(
        &self,
        from: Lsn,
        to: Lsn,
        headers_only: bool,
        with_predecessor: bool,
    ) -> Result<Vec<(Epoch, RedoRecord)>, SegmentError> {
        let entries: Vec<(Epoch, Stored)> = {
            let s = self.lock();
            let horizon = s.core.control().horizon;
            if from <= horizon && horizon > Lsn::ZERO {
                return Err(SegmentError::BelowHorizon {
                    segment: self.key.clone(),
                    requested: from,
                    horizon: Lsn(horizon.0 + 1),
                });
            }
            let to = if to == Lsn::ZERO { Lsn(u64::MAX) } else { to };
            if from > to {
                return Ok(Vec::new());
            }
            let records = s.core.records();
            let before = with_predecessor
                .then(|| records.range(..from).next_back())
                .flatten();
            before
                .into_iter()
                .chain(records.range(from..=to))
                .map(|(_, h)| (h.epoch, h.payload.clone()))
                .collect()
        };
        entries
            .iter()
            .map(|(epoch, e)| {
                let r = self.load(e)?;
                let mut r = (*r).clone();
                if headers_only {
                    r.data = Vec::new();
                }
                Ok((*epoch, r))
            })
            .collect()
    }

    /// One coalescing round: applies every record up to min(SCL, writer's VDL) to the newest
    /// stored version of its page and stores the results with the new materialized LSN in one
    /// transaction. Records above the VDL may still be truncated by a recovery, so they wait.
    pub fn coalesce(&self) -> Result<RoundOutcome, SegmentError> {
        let _control = self.control_lock.lock().expect("control lock");
        let (bound, by_page) = {
            let mut s = self.lock();
            let Some(bound) = s.core.coalesce_bound() else {
                return Ok(RoundOutcome::default());
            };
            let materialized = s.core.control().materialized;
            let mut by_page: BTreeMap<PageId, Vec<Arc<RedoRecord>>> = BTreeMap::new();
            for (_, h) in s.core.records().range(Lsn(materialized.0 + 1)..=bound) {
                let rec = h
                    .payload
                    .rec
                    .clone()
                    .expect("unmaterialized records stay in memory");
                by_page.entry(h.header.page).or_default().push(rec);
            }
            s.coalescing = by_page.keys().copied().collect();
            (bound, by_page)
        };
        let result = self.materialize(bound, &by_page);
        let mut s = self.lock();
        s.coalescing.clear();
        let next = result?;
        s.core.materialized(next, |stored| stored.rec = None);
        Ok(RoundOutcome {
            records: by_page.values().map(Vec::len).sum(),
            pages: by_page.len(),
        })
    }

    fn materialize(
        &self,
        bound: Lsn,
        by_page: &BTreeMap<PageId, Vec<Arc<RedoRecord>>>,
    ) -> Result<Control, SegmentError> {
        let mut versions = Vec::with_capacity(by_page.len());
        for (page, recs) in by_page {
            let base = match self.store.newest_version(*page, Lsn(u64::MAX)) {
                Ok(Some((_, image))) => image,
                Ok(None) => vec![0; self.descriptor.page_size as usize],
                Err(e) => return Err(self.store_err(e)),
            };
            let image = page_apply::apply_all(&base, recs.iter().map(|r| r.as_ref()));
            let lsn = recs.last().expect("at least one record").lsn;
            versions.push((*page, lsn, image));
        }
        let mut next = self.lock().core.control().clone();
        next.materialized = bound;
        next.rounds.push(Round {
            lsn: bound,
            unix_ms: now_ms(),
        });
        self.store
            .commit_round(&versions, &next)
            .map_err(|e| self.store_err(e))?;
        Ok(next)
    }

    /// Moves the retention horizon to the newest round older than the retention window, then
    /// deletes what only reads below it could need: log files, index entries, old versions.
    pub fn collect_garbage(&self, now_ms: u64) -> Result<usize, SegmentError> {
        let _control = self.control_lock.lock().expect("control lock");
        let cutoff = now_ms.saturating_sub(self.descriptor.retention_secs.saturating_mul(1000));
        let mut next = self.lock().core.control().clone();
        let Some(horizon) = next
            .rounds
            .iter()
            .filter(|r| r.unix_ms <= cutoff)
            .map(|r| r.lsn)
            .max()
            .filter(|h| *h > next.horizon)
        else {
            return Ok(0);
        };
        next.horizon = horizon;
        next.rounds.retain(|r| r.lsn > horizon);
        self.store
            .save_control(&next)
            .map_err(|e| self.store_err(e))?;
        self.lock().core.forget_through(next);
        let versions = self
            .store
            .remove_versions_below(horizon)
            .map_err(|e| self.store_err(e))?;
        let files = self
            .log
            .remove_files_through(horizon)
            .map_err(|e| self.log_err(e))?;
        tracing::debug!(segment = %self.key, %horizon, versions, files, "retention horizon moved");
        Ok(files)
    }

    /// The per-page table: base version, pending records, whether a round is applying them.
    pub fn pages(&self, limit: usize) -> Result<Vec<PageRow>, SegmentError> {
        let rows: Vec<(PageId, Vec<Lsn>, bool)> = {
            let s = self.lock();
            let materialized = s.core.control().materialized;
            let page_lsns = s.core.page_lsns();
            let mut pages: Vec<&PageId> = page_lsns.keys().collect();
            pages.sort();
            pages
                .into_iter()
                .take(if limit == 0 { usize::MAX } else { limit })
                .map(|p| {
                    let pending = page_lsns[p]
                        .range(Lsn(materialized.0 + 1)..)
                        .copied()
                        .collect();
                    (*p, pending, s.coalescing.contains(p))
                })
                .collect()
        };
        rows.into_iter()
            .map(|(page, pending, coalescing)| {
                let base_lsn = self
                    .store
                    .newest_version_lsn(page)
                    .map_err(|e| self.store_err(e))?
                    .unwrap_or_default();
                Ok(PageRow {
                    page,
                    base_lsn,
                    pending,
                    coalescing,
                })
            })
            .collect()
    }

    /// Stops the log flusher after everything pushed is durable.
    pub fn close(&self) {
        self.log.close();
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use super::*;
    use logdb_types::record::RecordKind;
    use logdb_types::PgIndex;

    fn segment(dir: &Path) -> Arc<Segment> {
        let descriptor = Descriptor {
            volume: "v".into(),
            segment: "pg0-a1".into(),
            pg: PgIndex(0),
            first_page: 0,
            page_count: 16,
            page_size: 4096,
            retention_secs: 3600,
        };
        Segment::create(
            dir,
            descriptor,
            Epoch(1),
            1 << 20,
            Arc::new(VolumeEpochs::default()),
        )
        .unwrap()
    }

    fn record(lsn: u64, prev: u64) -> RedoRecord {
        RedoRecord::new(
            Lsn(lsn),
            Lsn(prev),
            lsn,
            PageId(1),
            0,
            RecordKind::Delta,
            0,
            0,
            vec![lsn as u8],
        )
    }

    #[tokio::test]
    async fn a_truncation_from_before_histories_stays_local_when_a_history_is_adopted() {
        let dir = tempfile::tempdir().unwrap();
        let seg = segment(dir.path());
        let recs: Vec<RedoRecord> = (1..=6).map(|l| record(l, l - 1)).collect();
        seg.write(Epoch(1), recs, Lsn::ZERO).await.unwrap();
        // An upgraded volume: this segment was truncated the old way, at its own tail.
        seg.truncate(Epoch(2), Lsn(4)).unwrap();
        assert!(seg.status().truncations.iter().all(|t| t.next == Lsn::ZERO));
        let point = Truncation {
            epoch: Epoch(3),
            above: Lsn(4),
            next: Lsn(7),
        };
        seg.adopt_history(Epoch(3), &[point]).unwrap();
        let held = seg.status().truncations;
        assert_eq!(
            held.len(),
            2,
            "the old truncation is kept beside the history: {held:?}"
        );
        assert_eq!(held.last(), Some(&point));
        assert_eq!(seg.status().scl, Lsn(4));
    }

    #[tokio::test]
    async fn a_write_whose_caller_went_away_leaves_nothing_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let seg = segment(dir.path());
        seg.write(Epoch(1), vec![record(1, 0)], Lsn::ZERO)
            .await
            .unwrap();
        // The caller of a write goes away while it waits for its fsync. (The flusher may win
        // the race and make a write durable before its first poll — on a disk whose fsync is
        // instant — so the next record is tried until one is caught waiting.)
        let mut waiting = None;
        for lsn in 2..200u64 {
            let mut write = Box::pin(seg.write(Epoch(1), vec![record(lsn, lsn - 1)], Lsn::ZERO));
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            match write.as_mut().poll(&mut cx) {
                std::task::Poll::Pending => {
                    waiting = Some(lsn);
                    break;
                }
                std::task::Poll::Ready(ack) => assert_eq!(ack.unwrap().scl, Lsn(lsn)),
            }
        }
        let lsn = waiting.expect("no write was ever caught waiting for its fsync");
        assert!(seg.lock().core.nothing_in_flight());
        // The resend is taken as new and acknowledged with the record in the SCL.
        let ack = seg
            .write(Epoch(1), vec![record(lsn, lsn - 1)], Lsn::ZERO)
            .await
            .unwrap();
        assert_eq!(ack.scl, Lsn(lsn));
        // A different record after it is not refused as a second claim on its backlink.
        let ack = seg
            .write(Epoch(1), vec![record(lsn + 1, lsn)], Lsn::ZERO)
            .await
            .unwrap();
        assert_eq!(ack.scl, Lsn(lsn + 1));
    }
}
