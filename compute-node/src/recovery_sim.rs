//! A deterministic simulator for crash recovery (docs/DESIGN.md §5). One seed drives a volume of
//! 1-3 PGs × 6 segments through transactions whose records reach random subsets of their
//! segments in random order (loss, delay, reordering), segments that go away and come back,
//! coalescing and VDL announcements, writers that die at any point — mid-shipping, mid-recovery,
//! after adopting their decision on only some segments — old writers whose messages still
//! arrive after a newer writer took over, and recovery after recovery. Every recovery runs the
//! real decision (`recovery::decide`); segments keep their chain with the real `Chain` and apply
//! decisions with the real `Truncation` rule. After each recovery it checks:
//! - no acknowledged commit is lost;
//! - the volume is exactly a prefix of whole transactions: a transaction with one record kept has
//!   all of them kept, and its commit at or below the VDL;
//! - no segment ever holds two different records at one LSN it is asked to agree on, and the
//!   segments that adopted the decision hold identical records up to their PG's tail;
//! - no decision is refused by a segment that should take it (a protocol error, not a fault).
//!
//! A failing seed names itself and replays exactly (`logdb-recovery-sim --seed N`).
//!
//! Mirrored rather than shared (open work, see the recovery issue): the segment's acceptance
//! (`Segment::write`, `Segment::adopt_history`) and the writer's quorum arithmetic
//! (`Shipper::on_ack`) are restated here step for step; moving both into pure cores that the
//! binaries and this simulator share is the next step.

use std::collections::{BTreeMap, BTreeSet};

use logdb_storage::chain::Chain;
use logdb_storage::page_store::Truncation;
use logdb_storage::types::{Epoch, Lsn};

use crate::layout::{SEGMENTS_PER_PG, WRITE_QUORUM};
use crate::recovery::{self, Header, Point, SegmentScan};

/// splitmix64: small, fast, and the same on every machine.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5eed_1095_7a5c_0ffe)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rec {
    lsn: Lsn,
    prev: Lsn,
    /// The epoch the segment received it under (a copy carries the copier's).
    epoch: Epoch,
    commit: bool,
    /// Identity of the record (its checksum, in the real thing).
    id: u32,
}

/// One segment, as `Segment` keeps it: installed epoch, decision history, records, chain,
/// materialized LSN and the last VDL it was told.
struct Seg {
    up: bool,
    epoch: Epoch,
    history: Vec<Truncation>,
    records: BTreeMap<Lsn, Rec>,
    chain: Chain,
    materialized: Lsn,
    last_committed: Lsn,
}

#[derive(Debug)]
enum Refused {
    Fenced,
    Invalid(String),
}

impl Seg {
    fn new() -> Seg {
        Seg {
            up: true,
            epoch: Epoch(0),
            history: Vec::new(),
            records: BTreeMap::new(),
            chain: Chain::default(),
            materialized: Lsn::ZERO,
            last_committed: Lsn::ZERO,
        }
    }

    fn discards(&self, epoch: Epoch, lsn: Lsn) -> bool {
        self.history.iter().any(|t| t.discards(epoch, lsn))
    }

    /// `Segment::write`: fence, then the whole batch checked, then applied.
    fn write(&mut self, epoch: Epoch, recs: &[Rec], vdl: Lsn) -> Result<(), Refused> {
        if epoch < self.epoch {
            return Err(Refused::Fenced);
        }
        self.epoch = epoch;
        let mut fresh = Vec::new();
        for r in recs {
            if let Some(have) = self.records.get(&r.lsn) {
                if have.id != r.id {
                    return Err(Refused::Invalid(format!(
                        "LSN {} already holds a different record",
                        r.lsn
                    )));
                }
                continue;
            }
            self.chain
                .check(r.lsn, r.prev)
                .map_err(|e| Refused::Invalid(e.to_string()))?;
            fresh.push(*r);
        }
        self.last_committed = self.last_committed.max(vdl);
        let mut fenced = false;
        for r in fresh {
            if self.discards(epoch, r.lsn) {
                fenced = true;
                continue;
            }
            self.chain
                .insert(r.lsn, r.prev)
                .map_err(|e| Refused::Invalid(e.to_string()))?;
            self.records.insert(r.lsn, Rec { epoch, ..r });
        }
        if fenced {
            return Err(Refused::Fenced);
        }
        Ok(())
    }

    /// `Segment::adopt_history`.
    fn adopt(&mut self, epoch: Epoch, history: &[Truncation]) -> Result<(), Refused> {
        if epoch < self.epoch {
            return Err(Refused::Fenced);
        }
        if let Some(held) = self.history.iter().map(|t| t.epoch).max() {
            if held > epoch {
                return Err(Refused::Fenced);
            }
        }
        let doomed: Vec<Lsn> = self
            .records
            .iter()
            .filter(|(l, r)| history.iter().any(|t| t.discards(r.epoch, **l)))
            .map(|(l, _)| *l)
            .collect();
        if doomed.first().is_some_and(|l| *l <= self.materialized) {
            return Err(Refused::Invalid(format!(
                "would discard materialized record {}",
                doomed[0]
            )));
        }
        self.epoch = epoch;
        self.history = history.to_vec();
        for l in doomed {
            self.records.remove(&l);
        }
        let mut chain = Chain::starting_at(self.materialized);
        for (l, r) in self.records.range(Lsn(self.materialized.0 + 1)..) {
            let _ = chain.insert(*l, r.prev);
        }
        self.chain = chain;
        let own = history.last().map_or(Lsn::ZERO, |t| t.above);
        self.last_committed = self.last_committed.min(own);
        Ok(())
    }

    /// One coalescing round: materialized moves to the last record at or below
    /// min(SCL, announced VDL).
    fn coalesce(&mut self) {
        let target = self.chain.scl().min(self.last_committed);
        if let Some((l, _)) = self.records.range(..=target).next_back() {
            if *l > self.materialized {
                self.materialized = *l;
            }
        }
    }

    /// `GetSegmentState` + `StreamRecords{headers_only, with_predecessor}` from `from`.
    fn scan(&self, from: Lsn) -> SegmentScan {
        let before = self.records.range(..from).next_back();
        let headers = before
            .into_iter()
            .chain(self.records.range(from..))
            .map(|(_, r)| Header {
                lsn: r.lsn,
                prev: r.prev,
                epoch: r.epoch,
                commit: r.commit,
                commit_ts_us: if r.commit { r.lsn.0 } else { 0 },
                checksum: r.id,
            })
            .collect();
        SegmentScan {
            scl: self.chain.scl(),
            materialized: self.materialized,
            last_committed: self.last_committed,
            highest_lsn: self
                .records
                .keys()
                .next_back()
                .copied()
                .unwrap_or(self.materialized),
            highest_commit_ts_us: 0,
            points: self
                .history
                .iter()
                .map(|t| Point {
                    epoch: t.epoch,
                    above: t.above,
                    next: t.next,
                })
                .collect(),
            headers,
        }
    }
}

struct Tx {
    /// (pg, record) of each record, in LSN order; the last is the commit.
    records: Vec<(usize, Rec)>,
}

/// The writer of one epoch: LSNs, PG tails, what each segment acknowledged, its commits.
struct Writer {
    epoch: Epoch,
    next_lsn: u64,
    pg_tail: Vec<Lsn>,
    history: Vec<Truncation>,
    /// Segments that adopted this writer's history.
    adopted: Vec<[bool; SEGMENTS_PER_PG]>,
    acked: Vec<[Lsn; SEGMENTS_PER_PG]>,
    /// Per PG, this writer's records not yet on a write quorum.
    outstanding: Vec<BTreeSet<Lsn>>,
    commits: BTreeSet<Lsn>,
    vdl: Lsn,
    /// Records on their way: (pg, segment, record).
    in_flight: Vec<(usize, usize, Rec)>,
}

/// A broken invariant, with where it broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub seed: u64,
    pub step: usize,
    pub what: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {} step {}: {} (replay: logdb-recovery-sim --seed {})",
            self.seed, self.step, self.what, self.seed
        )
    }
}

/// What one schedule did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub transactions: u64,
    pub acknowledged: u64,
    pub recoveries: u64,
    pub failed_recoveries: u64,
    pub zombie_deliveries: u64,
}

struct World {
    rng: Rng,
    pgs: usize,
    segs: Vec<Vec<Seg>>,
    txs: Vec<Tx>,
    /// Commit records acknowledged to a client: (lsn, id).
    acknowledged: Vec<(Lsn, u32)>,
    writer: Option<Writer>,
    /// Messages of dead writers that may still arrive: (pg, segment, epoch, record).
    zombies: Vec<(usize, usize, Epoch, Rec)>,
    last_epoch: u64,
    next_id: u32,
    stats: Stats,
}

/// Runs schedule `seed` for `steps` steps.
pub fn run(seed: u64, steps: usize) -> Result<Stats, Violation> {
    let mut rng = Rng::new(seed);
    let pgs = 1 + rng.below(3) as usize;
    let mut w = World {
        rng,
        pgs,
        segs: (0..pgs)
            .map(|_| (0..SEGMENTS_PER_PG).map(|_| Seg::new()).collect())
            .collect(),
        txs: Vec::new(),
        acknowledged: Vec::new(),
        writer: None,
        zombies: Vec::new(),
        last_epoch: 0,
        next_id: 1,
        stats: Stats::default(),
    };
    for step in 0..steps {
        w.step().map_err(|what| Violation { seed, step, what })?;
    }
    Ok(w.stats)
}

impl World {
    fn step(&mut self) -> Result<(), String> {
        if self.writer.is_none() {
            return self.recover();
        }
        match self.rng.below(100) {
            0..=29 => self.transaction(),
            30..=64 => self.deliver(),
            65..=67 => {
                self.crash_writer();
                Ok(())
            }
            68..=75 => {
                self.toggle_segment();
                Ok(())
            }
            76..=83 => {
                let (k, i) = self.any_segment();
                self.segs[k][i].coalesce();
                Ok(())
            }
            84..=91 => self.heartbeat(),
            92..=95 => self.deliver_zombie(),
            _ => self.catch_up(),
        }
    }

    fn any_segment(&mut self) -> (usize, usize) {
        (
            self.rng.below(self.pgs as u64) as usize,
            self.rng.below(SEGMENTS_PER_PG as u64) as usize,
        )
    }

    /// A transaction of 1-6 records over random PGs, queued for every segment of its PGs.
    fn transaction(&mut self) -> Result<(), String> {
        let n = 1 + self.rng.below(6) as usize;
        let pgs = self.pgs as u64;
        let mut records = Vec::new();
        let w = self.writer.as_mut().expect("writer");
        for j in 0..n {
            let pg = self.rng.below(pgs) as usize;
            let lsn = Lsn(w.next_lsn);
            w.next_lsn += 1;
            let rec = Rec {
                lsn,
                prev: w.pg_tail[pg],
                epoch: w.epoch,
                commit: j + 1 == n,
                id: self.next_id,
            };
            self.next_id += 1;
            w.pg_tail[pg] = lsn;
            w.outstanding[pg].insert(lsn);
            records.push((pg, rec));
            for i in 0..SEGMENTS_PER_PG {
                w.in_flight.push((pg, i, rec));
            }
        }
        w.commits.insert(records.last().expect("n >= 1").1.lsn);
        self.txs.push(Tx { records });
        self.stats.transactions += 1;
        Ok(())
    }

    /// Some messages in flight arrive (in random order); some are lost for now and resent later.
    fn deliver(&mut self) -> Result<(), String> {
        let count = 1 + self.rng.below(24) as usize;
        for _ in 0..count {
            let w = self.writer.as_mut().expect("writer");
            if w.in_flight.is_empty() {
                break;
            }
            let at = self.rng.below(w.in_flight.len() as u64) as usize;
            let (k, i, rec) = w.in_flight[at];
            if !self.segs[k][i].up {
                continue;
            }
            w.in_flight.swap_remove(at);
            if !self.send(k, i, &[rec])? {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Sends records to a segment as the shipper does (adopting the history first); answers
    /// false when the writer turned out to be fenced (it stops).
    fn send(&mut self, k: usize, i: usize, recs: &[Rec]) -> Result<bool, String> {
        let w = self.writer.as_mut().expect("writer");
        let seg = &mut self.segs[k][i];
        if !w.adopted[k][i] {
            match seg.adopt(w.epoch, &w.history) {
                Ok(()) => w.adopted[k][i] = true,
                Err(Refused::Fenced) => return Err("a live writer's decision refused".into()),
                Err(Refused::Invalid(why)) => {
                    return Err(format!("PG {k} segment {i} refused the decision: {why}"))
                }
            }
        }
        match seg.write(w.epoch, recs, w.vdl) {
            Ok(()) => {}
            Err(Refused::Fenced) => return Err("the live writer was fenced".into()),
            Err(Refused::Invalid(why)) => {
                return Err(format!("PG {k} segment {i} refused a write: {why}"))
            }
        }
        w.acked[k][i] = w.acked[k][i].max(seg.chain.scl());
        self.advance_vdl();
        Ok(true)
    }

    /// `Shipper::on_ack`: a PG is durable to its 4th highest acknowledged SCL; VCL is below the
    /// first record of any PG that is not; commits up to VCL are acknowledged in LSN order.
    fn advance_vdl(&mut self) {
        let w = self.writer.as_mut().expect("writer");
        for k in 0..self.pgs {
            let mut s = w.acked[k];
            s.sort_unstable_by(|a, b| b.cmp(a));
            let q = s[WRITE_QUORUM - 1];
            w.outstanding[k].retain(|l| *l > q);
        }
        let vcl = w
            .outstanding
            .iter()
            .filter_map(|o| o.first())
            .min()
            .map(|l| Lsn(l.0 - 1))
            .unwrap_or(Lsn(w.next_lsn - 1));
        while let Some(&c) = w.commits.first() {
            if c > vcl {
                break;
            }
            w.commits.pop_first();
            w.vdl = c;
            let tx = self
                .txs
                .iter()
                .rev()
                .find(|t| {
                    t.records
                        .last()
                        .is_some_and(|(_, r)| r.lsn == c && r.epoch == w.epoch)
                })
                .expect("the commit's transaction");
            let id = tx.records.last().expect("commit").1.id;
            self.acknowledged.push((c, id));
            self.stats.acknowledged += 1;
        }
    }

    fn heartbeat(&mut self) -> Result<(), String> {
        let (k, i) = self.any_segment();
        if self.segs[k][i].up {
            self.send(k, i, &[])?;
        }
        Ok(())
    }

    /// The writer dies; some of its messages may still arrive later (a zombie).
    fn crash_writer(&mut self) {
        if let Some(w) = self.writer.take() {
            if self.rng.chance(50) {
                for (k, i, r) in w.in_flight {
                    if self.rng.chance(30) {
                        self.zombies.push((k, i, w.epoch, r));
                    }
                }
            }
        }
    }

    fn deliver_zombie(&mut self) -> Result<(), String> {
        if self.zombies.is_empty() {
            return Ok(());
        }
        let at = self.rng.below(self.zombies.len() as u64) as usize;
        let (k, i, epoch, rec) = self.zombies.swap_remove(at);
        let seg = &mut self.segs[k][i];
        if seg.up {
            // Refused or not, an old writer gets no acknowledgement that counts.
            let _ = seg.write(epoch, &[rec], Lsn::ZERO);
            self.stats.zombie_deliveries += 1;
        }
        Ok(())
    }

    fn toggle_segment(&mut self) {
        let (k, i) = self.any_segment();
        let down = self.segs[k].iter().filter(|s| !s.up).count();
        let seg = &mut self.segs[k][i];
        if seg.up && down < 3 {
            seg.up = false;
        } else if !seg.up {
            seg.up = true;
        }
    }

    /// The writer copies what a lagging segment misses from a peer (`Shipper::catch_up`).
    fn catch_up(&mut self) -> Result<(), String> {
        let (k, i) = self.any_segment();
        let w = self.writer.as_ref().expect("writer");
        if !self.segs[k][i].up || !w.adopted[k][i] {
            return Ok(());
        }
        let Some(peer) = (0..SEGMENTS_PER_PG)
            .filter(|j| *j != i && self.segs[k][*j].up && w.adopted[k][*j])
            .max_by_key(|j| self.segs[k][*j].chain.scl())
        else {
            return Ok(());
        };
        let from = self.segs[k][i].chain.scl();
        let recs: Vec<Rec> = self.segs[k][peer]
            .records
            .range(Lsn(from.0 + 1)..)
            .map(|(_, r)| *r)
            .collect();
        if !recs.is_empty() {
            self.send(k, i, &recs)?;
        }
        Ok(())
    }

    /// A new writer: fence, scan, decide, adopt, copy — any of which may fail part way.
    fn recover(&mut self) -> Result<(), String> {
        let up: Vec<Vec<usize>> = self
            .segs
            .iter()
            .map(|row| (0..SEGMENTS_PER_PG).filter(|i| row[*i].up).collect())
            .collect();
        if up.iter().any(|u| u.len() < WRITE_QUORUM) {
            // Cannot fence a write quorum yet: wait for segments to come back.
            let (k, i) = self.any_segment();
            self.segs[k][i].up = true;
            return Ok(());
        }
        self.last_epoch += 1;
        let epoch = Epoch(self.last_epoch);
        // 1. The epoch on every reachable segment (a write quorum of every PG).
        for (k, row) in up.iter().enumerate() {
            for &i in row {
                let s = &mut self.segs[k][i];
                s.epoch = s.epoch.max(epoch);
            }
        }
        // 2. Scan what they hold above what is known durable.
        let mut known = Vec::new();
        for (k, row) in up.iter().enumerate() {
            for &i in row {
                known.push((self.segs[k][i].materialized, self.segs[k][i].last_committed));
            }
        }
        let from = recovery::scan_start(known);
        let scans: Vec<Vec<Option<SegmentScan>>> = (0..self.pgs)
            .map(|k| {
                (0..SEGMENTS_PER_PG)
                    .map(|i| up[k].contains(&i).then(|| self.segs[k][i].scan(from)))
                    .collect()
            })
            .collect();
        let decision =
            recovery::decide(epoch, Lsn(from.0 - 1), &scans).map_err(|e| format!("decide: {e}"))?;
        let history: Vec<Truncation> = decision
            .history
            .iter()
            .map(|p| Truncation {
                epoch: p.epoch,
                above: p.above,
                next: p.next,
            })
            .collect();
        // 3. Adoption; the writer may die after any number of them.
        let dies_after = if self.rng.chance(15) {
            Some(self.rng.below(6 * self.pgs as u64) as usize)
        } else {
            None
        };
        let mut adopted = vec![[false; SEGMENTS_PER_PG]; self.pgs];
        let mut done = 0;
        for (k, row) in up.iter().enumerate() {
            for &i in row {
                if dies_after.is_some_and(|n| done >= n) {
                    self.stats.failed_recoveries += 1;
                    return Ok(());
                }
                match self.segs[k][i].adopt(epoch, &history) {
                    Ok(()) => adopted[k][i] = true,
                    Err(e) => {
                        return Err(format!("PG {k} segment {i} refused the decision: {e:?}"))
                    }
                }
                done += 1;
            }
        }
        // 4. Lagging adopted segments get what they miss up to their PG's tail.
        for (k, row) in up.iter().enumerate() {
            let tail = decision.pg_tails[k];
            for &i in row {
                let scl = self.segs[k][i].chain.scl();
                if scl >= tail {
                    continue;
                }
                let mut missing: BTreeMap<Lsn, Rec> = BTreeMap::new();
                for &j in row {
                    if j == i {
                        continue;
                    }
                    for (l, r) in self.segs[k][j].records.range(Lsn(scl.0 + 1)..=tail) {
                        missing.entry(*l).or_insert(*r);
                    }
                }
                let recs: Vec<Rec> = missing.into_values().collect();
                self.segs[k][i]
                    .write(epoch, &recs, Lsn::ZERO)
                    .map_err(|e| format!("PG {k} segment {i} refused a recovery copy: {e:?}"))?;
            }
            let complete = row
                .iter()
                .filter(|i| self.segs[k][**i].chain.scl() >= tail)
                .count();
            if complete < WRITE_QUORUM {
                let detail: Vec<String> = row
                    .iter()
                    .map(|i| {
                        let s = &self.segs[k][*i];
                        format!(
                            "seg {i}: scl {} mat {} recs {:?}",
                            s.chain.scl(),
                            s.materialized,
                            s.records
                                .values()
                                .map(|r| (r.lsn.0, r.prev.0, r.epoch.0))
                                .collect::<Vec<_>>()
                        )
                    })
                    .collect();
                return Err(format!(
                    "PG {k}: tail {tail} complete on only {complete} segments after recovery (VDL {}, base {}, history {:?}); {}",
                    decision.vdl, decision.base, decision.history, detail.join("; ")
                ));
            }
        }
        self.check(&decision, &up)?;
        self.stats.recoveries += 1;
        let mut acked = vec![[Lsn::ZERO; SEGMENTS_PER_PG]; self.pgs];
        for (k, row) in up.iter().enumerate() {
            for &i in row {
                acked[k][i] = self.segs[k][i].chain.scl().min(decision.pg_tails[k]);
            }
        }
        self.writer = Some(Writer {
            epoch,
            next_lsn: decision.next_lsn.0,
            pg_tail: decision.pg_tails.clone(),
            history,
            adopted,
            acked,
            outstanding: vec![BTreeSet::new(); self.pgs],
            commits: BTreeSet::new(),
            vdl: decision.vdl,
            in_flight: Vec::new(),
        });
        Ok(())
    }

    /// The invariants after a recovery.
    fn check(&self, d: &recovery::Decision, up: &[Vec<usize>]) -> Result<(), String> {
        // What the volume holds now: per PG, the records up to its tail on a complete segment.
        let mut kept: BTreeMap<Lsn, u32> = BTreeMap::new();
        for (k, row) in up.iter().enumerate() {
            let tail = d.pg_tails[k];
            let complete: Vec<&Seg> = row
                .iter()
                .map(|i| &self.segs[k][*i])
                .filter(|s| s.chain.scl() >= tail)
                .collect();
            let first = complete[0];
            let view: BTreeMap<Lsn, u32> = first
                .records
                .range(..=tail)
                .map(|(l, r)| (*l, r.id))
                .collect();
            for s in &complete[1..] {
                let other: BTreeMap<Lsn, u32> =
                    s.records.range(..=tail).map(|(l, r)| (*l, r.id)).collect();
                // Below what both materialized the records may have been compacted away in
                // the real thing; here they are all kept, so they must agree everywhere.
                if other != view {
                    return Err(format!("PG {k}: segments disagree below the tail {tail}"));
                }
            }
            kept.extend(view);
        }
        for (lsn, id) in &self.acknowledged {
            if kept.get(lsn) != Some(id) {
                return Err(format!(
                    "acknowledged commit {lsn} lost (VDL {}, epoch {})",
                    d.vdl, d.epoch
                ));
            }
        }
        for tx in &self.txs {
            let held = tx
                .records
                .iter()
                .filter(|(_, r)| kept.get(&r.lsn) == Some(&r.id))
                .count();
            if held > 0 && held < tx.records.len() {
                return Err(format!(
                    "a transaction is half there after recovery to VDL {}: {held} of {} records (LSNs {:?})",
                    d.vdl,
                    tx.records.len(),
                    tx.records.iter().map(|(_, r)| r.lsn.0).collect::<Vec<_>>()
                ));
            }
            let commit = tx.records.last().expect("commit").1;
            if held > 0 && commit.lsn > d.vdl {
                return Err(format!(
                    "transaction committing at {} kept above VDL {}",
                    commit.lsn, d.vdl
                ));
            }
        }
        Ok(())
    }
}

/// Runs `count` schedules from `first`; the first violation, or the summed stats.
pub fn sweep(first: u64, count: u64, steps: usize) -> Result<Stats, Violation> {
    let mut total = Stats::default();
    for seed in first..first + count {
        let s = run(seed, steps)?;
        total.transactions += s.transactions;
        total.acknowledged += s.acknowledged;
        total.recoveries += s.recoveries;
        total.failed_recoveries += s.failed_recoveries;
        total.zombie_deliveries += s.zombie_deliveries;
    }
    Ok(total)
}
