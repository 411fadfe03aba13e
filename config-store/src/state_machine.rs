//! The raft state machine: applies committed [`Command`]s to the config [`State`] in log order,
//! and snapshots it as JSON. It lives in memory; every snapshot (built here or received from the
//! leader) is also written to disk before openraft may purge the log it covers, and a restart
//! starts from that snapshot and re-applies the committed log after it — so it comes back
//! exactly.

// openraft's error types are large and fixed by its traits.
#![allow(clippy::result_large_err)]

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageIOError,
    StoredMembership,
};
use tokio::sync::RwLock;

use crate::raft_types::{NodeId, Reply, StorageError, TypeConfig};
use crate::state::State;

#[derive(Default, Debug)]
struct Inner {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    state: State,
    snapshot: Option<(SnapshotMeta<NodeId, BasicNode>, Vec<u8>)>,
    snapshots_built: u64,
}

#[derive(Clone)]
pub struct StateMachine {
    inner: Arc<RwLock<Inner>>,
    /// Where the last snapshot is kept.
    path: Arc<PathBuf>,
    /// Bumped after every apply and snapshot install: watchers wake on it.
    changed: Arc<tokio::sync::watch::Sender<u64>>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: Vec<u8>,
}

impl StateMachine {
    /// Opens the state machine whose snapshot lives at `path` (none yet: an empty state).
    pub fn open(path: &Path) -> Result<Self, StorageError> {
        let mut inner = Inner::default();
        match std::fs::read(path) {
            Ok(raw) => {
                let file: SnapshotFile = serde_json::from_slice(&raw)
                    .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
                inner.state = serde_json::from_slice(&file.data)
                    .map_err(|e| StorageIOError::read_snapshot(Some(file.meta.signature()), &e))?;
                inner.last_applied = file.meta.last_log_id;
                inner.membership = file.meta.last_membership.clone();
                inner.snapshot = Some((file.meta, file.data));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StorageIOError::read_snapshot(None, &e).into()),
        }
        Ok(StateMachine {
            inner: Arc::new(RwLock::new(inner)),
            path: Arc::new(path.to_path_buf()),
            changed: Arc::new(tokio::sync::watch::Sender::new(0)),
        })
    }

    fn persist(
        &self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        data: &[u8],
    ) -> Result<(), StorageError> {
        let file = SnapshotFile {
            meta: meta.clone(),
            data: data.to_vec(),
        };
        let raw = serde_json::to_vec(&file)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        logdb_common::durable_file::write(&self.path, &raw)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e).into())
    }

    /// Resolves at the next change of the state (for watch streams).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// A copy of the current state (reads on this member).
    pub async fn state(&self) -> State {
        self.inner.read().await.state.clone()
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let mut inner = self.inner.write().await;
        let data =
            serde_json::to_vec(&inner.state).map_err(|e| StorageIOError::read_state_machine(&e))?;
        inner.snapshots_built += 1;
        let snapshot_id = match inner.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, inner.snapshots_built),
            None => format!("--{}", inner.snapshots_built),
        };
        let meta = SnapshotMeta {
            last_log_id: inner.last_applied,
            last_membership: inner.membership.clone(),
            snapshot_id,
        };
        self.persist(&meta, &data)?;
        inner.snapshot = Some((meta.clone(), data.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError> {
        let inner = self.inner.read().await;
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Reply>, StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + openraft::OptionalSend,
    {
        let mut inner = self.inner.write().await;
        let mut replies = Vec::new();
        for entry in entries {
            inner.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => replies.push(Reply(Ok(crate::Response::Done))),
                EntryPayload::Normal(cmd) => replies.push(Reply(inner.state.apply(cmd))),
                EntryPayload::Membership(m) => {
                    inner.membership = StoredMembership::new(Some(entry.log_id), m);
                    replies.push(Reply(Ok(crate::Response::Done)));
                }
            }
        }
        drop(inner);
        self.changed.send_modify(|v| *v += 1);
        Ok(replies)
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let state: State = serde_json::from_slice(&data)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        self.persist(meta, &data)?;
        let mut inner = self.inner.write().await;
        inner.state = state;
        inner.last_applied = meta.last_log_id;
        inner.membership = meta.last_membership.clone();
        inner.snapshot = Some((meta.clone(), data));
        drop(inner);
        self.changed.send_modify(|v| *v += 1);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let inner = self.inner.read().await;
        Ok(inner.snapshot.as_ref().map(|(meta, data)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(Cursor::new(data.clone())),
        }))
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }
}
