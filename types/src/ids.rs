//! Newtypes for the numbers that must never be mixed up (DESIGN.md §2): an LSN is not an epoch,
//! a page number is not a PG index. Defined once, used by every module and by the compute node.

use std::fmt;

macro_rules! number_newtype {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[derive(serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

number_newtype!(
    /// Log sequence number: allocated by the writer, strictly increasing over the volume; 0 is
    /// "nothing".
    Lsn(u64)
);
number_newtype!(
    /// Volume epoch from the config store: a writer's ticket. Storage rejects lower ones.
    Epoch(u64)
);
number_newtype!(
    /// A page number in the volume's page space.
    PageId(u64)
);
number_newtype!(
    /// Index of a protection group: PG k holds pages [k * pages_per_segment, (k+1) * ...).
    PgIndex(u32)
);

impl Lsn {
    pub const ZERO: Lsn = Lsn(0);
}

impl Epoch {
    /// The epoch after this one (the config store's next ticket).
    pub fn next(self) -> Epoch {
        Epoch(self.0 + 1)
    }
}

/// Identifies one segment on a node: the volume and the segment's name within it.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct SegmentKey {
    pub volume: String,
    pub segment: String,
}

impl fmt::Display for SegmentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.volume, self.segment)
    }
}

/// A segment's name within its volume: which PG it holds a copy of, on which storage node
/// (`pg<k>-<node id>`). Made in one place so that every part names a segment the same way.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct SegmentId(String);

impl SegmentId {
    /// The segment of PG `pg` on node `node_id`.
    pub fn of(pg: PgIndex, node_id: &str) -> SegmentId {
        SegmentId(format!("pg{}-{node_id}", pg.0))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }

    /// The PG a segment name says it holds (`None`: not a `pg<k>-<node>` name).
    pub fn pg(&self) -> Option<PgIndex> {
        let rest = self.0.strip_prefix("pg")?;
        let (k, node) = rest.split_once('-')?;
        (!node.is_empty())
            .then(|| k.parse().ok().map(PgIndex))
            .flatten()
    }
}

impl fmt::Display for SegmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<SegmentId> for String {
    fn from(s: SegmentId) -> String {
        s.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segment_id_names_its_pg_and_node() {
        let s = SegmentId::of(PgIndex(12), "prod-storage-3");
        assert_eq!(s.as_str(), "pg12-prod-storage-3");
        assert_eq!(s.pg(), Some(PgIndex(12)));
        assert_eq!(SegmentId("pgx-a".into()).pg(), None);
        assert_eq!(SegmentId("pg1-".into()).pg(), None);
    }
}
