//! logdb compute node: the SQLite engine on the log-shipping VFS, the shared buffer pool, the
//! quorum log shipper, the replica log applier and the PostgreSQL wire server (DESIGN.md §3, §4,
//! §6, §11). Built by issue 3; until then this crate only pins the storage contract it ships to.

pub use logdb_storage::proto;
