//! The raft type configuration of the config store, declared once: commands are [`Command`]s,
//! replies are the state machine's results, nodes are numbered and reached at an address.

use std::io::Cursor;

use crate::command::{Command, Response};
use crate::state::ConfigError;

/// What applying one command gave: the reply the proposer receives.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Reply(pub Result<Response, ConfigError>);

openraft::declare_raft_types!(
    /// The config store's raft types.
    pub TypeConfig:
        D = Command,
        R = Reply,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
);

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
