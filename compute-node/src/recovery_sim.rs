//! A deterministic simulator for crash recovery (docs/DESIGN.md §5). It drives the very state
//! machines the binaries run — the segment's `Acceptance` (storage-node `acceptance.rs`), the
//! writer's `Quorum` (`quorum.rs`) and the recovery `decide` (`recovery.rs`) — with everything
//! around them simulated from one seed: a volume of 1-3 PGs × 6 segments; transactions of 1-6
//! records over random PGs; a network that loses, delays, reorders and duplicates messages and
//! partitions segments; disks whose log loses unsynced frames past a random point on a crash
//! (the last kept may be torn) while the control record is atomic; segment crashes that rebuild
//! the core by replay; writers that die at any point — mid-shipping, mid-recovery, after adopting
//! their decision on only some segments, holding a ticket they never used — writers the config
//! store replaces while they still run (they go on shipping and acknowledging until fenced),
//! and messages of dead writers that arrive late. After each recovery it checks:
//! - no acknowledged commit is lost (including those a replaced writer acknowledged);
//! - the volume is exactly a prefix of whole transactions: a transaction with one record kept has
//!   all of them kept, and its commit at or below the VDL;
//! - the segments that adopted the decision hold identical records up to their PG's tail;
//! - no decision or write is refused by a segment that should take it (a protocol error).
//!
//! A failing seed names itself and replays exactly (`logdb-recovery-sim --seed N`).

use std::collections::BTreeMap;

use logdb_storage::acceptance::{Acceptance, Header as AHeader, Held, Refusal};
use logdb_storage::control::{Control, Descriptor, Truncation};
use logdb_types::{Epoch, Lsn, PageId, PgIndex};

use crate::layout::{SEGMENTS_PER_PG, WRITE_QUORUM};
use crate::quorum::Quorum;
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
    commit: bool,
    /// Identity of the record (its checksum, in the real thing).
    id: u32,
}

impl Rec {
    fn header(&self) -> AHeader {
        AHeader {
            lsn: self.lsn,
            prev: self.prev,
            checksum: self.id,
            page: PageId(self.lsn.0 % 7),
            commit_ts_us: self.commit.then_some(self.lsn.0),
        }
    }

    fn of(h: &AHeader) -> Rec {
        Rec {
            lsn: h.lsn,
            prev: h.prev,
            commit: h.commit_ts_us.is_some(),
            id: h.checksum,
        }
    }
}

/// A write appended to a segment's log and waiting for its fsync (as `Segment::write` waits).
struct Waiting {
    ticket: u64,
    epoch: Epoch,
    fresh: Vec<AHeader>,
    /// What the caller sent, to send again when the write is lost.
    sent: Vec<Rec>,
}

/// One segment: the very acceptance core `Segment` runs, over a simulated disk — a durable
/// control record (saved atomically, as redb commits it), the records a round materialized
/// (durable with it: the page store's delta index) and a log whose frames past the last fsync
/// may be lost, in part, by a crash (the last one kept may be torn: lost too).
struct Seg {
    /// Reachable (a partition makes it unreachable; its disk goes on).
    up: bool,
    core: Acceptance<()>,
    disk_control: Control,
    /// Records materialized (they leave the core's memory), by LSN.
    materialized: BTreeMap<Lsn, Held<()>>,
    frames: Vec<(Epoch, AHeader)>,
    synced: usize,
    waiting: Vec<Waiting>,
    next_ticket: u64,
}

#[derive(Debug)]
enum Refused {
    Fenced,
    Invalid(String),
}

impl From<Refusal> for Refused {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Fenced { .. } => Refused::Fenced,
            other => Refused::Invalid(other.to_string()),
        }
    }
}

/// The answer to a write: acknowledged SCL now, or after the next fsync.
enum Answer {
    Acked(Lsn),
    Pending,
}

fn sim_control() -> Control {
    Control::new(
        Descriptor {
            volume: "sim".into(),
            segment: "sim".into(),
            pg: PgIndex(0),
            first_page: 0,
            page_count: u64::MAX,
            page_size: 4096,
            retention_secs: 0,
        },
        Epoch(0),
    )
}

impl Seg {
    fn new() -> Seg {
        let control = sim_control();
        Seg {
            up: true,
            core: Acceptance::new(control.clone()),
            disk_control: control,
            materialized: BTreeMap::new(),
            frames: Vec::new(),
            synced: 0,
            waiting: Vec::new(),
            next_ticket: 1,
        }
    }

    fn scl(&self) -> Lsn {
        self.core.scl()
    }

    /// A control record change: durable first, then applied (as `Segment` does).
    fn save(&mut self, control: &Control) {
        self.disk_control = control.clone();
    }

    fn install_epoch(&mut self, epoch: Epoch) -> Result<(), Refused> {
        if let Some(c) = self.core.plan_epoch(epoch)? {
            self.save(&c);
            self.core.set_control(c);
        }
        Ok(())
    }

    /// `Segment::write`: epoch installed, batch admitted, fresh records appended; answered now
    /// when nothing needs an fsync, else by `fsync`.
    fn write(&mut self, epoch: Epoch, recs: &[Rec], vdl: Lsn) -> Result<Answer, Refused> {
        self.install_epoch(epoch)?;
        let headers: Vec<AHeader> = recs.iter().map(Rec::header).collect();
        let admission = self.core.admit(epoch, &headers, vdl)?;
        let fresh: Vec<AHeader> = admission.fresh.iter().map(|i| headers[*i]).collect();
        if fresh.is_empty() && admission.wait_for.is_empty() {
            self.core.durable(epoch, Vec::new())?;
            return Ok(Answer::Acked(self.core.scl()));
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        for h in &fresh {
            self.frames.push((epoch, *h));
        }
        self.core.in_flight(epoch, &fresh, ticket);
        self.waiting.push(Waiting {
            ticket,
            epoch,
            fresh,
            sent: recs.to_vec(),
        });
        Ok(Answer::Pending)
    }

    /// The log is fsynced: every waiting write completes, each with its answer.
    fn fsync(&mut self) -> Vec<(Waiting, Result<Lsn, Refused>)> {
        self.synced = self.frames.len();
        let done: Vec<Waiting> = std::mem::take(&mut self.waiting);
        done.into_iter()
            .map(|w| {
                let entries: Vec<(Lsn, Lsn)> = w.fresh.iter().map(|h| (h.lsn, h.prev)).collect();
                self.core.release(w.ticket, &entries);
                let held = w.fresh.iter().map(|h| (*h, ())).collect();
                let answer = self
                    .core
                    .durable(w.epoch, held)
                    .map(|()| self.core.scl())
                    .map_err(Refused::from);
                (w, answer)
            })
            .collect()
    }

    /// The process dies: unsynced frames are lost past a random point (`keep` of them stay),
    /// writes in flight are lost with their callers' answers; on restart the core is rebuilt
    /// from the durable control record and the log, as `Segment::open` does.
    fn crash(&mut self, keep: usize) -> Result<Vec<Waiting>, String> {
        let lost = std::mem::take(&mut self.waiting);
        self.frames.truncate(self.synced + keep);
        self.synced = self.frames.len();
        let mut core = Acceptance::new(self.disk_control.clone());
        for (epoch, h) in &self.frames {
            core.replay(*epoch, *h, ())
                .map_err(|e| format!("replay after a crash: {e}"))?;
        }
        self.core = core;
        Ok(lost)
    }

    fn adopt(&mut self, epoch: Epoch, history: &[Truncation]) -> Result<(), Refused> {
        self.install_epoch(epoch)?;
        let change = self.core.plan_adopt(epoch, history)?;
        self.save(&change.control);
        self.core.apply(change);
        Ok(())
    }

    /// One coalescing round (its control record is durable with its versions).
    fn coalesce(&mut self) {
        if let Some(bound) = self.core.coalesce_bound() {
            let c = self.core.plan_materialized(bound);
            self.save(&c);
            for h in self.core.materialized(c) {
                self.materialized.insert(h.header.lsn, h);
            }
        }
    }

    /// Every record the segment holds: materialized (in the page store) and in memory.
    fn held(&self) -> BTreeMap<Lsn, &Held<()>> {
        self.materialized
            .iter()
            .chain(self.core.records())
            .map(|(l, h)| (*l, h))
            .collect()
    }

    fn records(&self, range: impl std::ops::RangeBounds<Lsn>) -> Vec<(Epoch, Rec)> {
        self.held()
            .range(range)
            .map(|(_, h)| (h.epoch, Rec::of(&h.header)))
            .collect()
    }

    /// `GetSegmentState` + `StreamRecords{headers_only, with_predecessor}` from `from`.
    fn scan(&self, from: Lsn) -> SegmentScan {
        let held = self.held();
        let before = held.range(..from).next_back();
        let headers = before
            .into_iter()
            .chain(held.range(from..))
            .map(|(_, h)| Header {
                lsn: h.header.lsn,
                prev: h.header.prev,
                epoch: h.epoch,
                commit: h.header.commit_ts_us.is_some(),
                commit_ts_us: h.header.commit_ts_us.unwrap_or(0),
                checksum: h.header.checksum,
            })
            .collect();
        let control = self.core.control();
        SegmentScan {
            scl: self.core.scl(),
            materialized: control.materialized,
            last_committed: self.core.last_committed(),
            highest_lsn: self.core.highest_lsn(),
            highest_commit_ts_us: self.core.highest_commit().1,
            points: control
                .truncations
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
    /// The epoch of the writer that made it.
    epoch: Epoch,
    /// (pg, record) of each record, in LSN order; the last is the commit.
    records: Vec<(usize, Rec)>,
}

/// The writer of one epoch: the very quorum core the shipper runs, the decision history its
/// segments adopt, and its messages on their way.
struct Writer {
    epoch: Epoch,
    quorum: Quorum,
    history: Vec<Truncation>,
    /// Segments that adopted this writer's history.
    adopted: Vec<[bool; SEGMENTS_PER_PG]>,
    /// Commit LSN -> the commit record's identity.
    commits: BTreeMap<Lsn, u32>,
    /// Records on their way: (pg, segment, record).
    in_flight: Vec<(usize, usize, Rec)>,
    /// Fenced: it stops.
    fenced: bool,
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
    /// Commits acknowledged by a writer that had already been replaced (it did not know yet).
    pub deposed_acknowledged: u64,
    pub segment_crashes: u64,
    /// Unsynced log frames a crash lost, and crashes that tore the last frame kept.
    pub frames_lost: u64,
    pub torn_frames: u64,
    pub duplicates: u64,
    /// Segment queues the writer dropped (what a write quorum of peers holds) to stay bounded.
    pub overflows: u64,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.transactions += o.transactions;
        self.acknowledged += o.acknowledged;
        self.recoveries += o.recoveries;
        self.failed_recoveries += o.failed_recoveries;
        self.zombie_deliveries += o.zombie_deliveries;
        self.deposed_acknowledged += o.deposed_acknowledged;
        self.segment_crashes += o.segment_crashes;
        self.frames_lost += o.frames_lost;
        self.torn_frames += o.torn_frames;
        self.duplicates += o.duplicates;
        self.overflows += o.overflows;
    }
}

struct World {
    rng: Rng,
    pgs: usize,
    segs: Vec<Vec<Seg>>,
    txs: Vec<Tx>,
    /// Commit records acknowledged to a client: (lsn, id).
    acknowledged: Vec<(Lsn, u32)>,
    writer: Option<Writer>,
    /// A writer the config store replaced while it was still running (partitioned from it):
    /// it goes on shipping, and acknowledging, until a segment fences it.
    deposed: Option<Writer>,
    /// Messages of dead writers that may still arrive: (pg, segment, epoch, record).
    zombies: Vec<(usize, usize, Epoch, Rec)>,
    /// The config store's last epoch ticket.
    last_epoch: u64,
    next_id: u32,
    /// Records a completed recovery discarded (older writers' records above its VDL): no later
    /// recovery may keep one.
    voided: std::collections::HashSet<u32>,
    stats: Stats,
    /// A scripted scenario: recoveries neither die nor burn tickets, and a write is fsynced
    /// at once unless `sync_writes` is off.
    scripted: bool,
    sync_writes: bool,
}

impl World {
    fn new(rng: Rng, pgs: usize) -> World {
        World {
            rng,
            pgs,
            segs: (0..pgs)
                .map(|_| (0..SEGMENTS_PER_PG).map(|_| Seg::new()).collect())
                .collect(),
            txs: Vec::new(),
            acknowledged: Vec::new(),
            writer: None,
            deposed: None,
            zombies: Vec::new(),
            last_epoch: 0,
            next_id: 1,
            voided: Default::default(),
            stats: Stats::default(),
            scripted: false,
            sync_writes: true,
        }
    }
}

/// Runs schedule `seed` for `steps` steps.
pub fn run(seed: u64, steps: usize) -> Result<Stats, Violation> {
    let mut rng = Rng::new(seed);
    let pgs = 1 + rng.below(3) as usize;
    let mut w = World::new(rng, pgs);
    for step in 0..steps {
        w.step().map_err(|what| Violation { seed, step, what })?;
    }
    Ok(w.stats)
}

/// Whose write an answer belongs to.
enum Caller {
    Live,
    Deposed,
    /// A recovery's copy, or a dead writer's message.
    Other,
}

impl World {
    fn step(&mut self) -> Result<(), String> {
        if self.writer.is_none() {
            // Between writers the world goes on: a deposed writer ships, disks flush, segments
            // crash and come back, until the next writer recovers.
            return match self.rng.below(100) {
                0..=39 => self.recover(),
                40..=64 => self.deliver(true),
                65..=79 => {
                    let (k, i) = self.any_segment();
                    self.fsync(k, i)
                }
                80..=84 => self.crash_segment(),
                85..=89 => {
                    self.toggle_segment();
                    Ok(())
                }
                _ => self.deliver_zombie(),
            };
        }
        match self.rng.below(100) {
            0..=25 => self.transaction(),
            26..=54 => self.deliver(false),
            55..=56 => {
                self.crash_writer();
                Ok(())
            }
            57..=58 => {
                self.depose_writer();
                Ok(())
            }
            59..=63 => {
                self.toggle_segment();
                Ok(())
            }
            64..=66 => self.crash_segment(),
            67..=74 => {
                let (k, i) = self.any_segment();
                self.fsync(k, i)
            }
            75..=80 => {
                let (k, i) = self.any_segment();
                self.segs[k][i].coalesce();
                Ok(())
            }
            81..=86 => self.heartbeat(),
            87..=89 => self.deliver_zombie(),
            90..=94 => self.deliver(true),
            96..=97 => {
                let (k, i) = self.any_segment();
                self.overflow(k, i);
                Ok(())
            }
            _ => {
                let (k, i) = self.any_segment();
                self.catch_up(k, i)
            }
        }
    }

    fn any_segment(&mut self) -> (usize, usize) {
        (
            self.rng.below(self.pgs as u64) as usize,
            self.rng.below(SEGMENTS_PER_PG as u64) as usize,
        )
    }

    fn caller(&self, epoch: Epoch) -> Caller {
        if self.writer.as_ref().is_some_and(|w| w.epoch == epoch) {
            Caller::Live
        } else if self.deposed.as_ref().is_some_and(|w| w.epoch == epoch) {
            Caller::Deposed
        } else {
            Caller::Other
        }
    }

    fn writer_mut(&mut self, who: &Caller) -> Option<&mut Writer> {
        match who {
            Caller::Live => self.writer.as_mut(),
            Caller::Deposed => self.deposed.as_mut(),
            Caller::Other => None,
        }
    }

    /// A transaction of 1-6 records over random PGs, queued for every segment of its PGs.
    fn transaction(&mut self) -> Result<(), String> {
        let n = 1 + self.rng.below(6) as usize;
        let pgs: Vec<usize> = (0..n)
            .map(|_| self.rng.below(self.pgs as u64) as usize)
            .collect();
        self.queue_transaction(&pgs);
        Ok(())
    }

    /// A transaction with one record on each of `pgs` (in order; the last is its commit),
    /// queued for every segment of their PGs. Answers the records' LSNs.
    fn queue_transaction(&mut self, pgs: &[usize]) -> Vec<Lsn> {
        let n = pgs.len();
        let mut records = Vec::new();
        let w = self.writer.as_mut().expect("writer");
        for (j, &pg) in pgs.iter().enumerate() {
            let (lsn, prev) = w.quorum.allocate(pg);
            let rec = Rec {
                lsn,
                prev,
                commit: j + 1 == n,
                id: self.next_id,
            };
            self.next_id += 1;
            records.push((pg, rec));
            for i in 0..SEGMENTS_PER_PG {
                w.in_flight.push((pg, i, rec));
            }
        }
        let commit = records.last().expect("n >= 1").1;
        w.quorum.commit(commit.lsn);
        w.commits.insert(commit.lsn, commit.id);
        let lsns = records.iter().map(|(_, r)| r.lsn).collect();
        let epoch = w.epoch;
        self.txs.push(Tx { epoch, records });
        self.stats.transactions += 1;
        lsns
    }

    /// Some messages of the live (or the deposed) writer arrive, in random order; some are
    /// delivered twice (a retry whose first try did arrive).
    fn deliver(&mut self, deposed: bool) -> Result<(), String> {
        let who = if deposed {
            Caller::Deposed
        } else {
            Caller::Live
        };
        let count = 1 + self.rng.below(24) as usize;
        for _ in 0..count {
            let duplicate = self.rng.chance(5);
            let pick = self.rng.next_u64();
            let Some(w) = self.writer_mut(&who).filter(|w| !w.fenced) else {
                return Ok(());
            };
            if w.in_flight.is_empty() {
                break;
            }
            let at = (pick % w.in_flight.len() as u64) as usize;
            let (k, i, rec) = w.in_flight[at];
            if !self.segs[k][i].up {
                continue;
            }
            let w = self.writer_mut(&who).expect("writer");
            if duplicate {
                self.stats.duplicates += 1;
            } else {
                w.in_flight.swap_remove(at);
            }
            self.send(&who, k, i, &[rec])?;
        }
        Ok(())
    }

    /// Sends records to a segment as the shipper does (adopting the history first).
    fn send(&mut self, who: &Caller, k: usize, i: usize, recs: &[Rec]) -> Result<(), String> {
        let Some(w) = self.writer_mut(who) else {
            return Ok(());
        };
        let (epoch, adopted, history) = (w.epoch, w.adopted[k][i], w.history.clone());
        let vdl = w.quorum.vdl();
        let seg = &mut self.segs[k][i];
        if !adopted {
            match seg.adopt(epoch, &history) {
                Ok(()) => self.writer_mut(who).expect("writer").adopted[k][i] = true,
                Err(r) => return self.answered(who, k, i, recs, Err(r)),
            }
        }
        match self.segs[k][i].write(epoch, recs, vdl) {
            Ok(Answer::Acked(scl)) => self.answered(who, k, i, recs, Ok(scl)),
            // Most writes find the flusher idle and are answered at once; the rest wait for a
            // later fsync (a crash before it loses them).
            Ok(Answer::Pending) if self.scripted && self.sync_writes => self.fsync(k, i),
            Ok(Answer::Pending) if !self.scripted && self.rng.chance(75) => self.fsync(k, i),
            Ok(Answer::Pending) => Ok(()),
            Err(r) => self.answered(who, k, i, recs, Err(r)),
        }
    }

    /// A writer hears a segment's answer (the segment is reachable: it got the request).
    fn answered(
        &mut self,
        who: &Caller,
        k: usize,
        i: usize,
        sent: &[Rec],
        answer: Result<Lsn, Refused>,
    ) -> Result<(), String> {
        let live = matches!(who, Caller::Live);
        let deposed = matches!(who, Caller::Deposed);
        let Some(w) = self.writer_mut(who) else {
            return Ok(());
        };
        match answer {
            Ok(scl) => {
                let done: Vec<(Lsn, u32)> = w
                    .quorum
                    .ack(k, i, scl)
                    .into_iter()
                    .map(|c| (c, w.commits[&c]))
                    .collect();
                for (c, id) in done {
                    self.acknowledged.push((c, id));
                    self.stats.acknowledged += 1;
                    if deposed {
                        self.stats.deposed_acknowledged += 1;
                    }
                }
                Ok(())
            }
            Err(Refused::Fenced) if deposed => {
                w.fenced = true;
                Ok(())
            }
            Err(Refused::Fenced) => Err("the live writer was fenced".into()),
            Err(Refused::Invalid(why)) => Err(format!(
                "PG {k} segment {i} refused {} writer's records {:?}: {why}",
                if live { "the live" } else { "a deposed" },
                sent.iter().map(|r| r.lsn.0).collect::<Vec<_>>()
            )),
        }
    }

    /// Segment (k, i) fsyncs its log: every write waiting on it is answered — to its writer if
    /// the segment is reachable; otherwise the caller timed out and sends the records again.
    fn fsync(&mut self, k: usize, i: usize) -> Result<(), String> {
        let done = self.segs[k][i].fsync();
        let up = self.segs[k][i].up;
        for (w, answer) in done {
            let who = self.caller(w.epoch);
            if up {
                self.answered(&who, k, i, &w.sent, answer)?;
            } else {
                self.resend(&who, k, i, w.sent);
            }
        }
        Ok(())
    }

    fn resend(&mut self, who: &Caller, k: usize, i: usize, sent: Vec<Rec>) {
        if let Some(w) = self.writer_mut(who) {
            w.in_flight.extend(sent.into_iter().map(|r| (k, i, r)));
        }
    }

    /// A storage process dies and restarts: what it had not fsynced may be lost, in part.
    fn crash_segment(&mut self) -> Result<(), String> {
        let (k, i) = self.any_segment();
        let seg = &self.segs[k][i];
        let unsynced = seg.frames.len() - seg.synced;
        let mut keep = self.rng.below(unsynced as u64 + 1) as usize;
        if keep > 0 && self.rng.chance(30) {
            keep -= 1;
            self.stats.torn_frames += 1;
        }
        self.stats.frames_lost += (unsynced - keep) as u64;
        self.stats.segment_crashes += 1;
        let lost = self.segs[k][i].crash(keep)?;
        for w in lost {
            let who = self.caller(w.epoch);
            self.resend(&who, k, i, w.sent);
        }
        Ok(())
    }

    fn heartbeat(&mut self) -> Result<(), String> {
        let (k, i) = self.any_segment();
        if self.segs[k][i].up {
            self.send(&Caller::Live, k, i, &[])?;
        }
        Ok(())
    }

    /// The writer dies; some of its messages may still arrive later (a zombie).
    fn crash_writer(&mut self) {
        if let Some(w) = self.writer.take() {
            self.bury(w);
        }
    }

    fn bury(&mut self, w: Writer) {
        if self.rng.chance(50) {
            for (k, i, r) in w.in_flight {
                if self.rng.chance(30) {
                    self.zombies.push((k, i, w.epoch, r));
                }
            }
        }
    }

    /// The config store replaces the writer while it still runs (it is partitioned from the
    /// config store, not from storage): a new writer recovers next, and the old one goes on.
    fn depose_writer(&mut self) {
        if let Some(old) = self.deposed.take() {
            self.bury(old);
        }
        self.deposed = self.writer.take();
    }

    fn deliver_zombie(&mut self) -> Result<(), String> {
        if self.zombies.is_empty() {
            return Ok(());
        }
        let at = self.rng.below(self.zombies.len() as u64) as usize;
        let (k, i, epoch, rec) = self.zombies.swap_remove(at);
        let seg = &mut self.segs[k][i];
        if seg.up {
            // Refused or not, a dead writer hears no answer.
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

    /// The writer's queue for segment (k, i) passes its bound (`Shipper::append`): what a write
    /// quorum of the PG already holds is dropped from it — the segment gets it from its peers.
    /// Answers how many records were dropped.
    fn overflow(&mut self, k: usize, i: usize) -> usize {
        let Some(w) = self.writer.as_mut() else {
            return 0;
        };
        let on_quorum = w.quorum.quorum_scl(k);
        let before = w.in_flight.len();
        w.in_flight
            .retain(|(pg, seg, r)| !(*pg == k && *seg == i && r.lsn <= on_quorum));
        let dropped = before - w.in_flight.len();
        if dropped > 0 {
            self.stats.overflows += 1;
        }
        dropped
    }

    /// The writer copies what a lagging segment misses from a peer (`Shipper::catch_up`).
    fn catch_up(&mut self, k: usize, i: usize) -> Result<(), String> {
        let w = self.writer.as_ref().expect("writer");
        if !self.segs[k][i].up || !w.adopted[k][i] {
            return Ok(());
        }
        let Some(peer) = (0..SEGMENTS_PER_PG)
            .filter(|j| *j != i && self.segs[k][*j].up && w.adopted[k][*j])
            .max_by_key(|j| self.segs[k][*j].scl())
        else {
            return Ok(());
        };
        let from = self.segs[k][i].scl();
        let recs: Vec<Rec> = self.segs[k][peer]
            .records(Lsn(from.0 + 1)..)
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        if !recs.is_empty() {
            self.send(&Caller::Live, k, i, &recs)?;
        }
        Ok(())
    }

    /// A new writer: a ticket from the config store, then fence, scan, decide, adopt, copy —
    /// any of which may fail part way.
    fn recover(&mut self) -> Result<(), String> {
        let up: Vec<Vec<usize>> = self
            .segs
            .iter()
            .map(|row| (0..SEGMENTS_PER_PG).filter(|i| row[*i].up).collect())
            .collect();
        if up.iter().any(|u| u.len() < WRITE_QUORUM) {
            if self.scripted {
                return Err("a script recovered without a write quorum of every PG".into());
            }
            // Cannot fence a write quorum yet: wait for segments to come back.
            let (k, i) = self.any_segment();
            self.segs[k][i].up = true;
            return Ok(());
        }
        self.last_epoch += 1;
        let epoch = Epoch(self.last_epoch);
        if !self.scripted && self.rng.chance(5) {
            // Died holding a ticket it never used: the epoch is burnt.
            self.stats.failed_recoveries += 1;
            return Ok(());
        }
        // 1. The epoch on every reachable segment (a write quorum of every PG).
        for (k, row) in up.iter().enumerate() {
            for &i in row {
                self.segs[k][i]
                    .install_epoch(epoch)
                    .map_err(|e| format!("PG {k} segment {i} refused a new ticket: {e:?}"))?;
            }
        }
        // 2. Scan what they hold above what is known durable.
        let mut known = Vec::new();
        for (k, row) in up.iter().enumerate() {
            for &i in row {
                let s = &self.segs[k][i];
                known.push((s.core.control().materialized, s.core.last_committed()));
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
        let dies_after = if !self.scripted && self.rng.chance(15) {
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
        // 4. Lagging adopted segments get what they miss up to their PG's tail; recovery waits
        // for each copy's fsync.
        for (k, row) in up.iter().enumerate() {
            let tail = decision.pg_tails[k];
            for &i in row {
                let scl = self.segs[k][i].scl();
                if scl >= tail {
                    continue;
                }
                let mut missing: BTreeMap<Lsn, Rec> = BTreeMap::new();
                for &j in row {
                    if j == i {
                        continue;
                    }
                    for (_, r) in self.segs[k][j].records(Lsn(scl.0 + 1)..=tail) {
                        missing.entry(r.lsn).or_insert(r);
                    }
                }
                let recs: Vec<Rec> = missing.into_values().collect();
                self.segs[k][i]
                    .write(epoch, &recs, Lsn::ZERO)
                    .map_err(|e| format!("PG {k} segment {i} refused a recovery copy: {e:?}"))?;
                for (w, answer) in self.segs[k][i].fsync() {
                    if w.epoch == epoch {
                        answer.map_err(|e| {
                            format!("PG {k} segment {i} refused a recovery copy: {e:?}")
                        })?;
                    } else {
                        let who = self.caller(w.epoch);
                        self.answered(&who, k, i, &w.sent, answer)?;
                    }
                }
            }
            let complete = row
                .iter()
                .filter(|i| self.segs[k][**i].scl() >= tail)
                .count();
            if complete < WRITE_QUORUM {
                let detail: Vec<String> = row
                    .iter()
                    .map(|i| {
                        let s = &self.segs[k][*i];
                        format!(
                            "seg {i}: scl {} mat {} recs {:?}",
                            s.scl(),
                            s.core.control().materialized,
                            s.records(..)
                                .iter()
                                .map(|(e, r)| (r.lsn.0, r.prev.0, e.0))
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
        // The decision is on a write quorum of every PG now: what it discards is gone for good.
        for tx in self.txs.iter().filter(|t| t.epoch < epoch) {
            for (_, r) in tx.records.iter().filter(|(_, r)| r.lsn > decision.vdl) {
                self.voided.insert(r.id);
            }
        }
        let mut acked = vec![[Lsn::ZERO; SEGMENTS_PER_PG]; self.pgs];
        for (k, row) in up.iter().enumerate() {
            for &i in row {
                acked[k][i] = self.segs[k][i].scl().min(decision.pg_tails[k]);
            }
        }
        self.writer = Some(Writer {
            epoch,
            quorum: Quorum::new(
                decision.next_lsn,
                decision.vdl,
                decision.pg_tails.clone(),
                acked,
            ),
            history,
            adopted,
            commits: BTreeMap::new(),
            in_flight: Vec::new(),
            fenced: false,
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
                .filter(|s| s.scl() >= tail)
                .collect();
            let ids = |s: &Seg| -> BTreeMap<Lsn, u32> {
                s.records(..=tail)
                    .into_iter()
                    .map(|(_, r)| (r.lsn, r.id))
                    .collect()
            };
            let view = ids(complete[0]);
            for s in &complete[1..] {
                let other = ids(s);
                // Below what both materialized the records may have been compacted away in
                // the real thing; here they are all kept, so they must agree everywhere.
                if other != view {
                    return Err(format!("PG {k}: segments disagree below the tail {tail}"));
                }
            }
            kept.extend(view);
        }
        if let Some((lsn, _)) = kept.iter().find(|(_, id)| self.voided.contains(*id)) {
            return Err(format!(
                "record {lsn}, discarded by an earlier recovery, is back (VDL {}, epoch {})",
                d.vdl, d.epoch
            ));
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

/// A scripted schedule on the same world: the named scenarios of the recovery issue are fixed
/// sequences of these events (`compute-node/tests/recovery_sim.rs`). Every `recover` runs the
/// same checks as a random schedule's.
pub struct Script {
    w: World,
}

impl Script {
    /// A volume of `pgs` PGs and its first writer.
    pub fn new(pgs: usize) -> Result<Script, String> {
        let mut w = World::new(Rng::new(0), pgs);
        w.scripted = true;
        w.recover()?;
        Ok(Script { w })
    }

    /// The writer allocates a transaction with one record on each of `pgs`; answers their LSNs
    /// (the last is the commit). Nothing is sent yet.
    pub fn transaction(&mut self, pgs: &[usize]) -> Vec<u64> {
        self.w.queue_transaction(pgs).iter().map(|l| l.0).collect()
    }

    /// Delivers the writer's queued records `lsns` to segments `segments` of their PG. With
    /// `fsync` off the writes wait in the segments' logs, unsynced.
    pub fn deliver(&mut self, lsns: &[u64], segments: &[usize], fsync: bool) -> Result<(), String> {
        self.w.sync_writes = fsync;
        let picked: Vec<(usize, usize, Rec)> = {
            let w = self.w.writer.as_mut().ok_or("no writer")?;
            let (take, keep): (Vec<_>, Vec<_>) = w
                .in_flight
                .drain(..)
                .partition(|(_, i, r)| lsns.contains(&r.lsn.0) && segments.contains(i));
            w.in_flight = keep;
            take
        };
        let mut picked = picked;
        picked.sort_by_key(|(_, i, r)| (r.lsn, *i));
        for (k, i, rec) in picked {
            self.w.send(&Caller::Live, k, i, &[rec])?;
        }
        self.w.sync_writes = true;
        Ok(())
    }

    /// Segment `i` of PG `pg` fsyncs its log: the writes waiting on it are answered.
    pub fn fsync(&mut self, pg: usize, i: usize) -> Result<(), String> {
        self.w.fsync(pg, i)
    }

    /// The writer's queue for segment `i` of PG `pg` overflows (see `World::overflow`);
    /// answers how many queued records were dropped.
    pub fn overflow(&mut self, pg: usize, i: usize) -> usize {
        self.w.overflow(pg, i)
    }

    /// The writer brings segment `i` of PG `pg` up from its best peer.
    pub fn catch_up(&mut self, pg: usize, i: usize) -> Result<(), String> {
        self.w.catch_up(pg, i)
    }

    /// The SCL segment `i` of PG `pg` holds.
    pub fn scl(&self, pg: usize, i: usize) -> u64 {
        self.w.segs[pg][i].scl().0
    }

    /// The writer dies; everything it had in flight is lost with it.
    pub fn crash_writer(&mut self) {
        self.w.writer = None;
    }

    /// Segment `i` of PG `pg` becomes unreachable (`false`) or reachable again.
    pub fn reachable(&mut self, pg: usize, i: usize, up: bool) {
        self.w.segs[pg][i].up = up;
    }

    /// Segment `i` of PG `pg` crashes and restarts, keeping `keep` of its unsynced frames.
    pub fn crash_segment(&mut self, pg: usize, i: usize, keep: usize) -> Result<(), String> {
        let lost = self.w.segs[pg][i].crash(keep)?;
        for w in lost {
            let who = self.w.caller(w.epoch);
            self.w.resend(&who, pg, i, w.sent);
        }
        Ok(())
    }

    /// A new writer recovers (ticket, fence, scan, decide, adopt, copy) and the invariants are
    /// checked.
    pub fn recover(&mut self) -> Result<(), String> {
        self.w.recover()
    }

    /// Commits acknowledged to clients so far.
    pub fn acknowledged(&self) -> Vec<u64> {
        self.w.acknowledged.iter().map(|(l, _)| l.0).collect()
    }

    /// The writer's VDL.
    pub fn vdl(&self) -> u64 {
        self.w.writer.as_ref().map_or(0, |w| w.quorum.vdl().0)
    }

    /// Whether segment `i` of PG `pg` holds the record the latest writer to allocate `lsn`
    /// made there.
    pub fn holds(&self, pg: usize, i: usize, lsn: u64) -> bool {
        let id = self
            .w
            .txs
            .iter()
            .flat_map(|t| t.records.iter())
            .rev()
            .find(|(_, r)| r.lsn.0 == lsn);
        let seg = &self.w.segs[pg][i];
        let held = seg
            .core
            .records()
            .get(&Lsn(lsn))
            .or_else(|| seg.materialized.get(&Lsn(lsn)));
        match (id, held) {
            (Some((_, r)), Some(h)) => h.header.checksum == r.id,
            _ => false,
        }
    }
}

/// Runs `count` schedules from `first`; the first violation, or the summed stats.
pub fn sweep(first: u64, count: u64, steps: usize) -> Result<Stats, Violation> {
    let mut total = Stats::default();
    for seed in first..first + count {
        total.add(&run(seed, steps)?);
    }
    Ok(total)
}
