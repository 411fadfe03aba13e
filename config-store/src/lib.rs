//! logdb config store (DESIGN.md §8): the small, strongly consistent brain that hands out writer
//! epochs and decides where segments live.
//!
//! Every operation is one [`Command`] applied in one place ([`State::apply`]), deterministic
//! (time comes in the command, stamped by the leader), so raft (openraft: `raft_types`,
//! `log_store` on redb, `state_machine`, `network` over gRPC, `member`) replays it identically on
//! every member; `api` is the client-facing gRPC service (`logdb.config.v1`).

pub mod api;
pub mod client;
pub mod command;
pub mod log_store;
pub mod member;
pub mod model;
pub mod network;
pub mod placement;
pub mod raft_types;
pub mod state;
pub mod state_machine;

pub use command::{Command, Response};
pub use model::{Member, NodeInfo, ProtectionGroup, Volume, VolumeSpec};
pub use state::{ConfigError, State};
