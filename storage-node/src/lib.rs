//! logdb storage node (DESIGN.md §5): receives redo records for the segments it holds, makes them
//! durable (group-commit fsync), tracks each segment's complete LSN along the backlink chain,
//! materializes page versions in the background and serves any page as of any retained LSN.
//!
//! Data moves through the modules in this order: `service` (gRPC) → `fencing` → `segment` →
//! `segment_log` (fsync) → `chain` (SCL) → `materializer` → `page_store` → `segment::read_page`.

pub mod acceptance;
pub mod chain;
pub mod control;
pub mod disk_space;
pub mod fencing;
pub mod frame;
pub mod image_policy;
pub mod materializer;
pub mod metrics;
pub mod node;
pub mod page_store;
pub mod registration;
pub mod segment;
pub mod segment_log;
pub mod service;
pub mod testkit;

// The vocabulary lives in `logdb-types`; these names keep the storage paths callers know.
pub use logdb_types::{ids as types, page_apply, proto, record};
