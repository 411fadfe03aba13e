//! logdb config store (DESIGN.md §8): the small, strongly consistent brain that hands out writer
//! epochs and decides where segments live.
//!
//! This crate holds the replicated state machine — every operation is one [`Command`] applied in
//! one place ([`State::apply`]), deterministic (time comes in the command, stamped by the leader),
//! so raft can replay it on every member. Raft itself (openraft), persistence and the gRPC API
//! wrap this state machine (issue 4, in progress).

pub mod command;
pub mod model;
pub mod placement;
pub mod state;

pub use command::{Command, Response};
pub use model::{Member, NodeInfo, ProtectionGroup, Volume, VolumeSpec};
pub use state::{ConfigError, State};
