//! The segment complete LSN (SCL): the highest LSN up to which a segment holds every record of its
//! PG, found by following backlinks (each record names the previous LSN of the same PG). Records
//! may arrive out of order; those above a hole wait here until the hole is filled. Pure logic: no
//! disk, no network.

use std::collections::BTreeMap;

use logdb_types::Lsn;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    #[error(
        "record LSN {lsn} links back to {prev}, but LSN {existing} already follows {prev} in this PG"
    )]
    Conflict { lsn: Lsn, prev: Lsn, existing: Lsn },
    #[error(
        "record LSN {lsn} links back to {prev}, but the PG's chain is already complete up to {scl}"
    )]
    BelowScl { lsn: Lsn, prev: Lsn, scl: Lsn },
}

#[derive(Debug, Default, Clone)]
pub struct Chain {
    scl: Lsn,
    /// Records above the SCL, keyed by their backlink.
    waiting: BTreeMap<Lsn, Lsn>,
}

impl Chain {
    /// A chain whose records up to `scl` are all present.
    pub fn starting_at(scl: Lsn) -> Self {
        Chain {
            scl,
            waiting: BTreeMap::new(),
        }
    }

    pub fn scl(&self) -> Lsn {
        self.scl
    }

    /// Whether `lsn`/`prev` can join the chain (call before making the record durable).
    /// `lsn` must not be a record the segment already holds.
    pub fn check(&self, lsn: Lsn, prev: Lsn) -> Result<(), ChainError> {
        // Only a record the segment does not hold reaches here: at or below the SCL every link
        // is already fixed, so a new record there (or one linking back into that range)
        // contradicts the chain.
        if lsn <= self.scl || prev < self.scl {
            return Err(ChainError::BelowScl {
                lsn,
                prev,
                scl: self.scl,
            });
        }
        match self.waiting.get(&prev) {
            Some(&existing) if existing != lsn => Err(ChainError::Conflict {
                lsn,
                prev,
                existing,
            }),
            _ => Ok(()),
        }
    }

    /// Adds a durable record and advances the SCL as far as the backlinks allow.
    pub fn insert(&mut self, lsn: Lsn, prev: Lsn) -> Result<(), ChainError> {
        self.check(lsn, prev)?;
        self.waiting.insert(prev, lsn);
        while let Some(next) = self.waiting.remove(&self.scl) {
            self.scl = next;
        }
        Ok(())
    }

    /// Forgets every waiting record above `above`; the SCL becomes `new_scl` when it was above
    /// `above` (`new_scl` = the highest record the segment keeps at or below `above`).
    pub fn truncate(&mut self, above: Lsn, new_scl: Lsn) {
        self.waiting.retain(|_, lsn| *lsn <= above);
        if self.scl > above {
            self.scl = new_scl;
        }
        // Waiting records at or below `above` may now hang off the new SCL.
        while let Some(next) = self.waiting.remove(&self.scl) {
            self.scl = next;
        }
    }

    /// Records above the SCL (they wait for a hole below them to be filled).
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(n: u64) -> Lsn {
        Lsn(n)
    }

    #[test]
    fn in_order_records_advance_the_scl() {
        let mut c = Chain::default();
        c.insert(l(3), l(0)).unwrap();
        c.insert(l(7), l(3)).unwrap();
        assert_eq!(c.scl(), l(7));
    }

    #[test]
    fn holes_hold_the_scl_until_filled() {
        let mut c = Chain::default();
        c.insert(l(10), l(5)).unwrap();
        c.insert(l(12), l(10)).unwrap();
        assert_eq!(c.scl(), l(0));
        c.insert(l(2), l(0)).unwrap();
        assert_eq!(c.scl(), l(2));
        assert_eq!(c.waiting(), 2);
        c.insert(l(5), l(2)).unwrap();
        assert_eq!(c.scl(), l(12));
        assert_eq!(c.waiting(), 0);
    }

    #[test]
    fn conflicting_backlinks_are_refused() {
        let mut c = Chain::default();
        c.insert(l(1), l(0)).unwrap();
        c.insert(l(2), l(1)).unwrap();
        assert!(c.insert(l(3), l(1)).is_err(), "2 already follows 1");
        c.insert(l(9), l(5)).unwrap();
        assert_eq!(
            c.insert(l(8), l(5)),
            Err(ChainError::Conflict {
                lsn: l(8),
                prev: l(5),
                existing: l(9)
            })
        );
    }

    #[test]
    fn truncation_drops_records_above_and_lowers_the_scl() {
        let mut c = Chain::default();
        for (lsn, prev) in [(1, 0), (2, 1), (3, 2), (4, 3)] {
            c.insert(l(lsn), l(prev)).unwrap();
        }
        c.insert(l(9), l(6)).unwrap();
        c.truncate(l(2), l(2));
        assert_eq!(c.scl(), l(2));
        assert_eq!(c.waiting(), 0);
        // The new writer continues the chain from the last kept record.
        c.insert(l(10), l(2)).unwrap();
        assert_eq!(c.scl(), l(10));
    }
}
