//! The state machine: every command applied in one place, every refusal a clear error.

use logdb_types::Epoch;
use std::collections::BTreeMap;

use crate::command::{Command, Response};
use crate::model::{ComputeInfo, NodeInfo, ProtectionGroup, Volume};
use crate::placement;

/// Growth starts when used bytes pass this share of allocated bytes.
pub const GROWTH_THRESHOLD: f64 = 0.8;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum ConfigError {
    /// Bad input: the message names the field and why (gRPC INVALID_ARGUMENT).
    #[error("{0}")]
    Invalid(String),
    #[error("unknown volume {0}")]
    UnknownVolume(String),
    #[error("volume {0} already exists")]
    VolumeExists(String),
    #[error("unknown storage node {0}")]
    UnknownNode(String),
    /// The caller's view is out of date (gRPC FAILED_PRECONDITION).
    #[error("ticket refused for volume {volume}: the caller knew epoch {known}, the volume is at epoch {current}")]
    StaleEpoch {
        volume: String,
        known: Epoch,
        current: Epoch,
    },
    /// Not enough healthy nodes for a placement (gRPC FAILED_PRECONDITION).
    #[error("cannot place volume {volume}: {reason}")]
    Placement { volume: String, reason: String },
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct State {
    pub volumes: BTreeMap<String, Volume>,
    pub nodes: BTreeMap<String, NodeInfo>,
}

fn valid_name(what: &str, name: &str) -> Result<(), ConfigError> {
    if crate::model::is_dns_label(name, 63) {
        Ok(())
    } else {
        Err(ConfigError::Invalid(format!(
            "{what} {name:?}: use 1-63 lowercase letters, digits and '-', not starting or ending with '-'"
        )))
    }
}

/// Bumps the volume's epoch and names its writer: how every ticket and failover ends.
fn name_writer(v: &mut Volume, writer: String) -> Response {
    v.epoch = v.epoch.next();
    v.writer = Some(writer);
    Response::Ticket {
        epoch: v.epoch,
        volume: v.clone(),
    }
}

impl State {
    /// Segments each node holds (placement spreads load by it).
    fn load(&self) -> BTreeMap<String, usize> {
        let mut load = BTreeMap::new();
        for v in self.volumes.values() {
            for pg in &v.pgs {
                for m in &pg.members {
                    *load.entry(m.node_id.clone()).or_default() += 1;
                }
            }
        }
        load
    }

    /// The storage nodes of `pool` (a volume is placed only there).
    fn pool(&self, pool: &str) -> BTreeMap<String, NodeInfo> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.pool == pool)
            .map(|(id, n)| (id.clone(), n.clone()))
            .collect()
    }

    fn volume_mut(&mut self, name: &str) -> Result<&mut Volume, ConfigError> {
        self.volumes
            .get_mut(name)
            .ok_or_else(|| ConfigError::UnknownVolume(name.to_string()))
    }

    fn new_pg(&self, volume: &Volume, now_ms: u64) -> Result<ProtectionGroup, ConfigError> {
        let k = volume.pgs.len();
        let mut nodes = self.pool(&volume.spec.pool);
        if !volume.spec.pool.is_empty() {
            // In a pool (a LogVolume's own StatefulSets), PG k lives on pod k of each set.
            let ordinal = format!("-{k}");
            nodes.retain(|id, _| id.ends_with(&ordinal));
        }
        let members = placement::place(&volume.spec.zones, 2, &nodes, &self.load(), &[], now_ms)
            .map_err(|reason| ConfigError::Placement {
                volume: volume.name.clone(),
                reason,
            })?;
        Ok(ProtectionGroup {
            index: k as u32,
            members,
            membership_epoch: 1,
        })
    }

    /// Applies one command. A refused command changes nothing.
    pub fn apply(&mut self, cmd: Command) -> Result<Response, ConfigError> {
        match cmd {
            Command::RegisterNode {
                id,
                zone,
                address,
                capacity_bytes,
                now_ms,
                pool,
            } => {
                valid_name("node id", &id)?;
                if zone.is_empty() || address.is_empty() {
                    return Err(ConfigError::Invalid(format!(
                        "node {id}: zone and address must not be empty"
                    )));
                }
                // A node is its id (and data dir), not its address: one that comes back
                // elsewhere moves every segment it holds with it, and the writers and replicas
                // watching those volumes follow.
                for v in self.volumes.values_mut() {
                    for m in v.pgs.iter_mut().flat_map(|pg| pg.members.iter_mut()) {
                        if m.node_id == id && m.address != address {
                            m.address = address.clone();
                        }
                    }
                }
                self.nodes.insert(
                    id.clone(),
                    NodeInfo {
                        id,
                        zone,
                        address,
                        capacity_bytes,
                        last_heartbeat_ms: now_ms,
                        pool,
                    },
                );
                Ok(Response::Done)
            }
            Command::Heartbeat { id, now_ms } => {
                let node = self
                    .nodes
                    .get_mut(&id)
                    .ok_or(ConfigError::UnknownNode(id))?;
                node.last_heartbeat_ms = node.last_heartbeat_ms.max(now_ms);
                Ok(Response::Done)
            }
            Command::CreateVolume { name, spec, now_ms } => {
                valid_name("volume name", &name)?;
                spec.validate().map_err(ConfigError::Invalid)?;
                if self.volumes.contains_key(&name) {
                    return Err(ConfigError::VolumeExists(name));
                }
                let mut volume = Volume {
                    name: name.clone(),
                    spec,
                    epoch: Epoch(0),
                    writer: None,
                    pgs: Vec::new(),
                    used_bytes: 0,
                    computes: Default::default(),
                };
                let pg = self.new_pg(&volume, now_ms)?;
                volume.pgs.push(pg);
                self.volumes.insert(name, volume.clone());
                Ok(Response::Volume(volume))
            }
            Command::DeleteVolume { name } => {
                self.volumes
                    .remove(&name)
                    .ok_or(ConfigError::UnknownVolume(name))?;
                Ok(Response::Done)
            }
            Command::AcquireTicket {
                volume,
                writer,
                known_epoch,
            } => {
                let v = self.volume_mut(&volume)?;
                if known_epoch != v.epoch {
                    return Err(ConfigError::StaleEpoch {
                        volume,
                        known: known_epoch,
                        current: v.epoch,
                    });
                }
                Ok(name_writer(v, writer))
            }
            Command::RegisterCompute {
                volume,
                id,
                pg_address,
                replication_address,
            } => {
                valid_name("compute id", &id)?;
                if pg_address.is_empty() {
                    return Err(ConfigError::Invalid(format!(
                        "compute {id}: pg_address must not be empty"
                    )));
                }
                let v = self.volume_mut(&volume)?;
                v.computes.insert(
                    id.clone(),
                    ComputeInfo {
                        id,
                        pg_address,
                        replication_address,
                    },
                );
                Ok(Response::Done)
            }
            Command::Failover { volume, target } => {
                let v = self.volume_mut(&volume)?;
                let candidates: Vec<&String> = v
                    .computes
                    .keys()
                    .filter(|id| Some(*id) != v.writer.as_ref())
                    .collect();
                let target = match target {
                    Some(t) if v.writer.as_ref() == Some(&t) => {
                        return Err(ConfigError::Invalid(format!(
                            "failover of volume {volume}: {t} is the writer already"
                        )))
                    }
                    Some(t) if !v.computes.contains_key(&t) => {
                        return Err(ConfigError::Invalid(format!(
                            "failover of volume {volume}: no replica {t:?} (replicas: {})",
                            if candidates.is_empty() {
                                "none".to_string()
                            } else {
                                candidates
                                    .iter()
                                    .map(|c| c.as_str())
                                    .collect::<Vec<_>>()
                                    .join(" ")
                            }
                        )))
                    }
                    Some(t) => t,
                    None => match candidates.first() {
                        Some(c) => c.to_string(),
                        None => {
                            return Err(ConfigError::Invalid(format!(
                                "failover of volume {volume}: it has no replica to promote"
                            )))
                        }
                    },
                };
                Ok(name_writer(v, target))
            }
            Command::ReportUsage {
                volume,
                used_bytes,
                now_ms,
            } => {
                let v = self
                    .volumes
                    .get(&volume)
                    .ok_or_else(|| ConfigError::UnknownVolume(volume.clone()))?;
                // Growth keeps used bytes under GROWTH_THRESHOLD of allocated: a report of a
                // large write yet to come (the writer reports what an open transaction will
                // need) gets every PG it needs at once, up to maxSize.
                let (segment, max) = (v.spec.segment_size, v.spec.max_size);
                let mut grown = Vec::new();
                loop {
                    let v = self.volume_mut(&volume)?;
                    let allocated = v.allocated_bytes();
                    if used_bytes as f64 <= GROWTH_THRESHOLD * allocated as f64
                        || allocated + segment > max
                    {
                        break;
                    }
                    // A growth that cannot be placed yet (its pods are still coming) is retried
                    // at the next report; the usage is recorded either way. Each new PG counts
                    // in the load the next one is placed by.
                    let Ok(pg) = self.new_pg(&self.volumes[&volume], now_ms) else {
                        break;
                    };
                    self.volume_mut(&volume)?.pgs.push(pg.clone());
                    grown.push(pg);
                }
                let v = self.volume_mut(&volume)?;
                v.used_bytes = used_bytes;
                Ok(Response::Usage {
                    allocated_bytes: v.allocated_bytes(),
                    grown,
                })
            }
            Command::ReplaceMember {
                volume,
                pg,
                old_node,
                new_node,
                now_ms,
            } => {
                let v = self
                    .volumes
                    .get(&volume)
                    .ok_or_else(|| ConfigError::UnknownVolume(volume.clone()))?;
                let group = v.pgs.get(pg as usize).ok_or_else(|| {
                    ConfigError::Invalid(format!(
                        "volume {volume} has no PG {pg} (it has {})",
                        v.pgs.len()
                    ))
                })?;
                let at = group
                    .members
                    .iter()
                    .position(|m| m.node_id == old_node)
                    .ok_or_else(|| {
                        ConfigError::Invalid(format!(
                            "node {old_node} is not a member of PG {pg} of volume {volume}"
                        ))
                    })?;
                let zone = group.members[at].zone.clone();
                let current: Vec<String> =
                    group.members.iter().map(|m| m.node_id.clone()).collect();
                let member = match new_node {
                    Some(id) => {
                        let n = self
                            .nodes
                            .get(&id)
                            .ok_or_else(|| ConfigError::UnknownNode(id.clone()))?;
                        if n.zone != zone {
                            return Err(ConfigError::Invalid(format!(
                                "node {id} is in zone {}, but the member it replaces is in zone {zone}",
                                n.zone
                            )));
                        }
                        if current.contains(&id) {
                            return Err(ConfigError::Invalid(format!(
                                "node {id} already holds PG {pg}"
                            )));
                        }
                        crate::model::Member {
                            node_id: n.id.clone(),
                            zone: n.zone.clone(),
                            address: n.address.clone(),
                        }
                    }
                    None => placement::place(
                        &[zone],
                        1,
                        &self.pool(&v.spec.pool),
                        &self.load(),
                        &current,
                        now_ms,
                    )
                    .map_err(|reason| ConfigError::Placement {
                        volume: volume.clone(),
                        reason,
                    })?
                    .remove(0),
                };
                let v = self.volume_mut(&volume)?;
                let group = &mut v.pgs[pg as usize];
                group.members[at] = member;
                group.membership_epoch += 1;
                Ok(Response::Replaced(group.clone()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::VolumeSpec;

    const GIB: u64 = 1 << 30;

    fn spec() -> VolumeSpec {
        VolumeSpec {
            page_size: 8192,
            segment_size: 10 * GIB,
            max_size: 40 * GIB,
            replicas: 2,
            retention_secs: 86_400,
            zones: vec!["a".into(), "b".into(), "c".into()],
            pool: String::new(),
        }
    }

    fn with_nodes(per_zone: usize) -> State {
        let mut s = State::default();
        for zone in ["a", "b", "c"] {
            for n in 1..=per_zone {
                s.apply(Command::RegisterNode {
                    id: format!("{zone}{n}"),
                    zone: zone.into(),
                    address: format!("10.0.0.{n}:7600"),
                    capacity_bytes: 1 << 40,
                    now_ms: 1_000,
                    pool: String::new(),
                })
                .unwrap();
            }
        }
        s
    }

    fn create(s: &mut State, name: &str) -> Volume {
        match s
            .apply(Command::CreateVolume {
                name: name.into(),
                spec: spec(),
                now_ms: 2_000,
            })
            .unwrap()
        {
            Response::Volume(v) => v,
            r => panic!("{r:?}"),
        }
    }

    #[test]
    fn a_node_that_registers_at_a_new_address_takes_its_segments_along() {
        let mut s = with_nodes(2);
        let v = create(&mut s, "v1");
        let member = v.pgs[0].members[0].clone();
        let moved = "10.9.9.9:1234".to_string();
        s.apply(Command::RegisterNode {
            id: member.node_id.clone(),
            zone: member.zone.clone(),
            address: moved.clone(),
            capacity_bytes: 1 << 40,
            now_ms: 3_000,
            pool: String::new(),
        })
        .unwrap();
        let after = &s.volumes["v1"];
        for pg in &after.pgs {
            for m in &pg.members {
                if m.node_id == member.node_id {
                    assert_eq!(m.address, moved);
                } else {
                    assert_ne!(m.address, moved, "{m:?}");
                }
            }
        }
        assert_eq!(s.nodes[&member.node_id].address, moved);
        // Nothing else about the volume changed: same members, same epochs.
        let ids = |v: &Volume| -> Vec<String> {
            v.pgs[0].members.iter().map(|m| m.node_id.clone()).collect()
        };
        assert_eq!(ids(after), ids(&v));
        assert_eq!(after.pgs[0].membership_epoch, v.pgs[0].membership_epoch);
    }

    #[test]
    fn placement_puts_two_members_in_each_zone_on_six_distinct_nodes() {
        let mut s = with_nodes(3);
        let v = create(&mut s, "v1");
        let pg = &v.pgs[0];
        assert_eq!(pg.members.len(), 6);
        let mut ids: Vec<&str> = pg.members.iter().map(|m| m.node_id.as_str()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 6);
        for zone in ["a", "b", "c"] {
            assert_eq!(pg.members.iter().filter(|m| m.zone == zone).count(), 2);
        }
        // The next volume prefers the nodes left out.
        let v2 = create(&mut s, "v2");
        assert!(v2.pgs[0].members.iter().any(|m| m.node_id.ends_with('3')));
    }

    #[test]
    fn too_few_healthy_nodes_is_a_clear_error() {
        let mut s = with_nodes(2);
        // c2 stops heartbeating; 20 s later it is unhealthy.
        for id in ["a1", "a2", "b1", "b2", "c1"] {
            s.apply(Command::Heartbeat {
                id: id.into(),
                now_ms: 21_000,
            })
            .unwrap();
        }
        let e = s
            .apply(Command::CreateVolume {
                name: "v1".into(),
                spec: spec(),
                now_ms: 21_000,
            })
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot place volume v1: zone c has 1 healthy storage node(s) available, 2 needed"
        );
        assert!(s.volumes.is_empty(), "nothing applied");
    }

    #[test]
    fn bad_specs_name_the_field() {
        let mut s = with_nodes(2);
        let cases: Vec<(VolumeSpec, &str)> = vec![
            (
                VolumeSpec {
                    page_size: 5000,
                    ..spec()
                },
                "spec.pageSize: 5000 is not a power of two between 4096 and 65536",
            ),
            (
                VolumeSpec {
                    page_size: 131072,
                    ..spec()
                },
                "spec.pageSize: 131072",
            ),
            (
                VolumeSpec {
                    segment_size: 4096,
                    ..spec()
                },
                "spec.segmentSize: 4096 bytes is smaller than one 8192-byte page",
            ),
            (
                VolumeSpec {
                    replicas: 16,
                    ..spec()
                },
                "spec.replicas: 16 is above the maximum of 15",
            ),
            (
                VolumeSpec {
                    zones: vec!["a".into(), "a".into(), "b".into()],
                    ..spec()
                },
                "spec.zones",
            ),
            (
                VolumeSpec {
                    zones: vec!["a".into(), "b".into()],
                    ..spec()
                },
                "spec.zones",
            ),
        ];
        for (bad, needle) in cases {
            let e = s
                .apply(Command::CreateVolume {
                    name: "v1".into(),
                    spec: bad,
                    now_ms: 2_000,
                })
                .unwrap_err();
            assert!(matches!(e, ConfigError::Invalid(_)), "{e:?}");
            assert!(e.to_string().contains(needle), "{e} lacks {needle}");
        }
        let e = s
            .apply(Command::AcquireTicket {
                volume: "nope".into(),
                writer: "w".into(),
                known_epoch: Epoch(0),
            })
            .unwrap_err();
        assert_eq!(e, ConfigError::UnknownVolume("nope".into()));
    }

    #[test]
    fn tickets_strictly_increase_and_stale_callers_are_refused() {
        let mut s = with_nodes(2);
        create(&mut s, "v1");
        let ticket = |s: &mut State, known| {
            s.apply(Command::AcquireTicket {
                volume: "v1".into(),
                writer: "w".into(),
                known_epoch: Epoch(known),
            })
        };
        let Response::Ticket { epoch, .. } = ticket(&mut s, 0).unwrap() else {
            panic!()
        };
        assert_eq!(epoch, Epoch(1));
        let Response::Ticket { epoch, volume } = ticket(&mut s, 1).unwrap() else {
            panic!()
        };
        assert_eq!((epoch, volume.writer.as_deref()), (Epoch(2), Some("w")));
        // Two callers who both knew epoch 1: the second loses.
        let e = ticket(&mut s, 1).unwrap_err();
        assert_eq!(
            e.to_string(),
            "ticket refused for volume v1: the caller knew epoch 1, the volume is at epoch 2"
        );
    }

    #[test]
    fn a_volume_of_a_pool_is_placed_only_on_that_pools_nodes() {
        let mut s = with_nodes(2);
        for zone in ["a", "b", "c"] {
            for n in 1..=2 {
                s.apply(Command::RegisterNode {
                    id: format!("orders-{zone}{n}-0"),
                    zone: zone.into(),
                    address: format!("10.0.1.{n}:7600"),
                    capacity_bytes: 1 << 40,
                    now_ms: 1_000,
                    pool: "orders".into(),
                })
                .unwrap();
            }
        }
        let mut pooled = spec();
        pooled.pool = "orders".into();
        let Response::Volume(v) = s
            .apply(Command::CreateVolume {
                name: "orders".into(),
                spec: pooled.clone(),
                now_ms: 2_000,
            })
            .unwrap()
        else {
            panic!()
        };
        assert!(v.pgs[0]
            .members
            .iter()
            .all(|m| m.node_id.starts_with("orders-")));
        // A volume without a pool never lands on a pool's nodes.
        let plain = create(&mut s, "plain");
        assert!(plain.pgs[0]
            .members
            .iter()
            .all(|m| !m.node_id.starts_with("orders-")));
        // A pool with no nodes cannot be placed.
        pooled.pool = "empty".into();
        let e = s
            .apply(Command::CreateVolume {
                name: "other".into(),
                spec: pooled,
                now_ms: 2_000,
            })
            .unwrap_err();
        assert!(matches!(e, ConfigError::Placement { .. }), "{e}");
    }

    #[test]
    fn failover_promotes_a_registered_replica_and_bumps_the_epoch() {
        let mut s = with_nodes(2);
        create(&mut s, "v1");
        let fail = |s: &mut State, target: Option<&str>| {
            s.apply(Command::Failover {
                volume: "v1".into(),
                target: target.map(String::from),
            })
        };
        assert_eq!(
            fail(&mut s, None).unwrap_err().to_string(),
            "failover of volume v1: it has no replica to promote"
        );
        for id in ["c0", "c1", "c2"] {
            s.apply(Command::RegisterCompute {
                volume: "v1".into(),
                id: id.into(),
                pg_address: format!("{id}:5432"),
                replication_address: format!("{id}:7000"),
            })
            .unwrap();
        }
        s.apply(Command::AcquireTicket {
            volume: "v1".into(),
            writer: "c0".into(),
            known_epoch: Epoch(0),
        })
        .unwrap();
        assert_eq!(
            fail(&mut s, Some("c9")).unwrap_err().to_string(),
            "failover of volume v1: no replica \"c9\" (replicas: c1 c2)"
        );
        assert_eq!(
            fail(&mut s, Some("c0")).unwrap_err().to_string(),
            "failover of volume v1: c0 is the writer already"
        );
        let Response::Ticket { epoch, volume } = fail(&mut s, Some("c2")).unwrap() else {
            panic!()
        };
        assert_eq!((epoch, volume.writer.as_deref()), (Epoch(2), Some("c2")));
        // The old writer's restart, knowing epoch 1, can take no ticket.
        assert!(s
            .apply(Command::AcquireTicket {
                volume: "v1".into(),
                writer: "c0".into(),
                known_epoch: Epoch(1),
            })
            .is_err());
        // auto: the first compute that is not the writer.
        let Response::Ticket { volume, .. } = fail(&mut s, None).unwrap() else {
            panic!()
        };
        assert_eq!(volume.writer.as_deref(), Some("c0"));
        assert_eq!(volume.computes["c1"].replication_address, "c1:7000");
    }

    #[test]
    fn growth_adds_one_pg_past_eighty_percent_up_to_the_maximum() {
        let mut s = with_nodes(2);
        create(&mut s, "v1");
        let usage = |s: &mut State, used| {
            s.apply(Command::ReportUsage {
                volume: "v1".into(),
                used_bytes: used,
                now_ms: 3_000,
            })
            .unwrap()
        };
        assert_eq!(
            usage(&mut s, 8 * GIB),
            Response::Usage {
                allocated_bytes: 10 * GIB,
                grown: vec![]
            }
        );
        let Response::Usage {
            allocated_bytes,
            grown,
        } = usage(&mut s, 8 * GIB + 1)
        else {
            panic!()
        };
        assert_eq!(allocated_bytes, 20 * GIB);
        assert_eq!(grown.iter().map(|pg| pg.index).collect::<Vec<_>>(), [1]);
        usage(&mut s, 17 * GIB);
        usage(&mut s, 25 * GIB);
        assert_eq!(s.volumes["v1"].pgs.len(), 4);
        // 40 GiB maximum reached: no fifth PG.
        let Response::Usage {
            allocated_bytes,
            grown,
        } = usage(&mut s, 39 * GIB)
        else {
            panic!()
        };
        assert_eq!((allocated_bytes, grown), (40 * GIB, vec![]));
    }

    #[test]
    fn a_report_of_a_large_write_to_come_grows_every_pg_it_needs_at_once() {
        let mut s = with_nodes(2);
        create(&mut s, "v1");
        // 25 GiB wanted: 30 GiB allocated would put it past 80% (24 GiB), 40 GiB does not —
        // three new PGs at once, up to the volume's 40 GiB maximum.
        let Response::Usage {
            allocated_bytes,
            grown,
        } = s
            .apply(Command::ReportUsage {
                volume: "v1".into(),
                used_bytes: 25 * GIB,
                now_ms: 3_000,
            })
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(allocated_bytes, 40 * GIB);
        assert_eq!(
            grown.iter().map(|pg| pg.index).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        // Past the maximum it stops there, and says so by growing nothing.
        let Response::Usage { grown, .. } = s
            .apply(Command::ReportUsage {
                volume: "v1".into(),
                used_bytes: 100 * GIB,
                now_ms: 4_000,
            })
            .unwrap()
        else {
            panic!()
        };
        assert!(grown.is_empty());
    }

    #[test]
    fn replacing_a_member_stays_in_its_zone_and_bumps_the_membership_epoch() {
        let mut s = with_nodes(3);
        let v = create(&mut s, "v1");
        let old = v.pgs[0]
            .members
            .iter()
            .find(|m| m.zone == "b")
            .unwrap()
            .node_id
            .clone();
        let Response::Replaced(pg) = s
            .apply(Command::ReplaceMember {
                volume: "v1".into(),
                pg: 0,
                old_node: old.clone(),
                new_node: None,
                now_ms: 3_000,
            })
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(pg.membership_epoch, 2);
        assert!(!pg.members.iter().any(|m| m.node_id == old));
        assert_eq!(pg.members.iter().filter(|m| m.zone == "b").count(), 2);
        let e = s
            .apply(Command::ReplaceMember {
                volume: "v1".into(),
                pg: 0,
                old_node: pg.members[0].node_id.clone(),
                new_node: Some("b1".into()),
                now_ms: 3_000,
            })
            .unwrap_err();
        assert!(e.to_string().contains("zone"), "{e}");
    }

    #[test]
    fn the_state_round_trips_through_json_for_snapshots() {
        let mut s = with_nodes(2);
        create(&mut s, "v1");
        let raw = serde_json::to_vec(&s).unwrap();
        assert_eq!(serde_json::from_slice::<State>(&raw).unwrap(), s);
    }
}
