//! logdb's vocabulary, shared by the storage node, the compute node, the config store and the
//! operator: the numbers that must never be mixed up (`ids`), the redo record and its codec
//! (`record`), how a record changes a page (`page_apply`), and the storage protocol (`proto`).
//! Small and free of I/O, so every part can depend on it.

pub mod ids;
pub mod page_apply;
pub mod record;

pub use ids::{Epoch, Lsn, PageId, PgIndex, SegmentId, SegmentKey};

pub mod proto {
    tonic::include_proto!("logdb.storage.v1");
}
