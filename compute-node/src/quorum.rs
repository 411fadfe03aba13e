//! The writer's quorum arithmetic as a pure state machine (docs/DESIGN.md §3, §5): LSN
//! allocation and each PG's backlink, what every segment acknowledged, each PG's durable point
//! (the 4th highest SCL of its six segments), the volume complete LSN (VCL: below the first
//! record of any PG not yet on a write quorum) and the volume durable LSN (VDL: the last commit
//! at or below VCL). Commits complete strictly in LSN order. No sockets, clocks or locks: the
//! shipper feeds it acknowledgements under its lock; the recovery simulator drives the same type.

use std::collections::{BTreeSet, VecDeque};

use logdb_types::Lsn;

use crate::layout::{SEGMENTS_PER_PG, WRITE_QUORUM};

/// The 4th highest SCL of a PG: every record at or below it is on a write quorum.
fn quorum_scl(scls: &[Lsn; SEGMENTS_PER_PG]) -> Lsn {
    let mut s = *scls;
    s.sort_unstable_by(|a, b| b.cmp(a));
    s[WRITE_QUORUM - 1]
}

#[derive(Debug, Clone)]
pub struct Quorum {
    next_lsn: u64,
    /// The first LSN this writer allocates (its recovery decision's).
    first_lsn: u64,
    /// Per PG, its last allocated record (the next one's backlink).
    pg_tail: Vec<Lsn>,
    /// Per PG, this writer's records not yet on a write quorum, in LSN order.
    outstanding: Vec<VecDeque<Lsn>>,
    /// Per PG and segment, the highest SCL it acknowledged.
    acked: Vec<[Lsn; SEGMENTS_PER_PG]>,
    /// Commit records not yet durable.
    commits: BTreeSet<Lsn>,
    vdl: Lsn,
}

impl Quorum {
    /// A writer that recovery opened at `vdl`, allocating from `next_lsn`, with each PG's tail
    /// and what each segment holds of it.
    pub fn new(
        next_lsn: Lsn,
        vdl: Lsn,
        pg_tails: Vec<Lsn>,
        acked: Vec<[Lsn; SEGMENTS_PER_PG]>,
    ) -> Quorum {
        assert_eq!(pg_tails.len(), acked.len(), "one tail per PG");
        assert!(next_lsn.0 > vdl.0, "allocation starts above the VDL");
        Quorum {
            next_lsn: next_lsn.0,
            first_lsn: next_lsn.0,
            outstanding: vec![VecDeque::new(); pg_tails.len()],
            pg_tail: pg_tails,
            acked,
            commits: BTreeSet::new(),
            vdl,
        }
    }

    /// A new, empty PG (the volume grew).
    pub fn add_pg(&mut self) {
        self.pg_tail.push(Lsn::ZERO);
        self.outstanding.push(VecDeque::new());
        self.acked.push([Lsn::ZERO; SEGMENTS_PER_PG]);
    }

    pub fn pgs(&self) -> usize {
        self.pg_tail.len()
    }

    pub fn vdl(&self) -> Lsn {
        self.vdl
    }

    pub fn next_lsn(&self) -> Lsn {
        Lsn(self.next_lsn)
    }

    pub fn first_lsn(&self) -> Lsn {
        Lsn(self.first_lsn)
    }

    /// PG `pg`'s last allocated record.
    pub fn pg_tail(&self, pg: usize) -> Lsn {
        self.pg_tail[pg]
    }

    /// What segment `idx` of PG `pg` acknowledged.
    pub fn acked(&self, pg: usize, idx: usize) -> Lsn {
        self.acked[pg][idx]
    }

    /// Everything at or below this is on a write quorum of PG `pg`.
    pub fn quorum_scl(&self, pg: usize) -> Lsn {
        quorum_scl(&self.acked[pg])
    }

    /// Records allocated and not yet below the VDL (what back-pressure counts).
    pub fn outstanding(&self) -> u64 {
        let durable = self.vdl.0.max(self.first_lsn.saturating_sub(1));
        (self.next_lsn - 1).saturating_sub(durable)
    }

    /// The next LSN, for a record of PG `pg`: answers it and its backlink.
    pub fn allocate(&mut self, pg: usize) -> (Lsn, Lsn) {
        let lsn = Lsn(self.next_lsn);
        self.next_lsn += 1;
        let prev = std::mem::replace(&mut self.pg_tail[pg], lsn);
        self.outstanding[pg].push_back(lsn);
        (lsn, prev)
    }

    /// `lsn` (allocated) is a transaction's commit record: it completes once VDL reaches it.
    pub fn commit(&mut self, lsn: Lsn) {
        debug_assert!(lsn.0 < self.next_lsn, "commit of an allocated record");
        self.commits.insert(lsn);
    }

    /// Segment `idx` of PG `pg` acknowledged SCL `scl`: answers the commits that became durable,
    /// in LSN order (the last is the new VDL). An older acknowledgement changes nothing.
    pub fn ack(&mut self, pg: usize, idx: usize, scl: Lsn) -> Vec<Lsn> {
        if scl <= self.acked[pg][idx] {
            return Vec::new();
        }
        self.acked[pg][idx] = scl;
        let q = quorum_scl(&self.acked[pg]);
        let queue = &mut self.outstanding[pg];
        while queue.front().is_some_and(|l| *l <= q) {
            queue.pop_front();
        }
        let vcl = self
            .outstanding
            .iter()
            .filter_map(|d| d.front())
            .min()
            .map(|l| Lsn(l.0 - 1))
            .unwrap_or(Lsn(self.next_lsn - 1));
        let mut done = Vec::new();
        while let Some(&c) = self.commits.first() {
            if c > vcl {
                break;
            }
            self.commits.pop_first();
            done.push(c);
        }
        if let Some(&last) = done.last() {
            self.vdl = last;
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack_all(q: &mut Quorum, pg: usize, segs: &[usize], scl: u64) -> Vec<Lsn> {
        segs.iter().flat_map(|i| q.ack(pg, *i, Lsn(scl))).collect()
    }

    #[test]
    fn a_commit_is_durable_on_four_of_six_and_completes_in_lsn_order() {
        let mut q = Quorum::new(
            Lsn(1),
            Lsn::ZERO,
            vec![Lsn::ZERO; 2],
            vec![[Lsn::ZERO; 6]; 2],
        );
        let (a, prev) = q.allocate(0);
        assert_eq!((a, prev), (Lsn(1), Lsn::ZERO));
        q.commit(a);
        let (b, _) = q.allocate(1);
        let (c, prev_c) = q.allocate(1);
        assert_eq!(prev_c, b);
        q.commit(c);
        // PG 1 on a quorum first: nothing completes while PG 0's record is not.
        assert!(ack_all(&mut q, 1, &[0, 1, 2, 3], 3).is_empty());
        assert_eq!(q.vdl(), Lsn::ZERO);
        assert!(ack_all(&mut q, 0, &[0, 1, 2], 1).is_empty(), "three of six");
        assert_eq!(q.ack(0, 5, Lsn(1)), vec![Lsn(1), Lsn(3)]);
        assert_eq!(q.vdl(), Lsn(3));
        assert_eq!(q.outstanding(), 0);
    }

    #[test]
    fn a_transaction_over_two_pgs_waits_for_both() {
        let mut q = Quorum::new(
            Lsn(11),
            Lsn(10),
            vec![Lsn(9), Lsn(10)],
            vec![[Lsn(10); 6]; 2],
        );
        let (a, prev_a) = q.allocate(0);
        assert_eq!(prev_a, Lsn(9));
        let (b, _) = q.allocate(1);
        q.commit(b);
        assert!(ack_all(&mut q, 1, &[0, 1, 2, 3, 4, 5], b.0).is_empty());
        assert_eq!(q.outstanding(), 2);
        assert_eq!(ack_all(&mut q, 0, &[1, 2, 3, 4], a.0), vec![b]);
        // A stale acknowledgement does not move anything back.
        assert!(q.ack(0, 1, Lsn(3)).is_empty());
        assert_eq!(q.acked(0, 1), a);
    }
}
