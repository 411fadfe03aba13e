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
