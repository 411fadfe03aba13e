//! A storage node tells the config store it exists (zone, address, capacity) and keeps telling
//! it is alive: placement only uses nodes that heartbeated recently. Runs in the background; a
//! config store that is away only delays this, it never stops the node from serving.

use std::time::Duration;

use logdb_config_store::api::proto;
use logdb_config_store::client::ConfigClient;

pub struct Registration {
    pub node_id: String,
    pub zone: String,
    pub address: String,
    pub capacity_bytes: u64,
    pub interval: Duration,
    /// The storage pool this node serves ("" = volumes without a pool).
    pub pool: String,
}

pub async fn run(client: ConfigClient, me: Registration) {
    let mut registered = false;
    let mut failing = false;
    loop {
        let result = if registered {
            let req = proto::HeartbeatRequest {
                id: me.node_id.clone(),
            };
            client
                .call(|mut c| {
                    let r = req.clone();
                    async move { c.heartbeat(r).await }
                })
                .await
        } else {
            let req = proto::RegisterNodeRequest {
                id: me.node_id.clone(),
                zone: me.zone.clone(),
                address: me.address.clone(),
                capacity_bytes: me.capacity_bytes,
                pool: me.pool.clone(),
            };
            client
                .call(|mut c| {
                    let r = req.clone();
                    async move { c.register_node(r).await }
                })
                .await
        };
        match result {
            Ok(_) => {
                if !registered {
                    tracing::info!(node = %me.node_id, zone = %me.zone, address = %me.address, "registered with the config store");
                }
                registered = true;
                failing = false;
            }
            Err(e) => {
                // An unknown node (the store lost or never had it) registers again.
                if e.code() == tonic::Code::InvalidArgument {
                    registered = false;
                }
                if !failing {
                    tracing::warn!(error = %e.message(), "config store unreachable; retrying");
                }
                failing = true;
            }
        }
        tokio::time::sleep(me.interval).await;
    }
}
