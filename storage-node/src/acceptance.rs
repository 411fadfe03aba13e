//! What a segment accepts, as a pure state machine (docs/DESIGN.md §5): the epoch fence, the
//! backlink chain and its SCL, the recovery decisions it honours (truncation), idempotent
//! resends and the in-flight tables that keep two concurrent batches from claiming one
//! predecessor. It takes events — a write admitted, its records durable, a decision history to
//! adopt, a round materialized, a replayed frame — and answers what to do; it does no I/O.
//! `Segment` wraps it with the log (fsync), the page store and the locks; the recovery
//! simulator (`logdb_compute::recovery_sim`) drives this same type with a simulated disk.
//!
//! A change of the durable control record is two steps: `plan_*` answers the new control record
//! (and what it removes) without changing anything, the shell makes it durable, then `apply`
//! installs it. A crash between the two leaves the old state, on disk and here.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::chain::{Chain, ChainError};
use crate::control::{Control, Truncation};
use logdb_types::record::RedoRecord;
use logdb_types::{Epoch, Lsn, PageId};

/// Why a segment refuses an event.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("epoch {requested} < {seen} installed on the segment")]
    Fenced { requested: Epoch, seen: Epoch },
    #[error("LSN {lsn} already holds a different record (checksum {held:#010x}, not {got:#010x})")]
    Different { lsn: Lsn, held: u32, got: u32 },
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error("cannot truncate above {above}: records up to {materialized} are already materialized (truncation must not go below the writer's announced VDL)")]
    BelowMaterialized { above: Lsn, materialized: Lsn },
    #[error("{0}")]
    Invalid(String),
}

/// The header of a record: all the acceptance rules look at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub lsn: Lsn,
    pub prev: Lsn,
    pub checksum: u32,
    pub page: PageId,
    /// The commit timestamp of a commit record.
    pub commit_ts_us: Option<u64>,
}

impl Header {
    pub fn of(r: &RedoRecord) -> Header {
        Header {
            lsn: r.lsn,
            prev: r.prev_lsn,
            checksum: r.checksum,
            page: r.page_id,
            commit_ts_us: r.is_commit().then_some(r.commit_ts_us),
        }
    }
}

/// A record the segment holds: its header, the epoch it was written under, and what the shell
/// keeps with it (`P`: where it is on disk and its bytes, in the storage node).
#[derive(Clone, Debug)]
pub struct Held<P> {
    pub header: Header,
    pub epoch: Epoch,
    pub payload: P,
}

/// What an admitted write must do: append `fresh` (indices into the batch) to the log, and wait
/// until every log ticket in `wait_for` is durable (records of the batch other writes have in
/// flight). Every one of them, not only the highest: a ticket can be lost (a round the full
/// disk refused) while a later one is durable.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Admission {
    pub fresh: Vec<usize>,
    pub wait_for: BTreeSet<u64>,
}

/// A planned change of the control record and the records it removes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub control: Control,
    pub doomed: BTreeSet<Lsn>,
    /// What the writer announced as committed cannot stay above this.
    pub cap: Lsn,
}

/// A record appended to the log and not yet durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct InFlight {
    checksum: u32,
    /// The log ticket its write waits for.
    ticket: u64,
    epoch: Epoch,
}

#[derive(Debug)]
pub struct Acceptance<P> {
    control: Control,
    chain: Chain,
    /// Every record held above the materialized LSN, by LSN (what is materialized lives in
    /// the shell's page store, not here: memory follows the coalescing lag, not the window).
    records: BTreeMap<Lsn, Held<P>>,
    /// The same records by page.
    pages: HashMap<PageId, BTreeSet<Lsn>>,
    /// Records appended and not yet durable.
    inflight: HashMap<Lsn, InFlight>,
    /// Backlinks of records in flight (backlink -> LSN).
    inflight_links: HashMap<Lsn, Lsn>,
    last_committed: Lsn,
    highest_commit: (Lsn, u64),
    /// Records held above the materialized LSN (kept as a count: status is asked often, and
    /// counting a large unmaterialized log each time made recovery grow with it).
    pending: usize,
}

impl<P> Acceptance<P> {
    /// A segment as its control record describes it, before its log is replayed.
    pub fn new(control: Control) -> Self {
        Acceptance {
            chain: Chain::starting_at(control.materialized),
            last_committed: control.materialized,
            highest_commit: control.materialized_commit,
            control,
            records: BTreeMap::new(),
            pages: HashMap::new(),
            inflight: HashMap::new(),
            inflight_links: HashMap::new(),
            pending: 0,
        }
    }

    pub fn control(&self) -> &Control {
        &self.control
    }

    pub fn scl(&self) -> Lsn {
        self.chain.scl()
    }

    pub fn epoch(&self) -> Epoch {
        self.control.epoch
    }

    /// The highest LSN held (the materialized LSN when nothing above it is).
    pub fn highest_lsn(&self) -> Lsn {
        self.records
            .keys()
            .next_back()
            .copied()
            .unwrap_or(self.control.materialized)
    }

    /// Records above the materialized LSN.
    pub fn pending(&self) -> usize {
        debug_assert_eq!(
            self.pending,
            self.records
                .range(Lsn(self.control.materialized.0 + 1)..)
                .count()
        );
        self.pending
    }

    /// The highest VDL the writer announced (capped by truncations).
    pub fn last_committed(&self) -> Lsn {
        self.last_committed
    }

    /// The highest commit record held and its timestamp.
    pub fn highest_commit(&self) -> (Lsn, u64) {
        self.highest_commit
    }

    pub fn records(&self) -> &BTreeMap<Lsn, Held<P>> {
        &self.records
    }

    /// The LSNs held for `page`, oldest first.
    pub fn lsns_of(&self, page: PageId) -> Option<&BTreeSet<Lsn>> {
        self.pages.get(&page)
    }

    pub fn page_lsns(&self) -> &HashMap<PageId, BTreeSet<Lsn>> {
        &self.pages
    }

    /// Replays a frame found in the log at open; answers whether it was kept (a discarded, a
    /// materialized or a repeated record is not — a materialized one is in the page store;
    /// one that does not fit the chain is an error and skipped).
    pub fn replay(&mut self, epoch: Epoch, header: Header, payload: P) -> Result<bool, ChainError> {
        let lsn = header.lsn;
        if self.control.discards(epoch, lsn) || self.records.contains_key(&lsn) {
            return Ok(false);
        }
        if lsn <= self.control.materialized {
            // In the page store; only its commit counts here (control records from before
            // `materialized_commit` was kept carry none).
            if let Some(ts) = header.commit_ts_us {
                if lsn > self.highest_commit.0 {
                    self.highest_commit = (lsn, ts);
                }
            }
            return Ok(false);
        }
        self.chain.insert(lsn, header.prev)?;
        self.insert(epoch, header, payload);
        Ok(true)
    }

    /// The control record that installs `epoch`, if it is newer than the segment's; refuses an
    /// older one.
    pub fn plan_epoch(&self, epoch: Epoch) -> Result<Option<Control>, Refusal> {
        self.fence(epoch)?;
        Ok((epoch > self.control.epoch).then(|| Control {
            epoch,
            ..self.control.clone()
        }))
    }

    /// Installs a control record the shell made durable (`plan_epoch`); the materialized LSN
    /// moves only through `materialized`.
    pub fn set_control(&mut self, control: Control) {
        debug_assert_eq!(control.materialized, self.control.materialized);
        self.control = control;
    }

    fn fence(&self, epoch: Epoch) -> Result<(), Refusal> {
        if epoch < self.control.epoch {
            return Err(Refusal::Fenced {
                requested: epoch,
                seen: self.control.epoch,
            });
        }
        Ok(())
    }

    /// A write of `batch` under `epoch` (already installed): which records are new, which are
    /// resends (identical, or refused when different) and which wait on another write in
    /// flight. The whole batch is checked before anything changes; `last_committed` is the VDL
    /// the writer announces with it.
    pub fn admit(
        &mut self,
        epoch: Epoch,
        batch: &[Header],
        last_committed: Lsn,
    ) -> Result<Admission, Refusal> {
        self.fence(epoch)?;
        let mut admission = Admission::default();
        let mut in_batch = HashSet::new();
        let mut batch_links: HashMap<Lsn, Lsn> = HashMap::new();
        for (i, r) in batch.iter().enumerate() {
            let same = |held: u32| {
                if held == r.checksum {
                    Ok(())
                } else {
                    Err(Refusal::Different {
                        lsn: r.lsn,
                        held,
                        got: r.checksum,
                    })
                }
            };
            if let Some(h) = self.records.get(&r.lsn) {
                same(h.header.checksum)?;
            } else if let Some(f) = self.inflight.get(&r.lsn) {
                same(f.checksum)?;
                admission.wait_for.insert(f.ticket);
            } else if r.lsn <= self.control.materialized {
                // A resend of a record already materialized (the SCL passed it, so this segment
                // holds every record of its PG up to there): durable here, in the page store.
            } else if in_batch.insert(r.lsn) {
                self.chain.check(r.lsn, r.prev)?;
                let claimed = batch_links
                    .get(&r.prev)
                    .or_else(|| self.inflight_links.get(&r.prev));
                if let Some(&existing) = claimed.filter(|l| **l != r.lsn) {
                    return Err(ChainError::Conflict {
                        lsn: r.lsn,
                        prev: r.prev,
                        existing,
                    }
                    .into());
                }
                batch_links.insert(r.prev, r.lsn);
                admission.fresh.push(i);
            }
        }
        if last_committed > self.last_committed {
            self.last_committed = last_committed;
        }
        Ok(admission)
    }

    /// The fresh records of an admission under `epoch` were appended to the log under
    /// `ticket`.
    pub fn in_flight<'a>(
        &mut self,
        epoch: Epoch,
        fresh: impl IntoIterator<Item = &'a Header>,
        ticket: u64,
    ) {
        for r in fresh {
            let f = InFlight {
                checksum: r.checksum,
                ticket,
                epoch,
            };
            self.inflight.insert(r.lsn, f);
            self.inflight_links.insert(r.prev, r.lsn);
        }
    }

    /// Whether no write has records in flight.
    pub fn nothing_in_flight(&self) -> bool {
        self.inflight.is_empty() && self.inflight_links.is_empty()
    }

    /// The write that put `(lsn, prev)` in flight under `ticket` ended, however it ended (a
    /// record another write put in flight since at the same LSN stays).
    pub fn release(&mut self, ticket: u64, entries: &[(Lsn, Lsn)]) {
        for (lsn, prev) in entries {
            if self.inflight.get(lsn).is_some_and(|f| f.ticket == ticket) {
                self.inflight.remove(lsn);
                if self.inflight_links.get(prev) == Some(lsn) {
                    self.inflight_links.remove(prev);
                }
            }
        }
    }

    /// The fresh records of a write under `epoch` are durable: they join the index and the
    /// chain, except those a decision installed meanwhile discards — then, or when a newer
    /// epoch came meanwhile, the write is answered as fenced.
    pub fn durable(&mut self, epoch: Epoch, records: Vec<(Header, P)>) -> Result<(), Refusal> {
        let mut fenced = false;
        for (h, payload) in records {
            if self.control.discards(epoch, h.lsn) {
                fenced = true;
                continue;
            }
            if let Some(held) = self.records.get(&h.lsn) {
                // The same record became durable through another write meanwhile (a copy taken
                // while an older write of it, voided by a decision a later history dropped, was
                // still waiting for its fsync): nothing to do. A different one is refused.
                if held.header.checksum != h.checksum {
                    return Err(Refusal::Different {
                        lsn: h.lsn,
                        held: held.header.checksum,
                        got: h.checksum,
                    });
                }
                continue;
            }
            if h.lsn <= self.control.materialized {
                // The same record became durable through another write and a round
                // materialized it meanwhile: it is held, in the page store.
                continue;
            }
            // Checked at admission; only a decision in between can make it fail.
            self.chain.insert(h.lsn, h.prev)?;
            self.insert(epoch, h, payload);
        }
        if fenced || epoch < self.control.epoch {
            return Err(Refusal::Fenced {
                requested: epoch,
                seen: self.control.epoch,
            });
        }
        Ok(())
    }

    /// A decision of `epoch` recorded alone (a writer from before histories): records above
    /// `above` from older epochs are discarded.
    pub fn plan_truncate(&self, epoch: Epoch, above: Lsn) -> Result<Change, Refusal> {
        self.fence(epoch)?;
        if self.control.materialized > above {
            return Err(Refusal::BelowMaterialized {
                above,
                materialized: self.control.materialized,
            });
        }
        let t = Truncation {
            epoch,
            above,
            next: Lsn::ZERO,
        };
        let mut control = self.control.clone();
        control.epoch = control.epoch.max(epoch);
        if !control.truncations.contains(&t) {
            control.truncations.push(t);
        }
        Ok(Change {
            control,
            doomed: self.voided_by(&t),
            cap: above,
        })
    }

    /// Recovery: the new writer's decision history — every decision it honours, its own (under
    /// `epoch`) last — in place of the segment's. A decision the writer did not see goes with
    /// the old history (its writer never reached a write quorum with it, so it never wrote). A
    /// history older than the one held is refused: it comes from a stale writer. Only points not
    /// held yet are applied (the held ones removed what they void when they came), over the
    /// records above them — near the tail, so this does not grow with the unmaterialized log.
    pub fn plan_adopt(&self, epoch: Epoch, history: &[Truncation]) -> Result<Change, Refusal> {
        let Some(own) = history.last() else {
            return Err(Refusal::Invalid("an empty decision history".into()));
        };
        if own.epoch != epoch || history.windows(2).any(|w| w[0].epoch >= w[1].epoch) {
            return Err(Refusal::Invalid(format!(
                "decision history must have strictly increasing epochs ending with the caller's {epoch}"
            )));
        }
        self.fence(epoch)?;
        if let Some(held) = self.control.truncations.iter().map(|t| t.epoch).max() {
            if held > epoch {
                return Err(Refusal::Fenced {
                    requested: epoch,
                    seen: held,
                });
            }
        }
        let doomed: BTreeSet<Lsn> = history
            .iter()
            .filter(|t| !self.control.truncations.contains(t))
            .flat_map(|t| self.voided_by(t))
            .collect();
        if let Some(first) = doomed.first().filter(|l| **l <= self.control.materialized) {
            return Err(Refusal::BelowMaterialized {
                above: Lsn(first.0 - 1),
                materialized: self.control.materialized,
            });
        }
        // Materialized records are not in memory: a new decision must not void one either.
        for t in history
            .iter()
            .filter(|t| !self.control.truncations.contains(t))
        {
            if self
                .control
                .epoch_tops
                .iter()
                .any(|(e, top)| *e < t.epoch && *top > t.above)
            {
                return Err(Refusal::BelowMaterialized {
                    above: t.above,
                    materialized: self.control.materialized,
                });
            }
        }
        let mut control = self.control.clone();
        control.epoch = control.epoch.max(epoch);
        // This segment's own truncations from before histories (no first LSN) stay with it.
        control.truncations = self
            .control
            .truncations
            .iter()
            .copied()
            .filter(|t| t.next == Lsn::ZERO)
            .chain(history.iter().copied())
            .collect();
        Ok(Change {
            control,
            doomed,
            cap: own.above,
        })
    }

    fn voided_by(&self, t: &Truncation) -> BTreeSet<Lsn> {
        self.records
            .range(Lsn(t.above.0.saturating_add(1))..)
            .filter(|(_, h)| h.epoch < t.epoch)
            .map(|(l, _)| *l)
            .collect()
    }

    /// Installs a planned change the shell made durable; answers how many records it removed.
    pub fn apply(&mut self, change: Change) -> usize {
        self.control = change.control;
        // Records of older writers still in flight that the new decisions void will be discarded
        // when their write ends; until then they must not block the new writer's records.
        let control = &self.control;
        let voided: Vec<Lsn> = self
            .inflight
            .iter()
            .filter(|(l, f)| control.discards(f.epoch, **l))
            .map(|(l, _)| *l)
            .collect();
        for lsn in voided {
            self.inflight.remove(&lsn);
        }
        let inflight = &self.inflight;
        self.inflight_links
            .retain(|_, lsn| inflight.contains_key(lsn));
        for lsn in &change.doomed {
            self.remove(*lsn);
        }
        if let Some(&first) = change.doomed.first() {
            self.relink_from(first);
        }
        self.last_committed = self.last_committed.min(change.cap);
        if self.highest_commit.0 > change.cap {
            self.recompute_highest_commit();
        }
        change.doomed.len()
    }

    /// The LSN a coalescing round may materialize up to: the last record at or below
    /// min(SCL, the writer's VDL), when that is above what is materialized. Records above the
    /// VDL may still be discarded by a recovery, so they wait.
    pub fn coalesce_bound(&self) -> Option<Lsn> {
        let target = self.chain.scl().min(self.last_committed);
        self.records
            .range(..=target)
            .next_back()
            .map(|(l, _)| *l)
            .filter(|b| *b > self.control.materialized)
    }

    /// A round made every record up to `control.materialized` durable in the page store
    /// (with the highest commit among them in `control.materialized_commit`): they leave
    /// memory, and are answered to the shell.
    pub fn materialized(&mut self, control: Control) -> Vec<Held<P>> {
        let bound = control.materialized;
        self.control = control;
        let kept = self.records.split_off(&Lsn(bound.0 + 1));
        let done = std::mem::replace(&mut self.records, kept);
        self.pending -= done.len();
        for (lsn, h) in &done {
            if let Some(set) = self.pages.get_mut(&h.header.page) {
                set.remove(lsn);
                if set.is_empty() {
                    self.pages.remove(&h.header.page);
                }
            }
        }
        done.into_values().collect()
    }

    /// Retention moved the horizon (`control.horizon`, at or below what is materialized, so
    /// nothing held in memory is under it).
    pub fn forget_through(&mut self, control: Control) {
        debug_assert!(
            control.horizon <= control.materialized,
            "retention below what is materialized"
        );
        self.control = control;
    }

    /// The control record of a round that materializes every record up to `bound`: with the
    /// highest commit among them and each epoch's highest record, which outlive the log files
    /// and memory (the shell makes it durable with the round, then calls `materialized`).
    pub fn plan_materialized(&self, bound: Lsn) -> Control {
        let mut c = self.control.clone();
        c.materialized = bound;
        let done = self.records.range(..=bound);
        if let Some(top) = done
            .clone()
            .rev()
            .find_map(|(l, h)| h.header.commit_ts_us.map(|ts| (*l, ts)))
        {
            c.materialized_commit = c.materialized_commit.max(top);
        }
        for (lsn, h) in done {
            match c.epoch_tops.iter_mut().find(|(e, _)| *e == h.epoch) {
                Some((_, top)) => *top = (*top).max(*lsn),
                None => c.epoch_tops.push((h.epoch, *lsn)),
            }
        }
        c
    }

    fn insert(&mut self, epoch: Epoch, header: Header, payload: P) {
        if let Some(ts) = header.commit_ts_us {
            if header.lsn > self.highest_commit.0 {
                self.highest_commit = (header.lsn, ts);
            }
        }
        self.pages
            .entry(header.page)
            .or_default()
            .insert(header.lsn);
        if header.lsn > self.control.materialized {
            self.pending += 1;
        }
        self.records.insert(
            header.lsn,
            Held {
                header,
                epoch,
                payload,
            },
        );
    }

    fn remove(&mut self, lsn: Lsn) {
        if let Some(h) = self.records.remove(&lsn) {
            if lsn > self.control.materialized {
                self.pending -= 1;
            }
            if let Some(set) = self.pages.get_mut(&h.header.page) {
                set.remove(&lsn);
                if set.is_empty() {
                    self.pages.remove(&h.header.page);
                }
            }
        }
    }

    /// The chain again from `first` on, after records from `first` up were discarded: it ends
    /// at the last record kept below `first` (or the materialized LSN), and every kept record
    /// above joins it again (work proportional to what lies above `first`).
    fn relink_from(&mut self, first: Lsn) {
        let below = self
            .records
            .range(..first)
            .next_back()
            .map(|(l, _)| *l)
            .unwrap_or_default()
            .max(self.control.materialized);
        self.chain.truncate(Lsn(first.0 - 1), below);
        let above: Vec<(Lsn, Lsn)> = self
            .records
            .range(first..)
            .map(|(l, h)| (*l, h.header.prev))
            .collect();
        for (lsn, prev) in above {
            if let Err(err) = self.chain.insert(lsn, prev) {
                tracing::error!(%lsn, error = %err, "kept record does not fit the relinked chain");
            }
        }
    }

    fn recompute_highest_commit(&mut self) {
        self.highest_commit = self
            .records
            .iter()
            .rev()
            .find_map(|(l, h)| h.header.commit_ts_us.map(|ts| (*l, ts)))
            .unwrap_or(self.control.materialized_commit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::Descriptor;

    fn control() -> Control {
        Control::new(Descriptor::for_tests(), Epoch(1))
    }

    fn h(lsn: u64, prev: u64) -> Header {
        Header {
            lsn: Lsn(lsn),
            prev: Lsn(prev),
            checksum: lsn as u32 * 7,
            page: PageId(lsn % 3),
            commit_ts_us: None,
        }
    }

    fn write(a: &mut Acceptance<()>, epoch: u64, batch: &[Header]) -> Result<(), Refusal> {
        let adm = a.admit(Epoch(epoch), batch, Lsn::ZERO)?;
        let fresh: Vec<Header> = adm.fresh.iter().map(|i| batch[*i]).collect();
        a.in_flight(Epoch(epoch), &fresh, 1);
        let entries: Vec<(Lsn, Lsn)> = fresh.iter().map(|h| (h.lsn, h.prev)).collect();
        a.release(1, &entries);
        a.durable(Epoch(epoch), fresh.into_iter().map(|h| (h, ())).collect())
    }

    #[test]
    fn a_write_whose_record_another_write_made_durable_and_a_round_materialized_is_answered() {
        let mut a: Acceptance<()> = Acceptance::new(control());
        // Two writes of the same record are in flight; the second one's fsync comes first.
        let first = a.admit(Epoch(1), &[h(1, 0)], Lsn(1)).unwrap();
        assert_eq!(first.fresh, vec![0]);
        a.in_flight(Epoch(1), &[h(1, 0)], 1);
        a.release(1, &[(Lsn(1), Lsn(0))]);
        write(&mut a, 1, &[h(1, 0)]).unwrap();
        let mut c = a.control().clone();
        c.materialized = Lsn(1);
        assert_eq!(a.materialized(c).len(), 1);
        // The first write's fsync completes: its record is held (materialized), not refused.
        a.durable(Epoch(1), vec![(h(1, 0), ())]).unwrap();
        assert_eq!(a.scl(), Lsn(1));
        assert!(a.records().is_empty());
        // A resend now is a no-op too.
        assert!(a
            .admit(Epoch(1), &[h(1, 0)], Lsn(1))
            .unwrap()
            .fresh
            .is_empty());
    }

    #[test]
    fn a_decision_that_would_void_a_materialized_record_is_refused() {
        let mut a: Acceptance<()> = Acceptance::new(control());
        write(&mut a, 1, &[h(1, 0), h(2, 1), h(3, 2), h(4, 3)]).unwrap();
        let c = a.plan_materialized(Lsn(4));
        assert_eq!(c.epoch_tops, vec![(Epoch(1), Lsn(4))]);
        a.materialized(c);
        assert!(a.records().is_empty());
        let point = |above| Truncation {
            epoch: Epoch(2),
            above: Lsn(above),
            next: Lsn(above + 1),
        };
        assert!(matches!(
            a.plan_adopt(Epoch(2), &[point(2)]),
            Err(Refusal::BelowMaterialized { .. })
        ));
        assert!(a.plan_adopt(Epoch(2), &[point(4)]).is_ok());
    }

    #[test]
    fn resends_are_idempotent_and_a_different_record_is_refused() {
        let mut a = Acceptance::new(control());
        write(&mut a, 1, &[h(1, 0), h(2, 1)]).unwrap();
        write(&mut a, 1, &[h(1, 0), h(2, 1), h(3, 2)]).unwrap();
        assert_eq!(a.scl(), Lsn(3));
        let other = Header {
            checksum: 1,
            ..h(2, 1)
        };
        assert!(matches!(
            write(&mut a, 1, &[other]),
            Err(Refusal::Different { .. })
        ));
    }

    #[test]
    fn two_writes_in_flight_cannot_claim_one_predecessor() {
        let mut a: Acceptance<()> = Acceptance::new(control());
        let first = a.admit(Epoch(1), &[h(1, 0)], Lsn::ZERO).unwrap();
        assert_eq!(first.fresh, vec![0]);
        a.in_flight(Epoch(1), &[h(1, 0)], 7);
        let err = a
            .admit(
                Epoch(1),
                &[Header {
                    lsn: Lsn(2),
                    ..h(2, 0)
                }],
                Lsn::ZERO,
            )
            .unwrap_err();
        assert!(matches!(err, Refusal::Chain(ChainError::Conflict { .. })));
        // A resend of the record in flight waits for that write's ticket.
        let again = a.admit(Epoch(1), &[h(1, 0)], Lsn::ZERO).unwrap();
        assert_eq!(
            again,
            Admission {
                fresh: vec![],
                wait_for: BTreeSet::from([7])
            }
        );
    }

    #[test]
    fn a_decision_taken_while_a_write_waits_for_its_fsync_fences_it() {
        let mut a: Acceptance<()> = Acceptance::new(control());
        write(&mut a, 1, &[h(1, 0)]).unwrap();
        let adm = a.admit(Epoch(1), &[h(2, 1)], Lsn::ZERO).unwrap();
        assert_eq!(adm.fresh, vec![0]);
        a.in_flight(Epoch(1), &[h(2, 1)], 3);
        let change = a
            .plan_adopt(
                Epoch(2),
                &[Truncation {
                    epoch: Epoch(2),
                    above: Lsn(1),
                    next: Lsn(2),
                }],
            )
            .unwrap();
        a.apply(change);
        // The new writer's record at that LSN is not held up by the voided one in flight...
        let new = Header {
            checksum: 99,
            ..h(2, 1)
        };
        assert_eq!(a.admit(Epoch(2), &[new], Lsn::ZERO).unwrap().fresh, vec![0]);
        a.in_flight(Epoch(2), &[new], 4);
        // ...and the old write, ending, neither takes the new one out of flight nor lands.
        a.release(3, &[(Lsn(2), Lsn(1))]);
        assert!(!a.nothing_in_flight());
        assert_eq!(
            a.durable(Epoch(1), vec![(h(2, 1), ())]),
            Err(Refusal::Fenced {
                requested: Epoch(1),
                seen: Epoch(2)
            })
        );
        assert_eq!(a.scl(), Lsn(1));
        assert!(!a.records().contains_key(&Lsn(2)));
    }

    #[test]
    fn a_record_made_durable_twice_by_two_writes_is_taken_once() {
        let mut a: Acceptance<()> = Acceptance::new(control());
        write(&mut a, 1, &[h(1, 0)]).unwrap();
        // Writer 1's record 2 waits for its fsync...
        a.admit(Epoch(1), &[h(2, 1)], Lsn::ZERO).unwrap();
        a.in_flight(Epoch(1), &[h(2, 1)], 3);
        // ...while writer 2's decision voids it (writer 2 dies before a quorum adopts it)...
        let voids = [Truncation {
            epoch: Epoch(2),
            above: Lsn(1),
            next: Lsn(2),
        }];
        let change = a.plan_adopt(Epoch(2), &voids).unwrap();
        a.apply(change);
        // ...and writer 3, which kept record 2, copies it here.
        let keeps = [Truncation {
            epoch: Epoch(3),
            above: Lsn(2),
            next: Lsn(3),
        }];
        let change = a.plan_adopt(Epoch(3), &keeps).unwrap();
        a.apply(change);
        let adm = a.admit(Epoch(3), &[h(2, 1)], Lsn::ZERO).unwrap();
        assert_eq!(adm.fresh, vec![0]);
        a.in_flight(Epoch(3), &[h(2, 1)], 4);
        // Writer 1's write ends first: the record is kept (writer 3's history keeps it), and
        // writer 1 hears it is fenced.
        a.release(3, &[(Lsn(2), Lsn(1))]);
        assert!(matches!(
            a.durable(Epoch(1), vec![(h(2, 1), ())]),
            Err(Refusal::Fenced { .. })
        ));
        // Writer 3's copy then ends as a success, not a chain error.
        a.release(4, &[(Lsn(2), Lsn(1))]);
        a.durable(Epoch(3), vec![(h(2, 1), ())]).unwrap();
        assert_eq!(a.scl(), Lsn(2));
        assert!(a.nothing_in_flight());
    }

    #[test]
    fn adoption_removes_only_older_epochs_above_the_point_and_relinks() {
        let mut a: Acceptance<()> = Acceptance::new(control());
        write(&mut a, 1, &[h(1, 0), h(2, 1), h(4, 2)]).unwrap();
        let history = [Truncation {
            epoch: Epoch(2),
            above: Lsn(2),
            next: Lsn(3),
        }];
        let change = a.plan_adopt(Epoch(2), &history).unwrap();
        assert_eq!(change.doomed, BTreeSet::from([Lsn(4)]));
        assert_eq!(a.apply(change), 1);
        assert_eq!(a.scl(), Lsn(2));
        write(&mut a, 2, &[h(3, 2)]).unwrap();
        assert_eq!(a.scl(), Lsn(3));
        // An older writer's history is refused.
        let stale = [Truncation {
            epoch: Epoch(1),
            above: Lsn(1),
            next: Lsn(2),
        }];
        assert!(matches!(
            a.plan_adopt(Epoch(1), &stale),
            Err(Refusal::Fenced { .. })
        ));
    }

    #[test]
    fn replay_skips_what_a_decision_discards() {
        let mut c = control();
        c.truncations.push(Truncation {
            epoch: Epoch(2),
            above: Lsn(1),
            next: Lsn(2),
        });
        let mut a: Acceptance<()> = Acceptance::new(c);
        assert!(a.replay(Epoch(1), h(1, 0), ()).unwrap());
        assert!(!a.replay(Epoch(1), h(2, 1), ()).unwrap());
        assert!(a.replay(Epoch(2), h(2, 1), ()).unwrap());
        assert_eq!(a.scl(), Lsn(2));
    }
}
