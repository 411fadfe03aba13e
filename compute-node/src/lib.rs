//! logdb compute node (DESIGN.md §3, §4, §11): SQLite on the `logdb` VFS, whose page writes
//! become redo records shipped to a 4/6 quorum of storage segments, a buffer pool shared by all
//! connections, and a PostgreSQL wire protocol server in front.
//!
//! In the order data moves: `pg_server` (SQL) → `sql` (SQLite) → `vfs` (overlay, commit point) →
//! `page_diff` (redo) → `shipper` (LSNs, quorum, VDL) → back to `pg_server`, which answers
//! COMMIT once VDL passed the transaction's commit LSN.

pub mod benchkit;
pub mod buffer_pool;
pub mod growth;
pub mod layout;
pub mod lsn_functions;
pub mod metrics;
pub mod page_diff;
pub mod page_read;
pub mod pg_auth;
pub mod pg_server;
pub mod quorum;
pub mod recovery;
pub mod recovery_sim;
pub mod replica;
pub mod replication;
pub mod session_settings;
pub mod shipper;
pub mod sql;
pub mod sql_guard;
pub mod tcp_proxy;
pub mod vfs;

pub use logdb_types::proto;
