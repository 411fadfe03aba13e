//! Where a protection group's six segments go: two healthy nodes in each of the volume's three
//! zones, six distinct nodes, the least loaded first (ties by node id, so every raft member picks
//! the same).

use std::collections::BTreeMap;

use crate::model::{Member, NodeInfo};

/// A node is healthy when it heartbeated within this window.
pub const HEALTH_WINDOW_MS: u64 = 15_000;

pub fn healthy(node: &NodeInfo, now_ms: u64) -> bool {
    now_ms.saturating_sub(node.last_heartbeat_ms) <= HEALTH_WINDOW_MS
}

/// Picks `per_zone` nodes in each zone, skipping `exclude`, by ascending load (segments held).
pub fn place(
    zones: &[String],
    per_zone: usize,
    nodes: &BTreeMap<String, NodeInfo>,
    load: &BTreeMap<String, usize>,
    exclude: &[String],
    now_ms: u64,
) -> Result<Vec<Member>, String> {
    let mut members = Vec::new();
    for zone in zones {
        let mut candidates: Vec<&NodeInfo> = nodes
            .values()
            .filter(|n| &n.zone == zone && healthy(n, now_ms) && !exclude.contains(&n.id))
            .collect();
        if candidates.len() < per_zone {
            return Err(format!(
                "zone {zone} has {} healthy storage node(s) available, {per_zone} needed",
                candidates.len()
            ));
        }
        candidates.sort_by_key(|n| (load.get(&n.id).copied().unwrap_or(0), n.id.clone()));
        members.extend(candidates.into_iter().take(per_zone).map(|n| Member {
            node_id: n.id.clone(),
            zone: n.zone.clone(),
            address: n.address.clone(),
        }));
    }
    Ok(members)
}
