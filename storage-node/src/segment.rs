//! One segment: a PG's copy on this node. Ties the durable log, the SCL chain, the record index,
//! the page store and the epoch together, and gives the four things the service needs — append
//! durably, read a page at an LSN, coalesce, and the recovery calls (install epoch, truncate).
//!
//! Concurrency: `state` (a short-held mutex) is the index; the log's flusher does the fsyncs
//! without it, so many requests share an fsync. `control_lock` serializes every change of the
//! durable control record (epoch, truncation, coalescing round, retention), so no change can
//! overwrite another's.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::acceptance::{Acceptance, Change, Header, Refusal};
use crate::chain::ChainError;
use crate::fencing::{Fenced, VolumeEpochs};
use crate::frame;
use crate::image_policy::{self, Debt};
use crate::page_store::{Control, DeltaRef, Descriptor, PageStore, Round, StoreError, Truncation};
use crate::segment_log::{Loc, LogError, LogOptions, ReplayReport, SegmentLog};
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
                source: StoreError::CorruptVersion { .. } | StoreError::CorruptDelta { .. },
                ..
            } | SegmentError::Log {
                source: LogError::Corrupt { .. },
                ..
            }
        )
    }
}

/// What the segment keeps in memory with a record it holds above the materialized LSN: where
/// it is in the log, and its bytes (a round moves it to the page store's delta index).
#[derive(Clone, Debug)]
struct Stored {
    loc: Loc,
    rec: Arc<RedoRecord>,
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
    pub retained: Retained,
}

/// Bytes a segment keeps on disk: its log files (the history) and its page store (the delta
/// index and the images).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retained {
    pub log_bytes: u64,
    pub store_bytes: u64,
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
    /// The newest image (0: none).
    pub base_lsn: Lsn,
    /// Materialized deltas above it.
    pub deltas_above_base: u64,
    pub pending: Vec<Lsn>,
    pub coalescing: bool,
}

/// What one coalescing round did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoundOutcome {
    pub records: usize,
    pub pages: usize,
    /// Page images it wrote (pages whose delta chain passed the image policy's threshold).
    pub images: usize,
}

/// What one garbage collection did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcOutcome {
    pub horizon: Lsn,
    /// Checkpoint images written (one per page changed since the previous checkpoint).
    pub images: usize,
    pub deltas_removed: usize,
    pub images_removed: usize,
    pub files_removed: usize,
}

pub struct Segment {
    key: SegmentKey,
    descriptor: Descriptor,
    dir: PathBuf,
    log: Arc<SegmentLog>,
    store: PageStore,
    state: Mutex<State>,
    control_lock: Mutex<()>,
    /// Per page touched since open, its delta chain above its newest image (changed only under
    /// `control_lock`, by rounds and checkpoints). One entry per page, not per record.
    debts: Mutex<HashMap<PageId, Debt>>,
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
        log: &LogOptions,
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
        Self::open(dir, log, epochs)
    }

    /// Opens an existing segment, rebuilding its index from the control record and the log.
    /// Returns `Ok(None)` when `dir` has no control record (a creation that never completed).
    pub fn open_existing(
        dir: &Path,
        log: &LogOptions,
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
        Self::open(dir, log, epochs).map(Some)
    }

    fn open(
        dir: &Path,
        log: &LogOptions,
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
        let (log, replay) = SegmentLog::open(&dir.join(LOG_DIR), log, |f, loc| {
            if f.record.lsn <= state.core.control().materialized {
                // In the page store's delta index already.
                return;
            }
            let header = Header::of(&f.record);
            let stored = Stored {
                loc,
                rec: Arc::new(f.record),
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
            debts: Mutex::new(HashMap::new()),
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
        let retained = self.retained();
        let s = self.lock();
        let c = &s.core;
        SegmentStatus {
            retained,
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
                wait_for.insert(ticket);
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
        let mut durable = Ok(());
        for t in wait_for {
            durable = self.log.wait_durable(t).await;
            if durable.is_err() {
                break;
            }
        }

        let mut s = self.lock();
        guard.release(&mut s);
        durable.map_err(|e| self.log_err(e))?;
        let held = fresh
            .into_iter()
            .map(|(r, loc)| {
                let header = Header::of(&r);
                let stored = Stored {
                    loc,
                    rec: Arc::new(r),
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

    /// The page as of `at` (0: the SCL): the newest image at or below it plus the deltas
    /// between — from the page store's delta index up to the materialized LSN, from memory
    /// above it — applied on the fly.
    pub fn read_page(&self, page: PageId, at: Lsn) -> Result<PageRead, SegmentError> {
        if !self.descriptor.holds(page) {
            return Err(self.invalid(format!(
                "page {page} is outside this PG's pages {}..{}",
                self.descriptor.first_page,
                self.descriptor.first_page + self.descriptor.page_count
            )));
        }
        let mut tries = 0;
        loop {
            // Memory first, then the store's snapshot: a round that moves records from one to
            // the other in between leaves them in both views, never in neither.
            let (at, scl, materialized, held) = {
                let s = self.lock();
                let scl = s.core.scl();
                let at = if at == Lsn::ZERO { scl } else { at };
                self.check_readable(&s, at)?;
                let materialized = s.core.control().materialized;
                (
                    at,
                    scl,
                    materialized,
                    Self::held_of(&s, page, materialized, at),
                )
            };
            match self.reconstruct(page, at, materialized, &held) {
                Ok((lsn, data, _)) => {
                    // Retention may have moved while the page was read.
                    self.check_readable(&self.lock(), at)?;
                    return Ok(PageRead { data, lsn, scl });
                }
                // A checkpoint removed the log file a snapshot taken before it pointed into:
                // a new snapshot has the checkpoint's image instead.
                Err(SegmentError::Log {
                    source: LogError::Missing(_),
                    ..
                }) if tries < 3 => tries += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// The records held in memory for `page` in (`above`, `at`], oldest first.
    fn held_of(s: &State, page: PageId, above: Lsn, at: Lsn) -> Vec<(Lsn, Arc<RedoRecord>)> {
        if above >= at {
            return Vec::new();
        }
        s.core
            .lsns_of(page)
            .map(|set| {
                set.range(Lsn(above.0 + 1)..=at)
                    .map(|lsn| (*lsn, Arc::clone(&s.core.records()[lsn].payload.rec)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `page` as of `at`: the store's newest image at or below it, its deltas up to `through`
    /// (read from the log, each verified), then `held` (records above `through`). Answers the
    /// LSN of the newest change applied, the image, and how many records were applied.
    fn reconstruct(
        &self,
        page: PageId,
        at: Lsn,
        through: Lsn,
        held: &[(Lsn, Arc<RedoRecord>)],
    ) -> Result<(Lsn, Vec<u8>, usize), SegmentError> {
        let base = self
            .store
            .base(page, at, through)
            .map_err(|e| self.store_err(e))?;
        let mut lsn = base.lsn;
        let mut image = base
            .image
            .unwrap_or_else(|| vec![0; self.descriptor.page_size as usize]);
        for (l, d) in &base.deltas {
            let f = self.log.read(d.loc).map_err(|e| self.log_err(e))?;
            if f.record.lsn != *l || f.record.page_id != page {
                return Err(self.log_err(LogError::Corrupt {
                    path: self.dir.join(LOG_DIR),
                    offset: d.loc.offset,
                    reason: format!(
                        "the delta index says page {page} LSN {l} is in file {} at {}, but the frame there is page {} LSN {}",
                        d.loc.file, d.loc.offset, f.record.page_id, f.record.lsn
                    ),
                }));
            }
            page_apply::apply(&mut image, &f.record);
            lsn = *l;
        }
        let mut applied = base.deltas.len();
        let from = lsn;
        for (l, r) in held.iter().filter(|(l, _)| *l > from && *l <= at) {
            page_apply::apply(&mut image, r);
            lsn = *l;
            applied += 1;
        }
        Ok((lsn, image, applied))
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
    /// highest record held below `from` (where the PG's chain stood before it). Records above
    /// the materialized LSN come from memory, those at or below it from the log files.
    pub fn records_with_epochs(
        &self,
        from: Lsn,
        to: Lsn,
        headers_only: bool,
        with_predecessor: bool,
    ) -> Result<Vec<(Epoch, RedoRecord)>, SegmentError> {
        let to = if to == Lsn::ZERO { Lsn(u64::MAX) } else { to };
        let (control, held_before, held) = {
            let s = self.lock();
            let horizon = s.core.control().horizon;
            if from <= horizon && horizon > Lsn::ZERO {
                return Err(SegmentError::BelowHorizon {
                    segment: self.key.clone(),
                    requested: from,
                    horizon: Lsn(horizon.0 + 1),
                });
            }
            if from > to {
                return Ok(Vec::new());
            }
            let records = s.core.records();
            let pick = |h: &crate::acceptance::Held<Stored>| (h.epoch, Arc::clone(&h.payload.rec));
            let before = with_predecessor
                .then(|| records.range(..from).next_back().map(|(_, h)| pick(h)))
                .flatten();
            let held: Vec<(Epoch, Arc<RedoRecord>)> =
                records.range(from..=to).map(|(_, h)| pick(h)).collect();
            (s.core.control().clone(), before, held)
        };
        let m = control.materialized;
        // What is materialized: the records the log holds that the segment accepted (not
        // discarded by a decision, above the horizon, once each).
        let kept = |epoch: Epoch, lsn: Lsn| {
            lsn > control.horizon && lsn <= m && !control.discards(epoch, lsn)
        };
        let mut out: Vec<(Epoch, RedoRecord)> = Vec::new();
        if with_predecessor && held_before.is_none() && from > Lsn(control.horizon.0 + 1) {
            let below = Lsn(from.0 - 1).min(m);
            if let Some(p) = self
                .log
                .highest_at_or_below(below, |f| kept(f.epoch, f.record.lsn))
                .map_err(|e| self.log_err(e))?
            {
                out.push((p.epoch, p.record));
            }
        }
        if let Some((e, r)) = held_before {
            out.push((e, (*r).clone()));
        }
        if from <= m {
            let mut logged: BTreeMap<Lsn, (Epoch, RedoRecord)> = BTreeMap::new();
            self.log
                .scan(from, to.min(m), |f| {
                    if kept(f.epoch, f.record.lsn) {
                        logged.entry(f.record.lsn).or_insert((f.epoch, f.record));
                    }
                })
                .map_err(|e| self.log_err(e))?;
            out.extend(logged.into_values());
        }
        out.extend(held.into_iter().map(|(e, r)| (e, (*r).clone())));
        // Retention may have moved (and removed log files) while the log was read.
        let horizon = self.lock().core.control().horizon;
        if from <= horizon && horizon > Lsn::ZERO {
            return Err(SegmentError::BelowHorizon {
                segment: self.key.clone(),
                requested: from,
                horizon: Lsn(horizon.0 + 1),
            });
        }
        if headers_only {
            for (_, r) in &mut out {
                r.data = Vec::new();
            }
        }
        Ok(out)
    }

    /// One coalescing round: moves every record up to min(SCL, writer's VDL) from memory into
    /// the page store's delta index, writes an image of each page whose delta chain passed the
    /// image policy's threshold, and records the new materialized LSN — in one transaction.
    /// Records above the VDL may still be truncated by a recovery, so they wait.
    pub fn coalesce(&self) -> Result<RoundOutcome, SegmentError> {
        let _control = self.control_lock.lock().expect("control lock");
        let (planned, old, by_page) = {
            let mut s = self.lock();
            let Some(bound) = s.core.coalesce_bound() else {
                return Ok(RoundOutcome::default());
            };
            let materialized = s.core.control().materialized;
            let mut by_page: BTreeMap<PageId, Vec<(Lsn, Epoch, Stored)>> = BTreeMap::new();
            for (lsn, h) in s.core.records().range(Lsn(materialized.0 + 1)..=bound) {
                by_page
                    .entry(h.header.page)
                    .or_default()
                    .push((*lsn, h.epoch, h.payload.clone()));
            }
            s.coalescing = by_page.keys().copied().collect();
            (s.core.plan_materialized(bound), materialized, by_page)
        };
        let result = self.materialize(planned, old, &by_page);
        let mut s = self.lock();
        s.coalescing.clear();
        let (next, images) = result?;
        s.core.materialized(next);
        Ok(RoundOutcome {
            records: by_page.values().map(Vec::len).sum(),
            pages: by_page.len(),
            images,
        })
    }

    fn materialize(
        &self,
        mut next: Control,
        old: Lsn,
        by_page: &BTreeMap<PageId, Vec<(Lsn, Epoch, Stored)>>,
    ) -> Result<(Control, usize), SegmentError> {
        let page_size = self.descriptor.page_size;
        let mut deltas = Vec::new();
        let mut images = Vec::new();
        let mut debts = self.debts.lock().expect("debts");
        let mut next_debts = Vec::with_capacity(by_page.len());
        for (page, recs) in by_page {
            let mut debt = match debts.get(page) {
                Some(d) => *d,
                None => {
                    let (records, bytes) = self
                        .store
                        .chain_above_image(*page)
                        .map_err(|e| self.store_err(e))?;
                    Debt { records, bytes }
                }
            };
            for (lsn, epoch, st) in recs {
                deltas.push((
                    *page,
                    *lsn,
                    DeltaRef {
                        epoch: *epoch,
                        loc: st.loc,
                    },
                ));
                debt.add(st.loc.len as u64);
            }
            if image_policy::image_due(&debt, page_size) {
                let held: Vec<(Lsn, Arc<RedoRecord>)> = recs
                    .iter()
                    .map(|(l, _, st)| (*l, Arc::clone(&st.rec)))
                    .collect();
                let last = recs.last().expect("at least one record").0;
                let (_, image, _) = self.reconstruct(*page, last, old, &held)?;
                images.push((*page, last, image));
                debt = Debt::default();
            }
            next_debts.push((*page, debt));
        }
        let bound = next.materialized;
        // Checkpoints stay a step apart, and the newest always is this round (so an idle
        // segment's last writes reach the horizon too): this round replaces the newest unless
        // that one is the first of its step.
        let now = now_ms();
        let step = image_policy::checkpoint_step_ms(self.descriptor.retention_secs);
        let round = Round {
            lsn: bound,
            unix_ms: now,
        };
        match next.rounds.len() {
            n if n >= 2 && now.saturating_sub(next.rounds[n - 2].unix_ms) < step => {
                next.rounds[n - 1] = round;
            }
            _ => next.rounds.push(round),
        }
        self.store
            .commit_round(&deltas, &images, &next)
            .map_err(|e| self.store_err(e))?;
        debts.extend(next_debts);
        Ok((next, images.len()))
    }

    /// Moves the retention horizon to the newest checkpoint older than the retention window
    /// (rounds are recorded as checkpoints a checkpoint interval apart), writes each page
    /// changed below it as an image there, then deletes what only reads below it could need:
    /// deltas, older images, log files.
    pub fn collect_garbage(&self, now_ms: u64) -> Result<GcOutcome, SegmentError> {
        let _control = self.control_lock.lock().expect("control lock");
        let cutoff = now_ms.saturating_sub(self.descriptor.retention_secs.saturating_mul(1000));
        let mut next = self.lock().core.control().clone();
        let Some(horizon) = next.next_horizon(cutoff, now_ms) else {
            return Ok(GcOutcome::default());
        };
        next.horizon = horizon;
        next.leases.retain(|l| l.expires_unix_ms > now_ms);
        next.rounds.retain(|r| r.lsn > horizon);
        // The checkpoint: every page with deltas at or below the horizon gets an image at its
        // last one there (unless it has one already), so none of those deltas is needed.
        let mut images = Vec::new();
        for (page, last) in self
            .store
            .last_deltas_through(horizon)
            .map_err(|e| self.store_err(e))?
        {
            let (lsn, image, applied) = self.reconstruct(page, last, horizon, &[])?;
            debug_assert_eq!(lsn, last);
            if applied > 0 {
                images.push((page, last, image));
            }
        }
        // Reads below the new horizon are refused from before the checkpoint removes what they
        // would need (a read that took its snapshot earlier still has it; one that takes it
        // after must not start from what is gone). A failed commit leaves the horizon raised:
        // an I/O error does not say whether the commit reached the disk (a reopened store may
        // show it, with those deltas gone), and if it did not, the deltas are all still there
        // for reads at or above the horizon and the next checkpoint images them.
        self.lock().core.forget_through(next.clone());
        let removed = self
            .store
            .checkpoint(&images, &next)
            .map_err(|e| self.store_err(e))?;
        {
            // Images at the horizon sit below every delta left: each page's debt is what lies
            // above its checkpoint image now.
            let mut debts = self.debts.lock().expect("debts");
            for (page, _, _) in &images {
                debts.remove(page);
            }
        }
        let files = self
            .log
            .remove_files_through(horizon)
            .map_err(|e| self.log_err(e))?;
        let out = GcOutcome {
            horizon,
            images: images.len(),
            deltas_removed: removed.deltas,
            images_removed: removed.images,
            files_removed: files,
        };
        tracing::debug!(segment = %self.key, ?out, "retention horizon moved");
        Ok(out)
    }

    /// Holds the history from `lsn` on for `ttl_secs` under `name` (0: releases `name`'s hold):
    /// retention does not move the horizon past it meanwhile. Answers the horizon and when the
    /// lease expires (0: released). What is already below the horizon cannot be held.
    pub fn hold_history(
        &self,
        name: &str,
        lsn: Lsn,
        ttl_secs: u64,
        now_ms: u64,
    ) -> Result<(Lsn, u64), SegmentError> {
        if name.is_empty() {
            return Err(self.invalid("a history lease needs a name".into()));
        }
        let _control = self.control_lock.lock().expect("control lock");
        let mut next = self.lock().core.control().clone();
        next.leases
            .retain(|l| l.name != name && l.expires_unix_ms > now_ms);
        let expires = if ttl_secs == 0 {
            0
        } else {
            if lsn <= next.horizon && next.horizon > Lsn::ZERO {
                return Err(SegmentError::BelowHorizon {
                    segment: self.key.clone(),
                    requested: lsn,
                    horizon: Lsn(next.horizon.0 + 1),
                });
            }
            let expires = now_ms.saturating_add(ttl_secs.saturating_mul(1000));
            next.leases.push(crate::control::Lease {
                name: name.to_string(),
                lsn,
                expires_unix_ms: expires,
            });
            expires
        };
        self.store
            .save_control(&next)
            .map_err(|e| self.store_err(e))?;
        let horizon = next.horizon;
        let renewal = self
            .lock()
            .core
            .control()
            .leases
            .iter()
            .any(|l| l.name == name && l.lsn == lsn);
        self.lock().core.set_control(next);
        if renewal && ttl_secs > 0 {
            tracing::debug!(segment = %self.key, name, %lsn, ttl_secs, "history lease renewed");
        } else {
            tracing::info!(segment = %self.key, name, %lsn, ttl_secs, "history lease");
        }
        Ok((horizon, expires))
    }

    /// Bytes kept on disk now: log files and page store.
    pub fn retained(&self) -> Retained {
        Retained {
            log_bytes: self.log.bytes_on_disk(),
            store_bytes: self.store.file_bytes(),
        }
    }

    /// The per-page table: newest image, materialized deltas above it, pending records,
    /// whether a round is applying them.
    pub fn pages(&self, limit: usize) -> Result<Vec<PageRow>, SegmentError> {
        let limit = if limit == 0 { usize::MAX } else { limit };
        let mut rows: BTreeMap<PageId, (Vec<Lsn>, bool)> = {
            let s = self.lock();
            let materialized = s.core.control().materialized;
            s.core
                .page_lsns()
                .iter()
                .map(|(p, lsns)| {
                    let pending = lsns.range(Lsn(materialized.0 + 1)..).copied().collect();
                    (*p, (pending, s.coalescing.contains(p)))
                })
                .collect()
        };
        for page in self.store.pages(limit).map_err(|e| self.store_err(e))? {
            rows.entry(page).or_default();
        }
        rows.into_iter()
            .take(limit)
            .map(|(page, (pending, coalescing))| {
                let base_lsn = self
                    .store
                    .newest_version_lsn(page)
                    .map_err(|e| self.store_err(e))?
                    .unwrap_or_default();
                let (deltas_above_base, _) = self
                    .store
                    .chain_above_image(page)
                    .map_err(|e| self.store_err(e))?;
                Ok(PageRow {
                    page,
                    base_lsn,
                    deltas_above_base,
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
            &LogOptions::unguarded(1 << 20),
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_resend_of_a_record_whose_round_the_full_disk_refused_is_not_acknowledged() {
        use std::io::Write;
        let disk = crate::testkit::SmallDisk::mount(8 << 20);
        let options = LogOptions {
            file_bytes: 1 << 20,
            space: Arc::new(crate::disk_space::SpaceGuard::new(&disk.dir, Some(0)).unwrap()),
        };
        let descriptor = Descriptor {
            page_size: 4096,
            ..Descriptor::for_tests()
        };
        let seg = Segment::create(
            &disk.dir.join("seg"),
            descriptor,
            Epoch(1),
            &options,
            Arc::new(VolumeEpochs::default()),
        )
        .unwrap();
        let big = |lsn: u64| {
            RedoRecord::new(
                Lsn(lsn),
                Lsn(lsn - 1),
                lsn,
                PageId(1),
                0,
                RecordKind::Delta,
                0,
                0,
                vec![lsn as u8; 3000],
            )
        };
        seg.write(Epoch(1), vec![big(1)], Lsn::ZERO).await.unwrap();
        let filler = disk.dir.join("filler");
        {
            let mut f = std::fs::File::create(&filler).unwrap();
            let chunk = vec![0u8; 64 << 10];
            while f.write_all(&chunk).is_ok() {}
        }
        // Write A of record 2 is caught waiting for a round the full disk refuses.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut a = None;
        for _ in 0..100 {
            let mut w = Box::pin(seg.write(Epoch(1), vec![big(2)], Lsn::ZERO));
            match w.as_mut().poll(&mut cx) {
                std::task::Poll::Pending => {
                    a = Some(w);
                    break;
                }
                // The flusher met the full disk before the first poll: try again (the guard
                // would now refuse the push itself).
                std::task::Poll::Ready(r) => {
                    assert!(r.is_err(), "the disk is full");
                    options.space.forget_refusal();
                }
            }
        }
        let a = a.expect("no write was ever caught waiting for its round");
        let ticket = seg.log.last_ticket();
        assert!(matches!(
            seg.log.wait_durable(ticket).await,
            Err(LogError::NoSpace(_))
        ));
        // Space returns. A resend of record 2 with a new record 3 arrives before A has run
        // again: record 2 is still in flight under the lost ticket, record 3 goes to a durable
        // one — the batch must not be acknowledged.
        std::fs::remove_file(&filler).unwrap();
        let b = seg.write(Epoch(1), vec![big(2), big(3)], Lsn::ZERO).await;
        assert!(
            matches!(
                b,
                Err(SegmentError::Log {
                    source: LogError::NoSpace(_),
                    ..
                })
            ),
            "{b:?}"
        );
        assert!(a.await.is_err(), "A learns its round was refused");
        let ack = seg
            .write(Epoch(1), vec![big(2), big(3)], Lsn::ZERO)
            .await
            .unwrap();
        assert_eq!(ack.scl, Lsn(3));
    }

    /// A delta of 40 bytes at a spot of its page that depends on the LSN.
    fn small(lsn: u64, page: u64) -> RedoRecord {
        RedoRecord::new(
            Lsn(lsn),
            Lsn(lsn - 1),
            lsn,
            PageId(page),
            ((lsn * 40) % 4000) as u32,
            RecordKind::Delta,
            0,
            0,
            vec![lsn as u8; 40],
        )
    }

    /// The page as every record up to `at` makes it, from zeros.
    fn expected(recs: &[RedoRecord], page: u64, at: u64) -> Vec<u8> {
        page_apply::apply_all(
            &[0u8; 4096],
            recs.iter().filter(|r| r.page_id.0 == page && r.lsn.0 <= at),
        )
    }

    #[tokio::test]
    async fn rounds_store_deltas_images_only_where_they_pay_and_memory_stays_flat() {
        let dir = tempfile::tempdir().unwrap();
        let seg = segment(dir.path());
        // 1,000 rounds of one 40-byte delta each over two pages: a full image per page per
        // round would be 4 MB; deltas plus an image every four pages' worth of them are far less.
        let mut recs = Vec::new();
        let (mut images, mut start) = (0, 0);
        for lsn in 1..=1000u64 {
            let r = small(lsn, 1 + lsn % 2);
            recs.push(r.clone());
            seg.write(Epoch(1), vec![r], Lsn(lsn)).await.unwrap();
            let out = seg.coalesce().unwrap();
            assert_eq!((out.records, out.pages), (1, 1));
            images += out.images;
            if lsn == 1 {
                start = seg.retained().store_bytes;
            }
        }
        assert!(
            seg.lock().core.records().is_empty(),
            "nothing materialized stays in memory"
        );
        // Each page's chain passes 4 pages of frames every ~190 deltas: about 5 images.
        assert!((4..=6).contains(&images), "{images} images");
        // (redb allocates its file in regions; what counts is the growth past the first.)
        let grown = seg.retained().store_bytes.saturating_sub(start);
        assert!(grown < 1 << 20, "the page store grew {grown} bytes");
        for at in [1, 2, 3, 199, 500, 999, 1000] {
            for page in [1, 2] {
                assert_eq!(
                    seg.read_page(PageId(page), Lsn(at)).unwrap().data,
                    expected(&recs, page, at),
                    "page {page} at {at}"
                );
            }
        }
        let rows = seg.pages(0).unwrap();
        assert_eq!(rows.len(), 2);
        assert!(rows
            .iter()
            .all(|r| r.base_lsn > Lsn::ZERO && r.pending.is_empty()));

        // The history streams back from the log, with the record before it, after a restart
        // too; a resend of a materialized record is acknowledged, not refused.
        let streamed = seg
            .records_with_epochs(Lsn(500), Lsn(503), false, true)
            .unwrap();
        assert_eq!(
            streamed.iter().map(|(_, r)| r.lsn.0).collect::<Vec<_>>(),
            [499, 500, 501, 502, 503]
        );
        assert_eq!(streamed[2].1, recs[500]);
        let ack = seg
            .write(Epoch(1), vec![recs[9].clone()], Lsn::ZERO)
            .await
            .unwrap();
        assert_eq!(ack.scl, Lsn(1000));
        seg.close();
        drop(seg);
        let seg = Segment::open_existing(
            dir.path(),
            &LogOptions::unguarded(1 << 20),
            Arc::new(VolumeEpochs::default()),
        )
        .unwrap()
        .unwrap();
        assert!(seg.lock().core.records().is_empty());
        assert_eq!(seg.status().highest_commit, Lsn::ZERO);
        for at in [1, 777, 1000] {
            assert_eq!(
                seg.read_page(PageId(1), Lsn(at)).unwrap().data,
                expected(&recs, 1, at)
            );
        }
        assert_eq!(
            seg.records_with_epochs(Lsn(1000), Lsn::ZERO, true, true)
                .unwrap()
                .len(),
            2
        );
    }

    #[tokio::test]
    async fn a_checkpoint_images_what_changed_and_frees_the_deltas_and_log_below_it() {
        let dir = tempfile::tempdir().unwrap();
        let descriptor = Descriptor {
            retention_secs: 1,
            ..Descriptor::for_tests()
        };
        // Small log files so the checkpoint can free some.
        let seg = Segment::create(
            dir.path(),
            descriptor,
            Epoch(1),
            &LogOptions::unguarded(4096),
            Arc::new(VolumeEpochs::default()),
        )
        .unwrap();
        let mut recs = Vec::new();
        // 20 small deltas per page before the first round: below the image thresholds, so the
        // round stores no image and the checkpoint must write them.
        for lsn in 1..=90u64 {
            let r = small(lsn, lsn % 3);
            recs.push(r.clone());
            seg.write(Epoch(1), vec![r], Lsn(lsn)).await.unwrap();
            if lsn == 60 || lsn == 90 {
                seg.coalesce().unwrap();
            }
        }
        let before = seg.retained();
        let files_before = seg.log.file_count();
        // A retention window later, the horizon moves to the newest checkpoint: the latest
        // round always is one.
        let out = seg.collect_garbage(now_ms() + 10_000).unwrap();
        assert_eq!(out.horizon, seg.status().horizon);
        assert_eq!(out.horizon, Lsn(90), "{out:?}");
        assert_eq!(out.images, 3, "one image per changed page: {out:?}");
        assert!(out.deltas_removed > 0 && out.files_removed > 0, "{out:?}");
        assert!(seg.log.file_count() < files_before);
        assert!(seg.retained().log_bytes < before.log_bytes);
        // Reads at and above the horizon are whole; below it refused.
        let h = out.horizon.0;
        for at in [h, 90] {
            for page in 0..3 {
                assert_eq!(
                    seg.read_page(PageId(page), Lsn(at)).unwrap().data,
                    expected(&recs, page, at),
                    "page {page} at {at}"
                );
            }
        }
        assert!(matches!(
            seg.read_page(PageId(0), Lsn(h - 1)),
            Err(SegmentError::BelowHorizon { .. })
        ));
        let rows = seg.pages(0).unwrap();
        assert!(
            rows.iter().all(|r| r.base_lsn > Lsn::ZERO),
            "every page has its checkpoint image: {rows:?}"
        );
    }
}
