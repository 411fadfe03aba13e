//! Crash recovery's decision (docs/DESIGN.md, "Recovery"): from what a read quorum of every
//! protection group reports, where the volume's durable history ends (the VDL), where each PG's
//! chain goes on, and the decision history every segment adopts. Pure: no sockets, files or
//! clocks — `shipper::open` asks the segments and carries the decision out.
//!
//! Why this is enough to decide:
//! - LSNs are allocated one per record, densely, by one writer at a time, and a transaction's
//!   records take consecutive LSNs ending with its commit record. So the volume holds a whole
//!   prefix of transactions up to L exactly when every LSN up to L is a record some segment
//!   holds — or a gap a recovery left on purpose (between its VDL and the first LSN it used).
//! - An acknowledged commit had every record at or below it on 4 of the 6 segments of its PG;
//!   any 3 segments of a PG include one of those 4, so the commit is inside what the scan finds.
//! - Every writer's decision (its epoch, its VDL, its first LSN) is adopted by 4 of 6 segments
//!   of every PG before it writes anything, so every later read quorum sees it, and records it
//!   voided (older epochs above its VDL) are never taken back, wherever they turn up.
//! - A decision history replaces the older one whole: a decision some writer made but never
//!   got onto a write quorum (it died first) is not in a newer writer's history, so it is
//!   dropped rather than applied later behind that writer's back.

use std::collections::{BTreeMap, BTreeSet};

use logdb_types::{Epoch, Lsn};

use crate::layout::READ_QUORUM;

/// One recovery decision: the writer of `epoch` kept every record at or below `above`, voided
/// those above it written under older epochs, and allocated its own from `next` on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Point {
    pub epoch: Epoch,
    pub above: Lsn,
    pub next: Lsn,
}

impl Point {
    pub fn voids(&self, written: Epoch, lsn: Lsn) -> bool {
        written < self.epoch && lsn > self.above
    }
}

/// A record's header, as a segment's scan reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub lsn: Lsn,
    pub prev: Lsn,
    /// The epoch of the writer the segment received it from (a copy made by a recovery carries
    /// that recovery's epoch).
    pub epoch: Epoch,
    pub commit: bool,
    pub commit_ts_us: u64,
    /// Identifies the record: two headers at one LSN are the same record iff these agree.
    pub checksum: u32,
}

/// What one segment answered.
#[derive(Clone, Debug, Default)]
pub struct SegmentScan {
    pub scl: Lsn,
    /// Every record of the PG at or below it is in a stored page version here (and was below
    /// some writer's VDL when it was materialized: committed and durable).
    pub materialized: Lsn,
    /// The highest VDL a writer announced to it: committed and durable too.
    pub last_committed: Lsn,
    pub highest_lsn: Lsn,
    pub highest_commit_ts_us: u64,
    /// The decision history it honours, oldest first.
    pub points: Vec<Point>,
    /// Every record it holds above the scan's start (`scan_start` of all answers), and the
    /// highest one below it.
    pub headers: Vec<Header>,
}

/// Where recovery's scan starts: above everything some segment knows to be committed and
/// durable (what it materialized, the highest VDL a writer announced to it). `answers`: each
/// answering segment's (materialized, last announced VDL).
pub fn scan_start(answers: impl IntoIterator<Item = (Lsn, Lsn)>) -> Lsn {
    let known = answers
        .into_iter()
        .map(|(m, c)| m.max(c))
        .max()
        .unwrap_or(Lsn::ZERO);
    Lsn(known.0 + 1)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub epoch: Epoch,
    /// Everything committed up to here is kept; everything above is discarded.
    pub vdl: Lsn,
    /// Every LSN up to here is a record found (or a deliberate gap).
    pub vcl: Lsn,
    /// Everything at or below was known committed and durable before the scan.
    pub base: Lsn,
    /// Per PG: its last record at or below the VDL (the backlink of its next record).
    pub pg_tails: Vec<Lsn>,
    /// The first LSN the new writer allocates: above every LSN any segment reported.
    pub next_lsn: Lsn,
    pub last_commit_ts_us: u64,
    /// The history every segment adopts: the one honoured so far, then this decision.
    pub history: Vec<Point>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecoveryError {
    #[error("PG {pg}: only {answered} of 6 segments answered; a read quorum of 3 is needed")]
    NoReadQuorum { pg: usize, answered: usize },
    #[error("a decision of epoch {held} is already on storage, not below this writer's epoch {epoch}: a newer writer holds the volume")]
    Superseded { held: Epoch, epoch: Epoch },
    #[error("LSN {lsn} of PG {pg} holds two different records that no decision voids (written under epochs {a} and {b}); refusing to pick one")]
    TwoHistories {
        pg: usize,
        lsn: Lsn,
        a: Epoch,
        b: Epoch,
    },
}

/// Decides recovery for the writer of `epoch` from every PG's answers (`None`: no answer).
///
/// `known_durable`: the highest LSN known committed and durable before the scan, over every
/// segment that took the epoch — also those whose scan then failed (an announced VDL stays true
/// whether or not its segment answers again); the scan started above it.
pub fn decide(
    epoch: Epoch,
    known_durable: Lsn,
    scans: &[Vec<Option<SegmentScan>>],
) -> Result<Decision, RecoveryError> {
    for (pg, row) in scans.iter().enumerate() {
        let answered = row.iter().flatten().count();
        if answered < READ_QUORUM {
            return Err(RecoveryError::NoReadQuorum { pg, answered });
        }
    }
    let answers = || {
        scans
            .iter()
            .enumerate()
            .flat_map(|(k, row)| row.iter().flatten().map(move |s| (k, s)))
    };

    // The newest history any segment holds is the one in force (see the module comment).
    // Points without a first LSN are a segment's own truncations from before histories
    // existed: local to it, never the volume's.
    let history: Vec<Point> = answers()
        .map(|(_, s)| {
            s.points
                .iter()
                .copied()
                .filter(|p| p.next > Lsn::ZERO)
                .collect::<Vec<_>>()
        })
        .max_by_key(|p| (p.last().map(|p| p.epoch), p.len()))
        .unwrap_or_default();
    if let Some(held) = history.last().map(|p| p.epoch).filter(|h| *h >= epoch) {
        return Err(RecoveryError::Superseded { held, epoch });
    }
    let voided = |h: &Header| history.iter().any(|p| p.voids(h.epoch, h.lsn));

    let base = Lsn(scan_start(answers().map(|(_, s)| (s.materialized, s.last_committed))).0 - 1)
        .max(known_durable);
    // Every record some segment holds and no decision voids, by LSN.
    let mut found: BTreeMap<Lsn, (usize, Header)> = BTreeMap::new();
    for (pg, s) in answers() {
        for h in s.headers.iter().filter(|h| !voided(h)) {
            match found.get(&h.lsn) {
                Some((_, seen)) if seen.checksum != h.checksum => {
                    return Err(RecoveryError::TwoHistories {
                        pg,
                        lsn: h.lsn,
                        a: seen.epoch,
                        b: h.epoch,
                    })
                }
                Some(_) => {}
                None => {
                    found.insert(h.lsn, (pg, *h));
                }
            }
        }
    }

    let vcl = complete_up_to(base, found.keys().copied().collect(), &history);
    let vdl = found
        .range(Lsn(base.0 + 1)..)
        .take_while(|(l, _)| **l <= vcl)
        .filter(|(_, (_, h))| h.commit)
        .map(|(l, _)| *l)
        .last()
        .unwrap_or(base);

    let mut pg_tails: Vec<Lsn> = scans
        .iter()
        .map(|row| {
            row.iter()
                .flatten()
                .map(|s| s.materialized)
                .max()
                .unwrap_or(Lsn::ZERO)
        })
        .collect();
    for (lsn, (pg, _)) in found.range(..=vdl) {
        pg_tails[*pg] = pg_tails[*pg].max(*lsn);
    }

    // Every header counts here, voided ones too: their LSNs were used.
    let highest = answers()
        .map(|(_, s)| s.highest_lsn)
        .chain(answers().flat_map(|(_, s)| s.headers.iter().map(|h| h.lsn)))
        .max()
        .unwrap_or(Lsn::ZERO);
    // Never below an earlier writer's first LSN: the gap each decision left (between its VDL and
    // its first LSN) then stays free of valid records for good, which is what lets the VCL walk
    // step over it. (Found by the simulator: a writer that saw nothing above an old VDL reused
    // LSNs inside an older gap, and a later recovery stepped over one of its records.)
    let floor = history.iter().map(|p| p.next).max().unwrap_or(Lsn(1));
    let next_lsn = Lsn(highest.max(vdl).0 + 1).max(floor);
    let last_commit_ts_us = answers()
        .map(|(_, s)| s.highest_commit_ts_us)
        .chain(answers().flat_map(|(_, s)| s.headers.iter().map(|h| h.commit_ts_us)))
        .max()
        .unwrap_or(0);

    let mut history = history;
    history.push(Point {
        epoch,
        above: vdl,
        next: next_lsn,
    });
    Ok(Decision {
        epoch,
        vdl,
        vcl,
        base,
        pg_tails,
        next_lsn,
        last_commit_ts_us,
        history,
    })
}

/// The highest L such that every LSN in (base, L] is a found record or lies in a gap a past
/// decision left (between its VDL and its first LSN).
fn complete_up_to(base: Lsn, found: BTreeSet<Lsn>, history: &[Point]) -> Lsn {
    let mut gaps: Vec<(Lsn, Lsn)> = history
        .iter()
        .filter(|p| p.next.0 > p.above.0 + 1)
        .map(|p| (Lsn(p.above.0 + 1), Lsn(p.next.0 - 1)))
        .collect();
    gaps.sort();
    let mut at = base;
    loop {
        let want = Lsn(at.0 + 1);
        if found.contains(&want) {
            at = want;
            continue;
        }
        // The gap that covers `want` reaching furthest.
        match gaps
            .iter()
            .filter(|(from, to)| *from <= want && want <= *to)
            .map(|(_, to)| *to)
            .max()
        {
            Some(to) => at = to,
            None => return at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `decide` knowing nothing beyond what the scans say.
    fn decide_all(
        epoch: Epoch,
        scans: &[Vec<Option<SegmentScan>>],
    ) -> Result<Decision, RecoveryError> {
        decide(epoch, Lsn::ZERO, scans)
    }

    fn l(n: u64) -> Lsn {
        Lsn(n)
    }

    /// A record of `epoch` at `lsn` linking back to `prev`; `commit` marks a transaction's end.
    fn rec(lsn: u64, prev: u64, epoch: u64, commit: bool) -> Header {
        Header {
            lsn: l(lsn),
            prev: l(prev),
            epoch: Epoch(epoch),
            commit,
            commit_ts_us: if commit { 1000 + lsn } else { 0 },
            checksum: (lsn * 31 + epoch) as u32,
        }
    }

    fn seg(headers: Vec<Header>) -> SegmentScan {
        SegmentScan {
            highest_lsn: headers.iter().map(|h| h.lsn).max().unwrap_or_default(),
            headers,
            ..SegmentScan::default()
        }
    }

    /// Six answers of which only `answered` reply, each holding `headers`.
    fn pg(answered: usize, headers: Vec<Header>) -> Vec<Option<SegmentScan>> {
        (0..6)
            .map(|i| (i < answered).then(|| seg(headers.clone())))
            .collect()
    }

    #[test]
    fn a_transaction_without_its_commit_record_is_wholly_discarded() {
        // The big-transaction crash: tx 1 = 1..=3 committed; tx 2 = 4..=9, its records on
        // a quorum but its commit (10) never sent.
        let mut hs: Vec<Header> = (1..=3).map(|n| rec(n, n - 1, 1, n == 3)).collect();
        hs.extend((4..=9).map(|n| rec(n, n - 1, 1, false)));
        let d = decide_all(Epoch(2), &[pg(4, hs)]).unwrap();
        assert_eq!((d.vcl, d.vdl, d.pg_tails.clone()), (l(9), l(3), vec![l(3)]));
        assert_eq!(d.next_lsn, l(10));
        assert_eq!(
            d.history,
            vec![Point {
                epoch: Epoch(2),
                above: l(3),
                next: l(10)
            }]
        );
    }

    #[test]
    fn a_transaction_spanning_pgs_is_kept_only_with_every_record() {
        // tx 1 = 1 (PG0, commit); tx 2 = 2 (PG0), 3 (PG1, commit) — 3 never reached a quorum
        // and is on no segment that answered.
        let pg0 = pg(4, vec![rec(1, 0, 1, true), rec(2, 1, 1, false)]);
        let pg1 = pg(3, vec![]);
        let d = decide_all(Epoch(2), &[pg0.clone(), pg1]).unwrap();
        assert_eq!((d.vcl, d.vdl), (l(2), l(1)));
        assert_eq!(d.pg_tails, vec![l(1), l(0)]);
        // With 3 found on one answering segment of PG1, tx 2 is whole and kept.
        let mut pg1 = pg(3, vec![]);
        pg1[0] = Some(seg(vec![rec(3, 0, 1, true)]));
        let d = decide_all(Epoch(2), &[pg0, pg1]).unwrap();
        assert_eq!((d.vcl, d.vdl), (l(3), l(3)));
        assert_eq!(d.pg_tails, vec![l(2), l(3)]);
    }

    #[test]
    fn an_idle_pg_does_not_hold_the_vdl_back() {
        let pg0 = pg(
            4,
            (2..=10)
                .map(|n| rec(n, if n == 2 { 0 } else { n - 1 }, 1, n % 3 == 0))
                .collect(),
        );
        let pg1 = pg(3, vec![rec(1, 0, 1, true)]);
        let d = decide_all(Epoch(2), &[pg0, pg1]).unwrap();
        assert_eq!((d.vcl, d.vdl), (l(10), l(9)));
        assert_eq!(d.pg_tails, vec![l(9), l(1)]);
    }

    #[test]
    fn a_hole_in_another_pg_stops_the_vcl_below_it() {
        // PG1's record 5 is on no answering segment: nothing from 5 on is whole.
        let pg0 = pg(
            4,
            [1, 2, 3, 4, 6, 7]
                .iter()
                .map(|n| rec(*n, 0, 1, *n == 2 || *n == 7))
                .collect(),
        );
        let d = decide_all(Epoch(2), &[pg0, pg(3, vec![])]).unwrap();
        assert_eq!((d.vcl, d.vdl), (l(4), l(2)));
    }

    #[test]
    fn an_acknowledged_commit_survives_every_read_quorum() {
        // Commit 6 was acknowledged: 1..=6 on segments 0..4 (a write quorum); 7..=8 (tx 3, no
        // commit) on 4 and 5 only. Whichever three answer, 6 is kept and 7..8 go.
        let full: Vec<Header> = (1..=6).map(|n| rec(n, n - 1, 1, n % 3 == 0)).collect();
        let mut tail = full.clone();
        tail.extend([rec(7, 6, 1, false), rec(8, 7, 1, false)]);
        for mask in 0u32..64 {
            if mask.count_ones() != 3 {
                continue;
            }
            let row: Vec<Option<SegmentScan>> = (0..6)
                .map(|i| {
                    (mask & (1 << i) != 0).then(|| match i {
                        0..=3 => seg(full.clone()),
                        _ => seg(tail[6..].to_vec()),
                    })
                })
                .collect();
            let d = decide_all(Epoch(2), &[row]).unwrap();
            assert_eq!(d.vdl, l(6), "answering {mask:06b}");
        }
    }

    #[test]
    fn a_tail_voided_by_a_decision_never_comes_back_from_a_late_segment() {
        // Writer 2 kept up to 5 and wrote from 9 on. A segment away during that recovery still
        // holds writer 1's 6..=8 (a commit at 8), and answers now.
        let decided = Point {
            epoch: Epoch(2),
            above: l(5),
            next: l(9),
        };
        let kept: Vec<Header> = (1..=5).map(|n| rec(n, n - 1, 1, n == 5)).collect();
        let mut after = kept.clone();
        after.extend([rec(9, 5, 2, false), rec(10, 9, 2, true)]);
        let mut late = kept.clone();
        late.extend((6..=8).map(|n| rec(n, n - 1, 1, n == 8)));
        let mut row: Vec<Option<SegmentScan>> = vec![None; 6];
        for (i, s) in row.iter_mut().enumerate().take(4) {
            let mut scan = seg(if i == 0 { late.clone() } else { after.clone() });
            if i != 0 {
                scan.points = vec![decided];
            }
            *s = Some(scan);
        }
        let d = decide_all(Epoch(3), &[row]).unwrap();
        assert_eq!(
            (d.vcl, d.vdl, d.pg_tails.clone()),
            (l(10), l(10), vec![l(10)])
        );
        assert_eq!(d.history.len(), 2);
        assert_eq!(d.history[0], decided);
    }

    #[test]
    fn a_decision_no_writer_acted_on_is_dropped_by_the_newer_history() {
        let dead = Point {
            epoch: Epoch(2),
            above: l(1),
            next: l(9),
        };
        let live = Point {
            epoch: Epoch(3),
            above: l(3),
            next: l(4),
        };
        let hs: Vec<Header> = (1..=3).map(|n| rec(n, n - 1, 1, n == 3)).collect();
        let mut row = pg(4, hs);
        row[0].as_mut().unwrap().points = vec![dead];
        row[1].as_mut().unwrap().points = vec![live];
        let d = decide_all(Epoch(4), &[row]).unwrap();
        assert_eq!(
            d.vdl,
            l(3),
            "records 2..3 stay: the dead decision is not applied"
        );
        assert_eq!(d.history.first(), Some(&live));
    }

    #[test]
    fn a_newer_decision_on_storage_refuses_this_writer() {
        let mut row = pg(3, vec![]);
        row[0].as_mut().unwrap().points = vec![Point {
            epoch: Epoch(5),
            above: l(0),
            next: l(1),
        }];
        assert_eq!(
            decide_all(Epoch(5), &[row]),
            Err(RecoveryError::Superseded {
                held: Epoch(5),
                epoch: Epoch(5)
            })
        );
    }

    #[test]
    fn two_different_records_at_one_lsn_are_refused_and_copies_are_not() {
        let mut row = pg(3, vec![rec(1, 0, 1, true)]);
        // A copy made by a recovery: same record, newer epoch.
        let mut copy = rec(1, 0, 1, true);
        copy.epoch = Epoch(2);
        row[1] = Some(seg(vec![copy]));
        assert_eq!(decide_all(Epoch(3), &[row.clone()]).unwrap().vdl, l(1));
        let mut other = rec(1, 0, 2, true);
        other.checksum = 0xdead;
        row[2] = Some(seg(vec![other]));
        assert!(matches!(
            decide_all(Epoch(3), &[row]),
            Err(RecoveryError::TwoHistories { .. })
        ));
    }

    #[test]
    fn a_new_writer_never_allocates_inside_an_older_gap() {
        // Writer 2 kept up to 3 and started at 20 (it had seen records up to 19); everything
        // above 3 is gone now. Writer 3 must start at 20, not at 4: LSNs 4..=19 stay a gap.
        let mut row = pg(4, (1..=3).map(|n| rec(n, n - 1, 1, n == 3)).collect());
        row[0].as_mut().unwrap().points = vec![Point {
            epoch: Epoch(2),
            above: l(3),
            next: l(20),
        }];
        let d = decide_all(Epoch(3), &[row]).unwrap();
        assert_eq!((d.vdl, d.next_lsn), (l(3), l(20)));
    }

    #[test]
    fn a_vdl_announced_to_a_segment_whose_scan_failed_still_counts() {
        // VDL 100 reached segment A only; A's scan failed. B..F were told 90 and hold 91..=100
        // from 101's point of view only as predecessors: the scan starts at 101 for all.
        let mut row = pg(5, vec![rec(100, 99, 1, true)]);
        for s in row.iter_mut().flatten() {
            s.last_committed = l(90);
        }
        let d = decide(Epoch(2), l(100), &[row]).unwrap();
        assert_eq!((d.base, d.vdl), (l(100), l(100)));
    }

    #[test]
    fn points_from_before_histories_stay_local() {
        let mut row = pg(3, (1..=5).map(|n| rec(n, n - 1, 1, n == 5)).collect());
        row[0].as_mut().unwrap().points = vec![Point {
            epoch: Epoch(1),
            above: l(2),
            next: Lsn::ZERO,
        }];
        let d = decide_all(Epoch(2), &[row]).unwrap();
        assert_eq!(
            d.vdl,
            l(5),
            "a legacy point does not void other segments' records"
        );
        assert_eq!(d.history.len(), 1);
    }

    #[test]
    fn a_pg_without_a_read_quorum_is_refused() {
        assert_eq!(
            decide_all(Epoch(2), &[pg(4, vec![]), pg(2, vec![])]),
            Err(RecoveryError::NoReadQuorum { pg: 1, answered: 2 })
        );
    }

    #[test]
    fn nothing_above_what_was_materialized_keeps_it_all() {
        // Every segment materialized 1..=7; one holds 9 above a hole at 8.
        let mut row = pg(3, vec![]);
        row[0] = Some(seg(vec![rec(9, 8, 1, true)]));
        for s in row.iter_mut().flatten() {
            s.materialized = l(7);
        }
        let d = decide_all(Epoch(2), &[row]).unwrap();
        assert_eq!((d.vcl, d.vdl, d.pg_tails.clone()), (l(7), l(7), vec![l(7)]));
        assert_eq!(d.next_lsn, l(10));
    }

    #[test]
    fn an_announced_vdl_counts_as_durable_and_the_tail_below_it_comes_from_the_predecessor() {
        // A writer told the segments VDL 20; the scan starts at 21 and reports the PG's last
        // record below it (12) with what follows.
        let mut row = pg(3, vec![rec(12, 9, 1, true), rec(22, 12, 1, false)]);
        for s in row.iter_mut().flatten() {
            s.last_committed = l(20);
        }
        let d = decide_all(Epoch(2), &[row, pg(3, vec![])]).unwrap();
        assert_eq!((d.base, d.vcl, d.vdl), (l(20), l(20), l(20)));
        assert_eq!(d.pg_tails, vec![l(12), l(0)]);
    }

    #[test]
    fn materialized_records_count_as_durable_and_as_the_pgs_tail() {
        let mut row = pg(3, vec![rec(8, 7, 1, false)]);
        for s in row.iter_mut().flatten() {
            s.materialized = l(7);
        }
        let d = decide_all(Epoch(2), &[row]).unwrap();
        assert_eq!(
            (d.base, d.vdl, d.pg_tails.clone()),
            (l(7), l(7), vec![l(7)])
        );
    }
}
