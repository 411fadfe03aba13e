//! Growth (DESIGN.md §8): the writer tells the config store how much of the volume it uses — the
//! committed size, or more if an open transaction already reaches further — and the store adds
//! as many protection groups as keep that under 80% of allocated (up to maxSize). The writer,
//! watching its volume, starts shipping to each new PG's six segments; a write that reaches a
//! page before its PG is there waits for it (`Shipper::wait_for_pg`). A report goes out every
//! interval and at once when a transaction nears the end of the allocated pages.

use std::sync::Arc;
use std::time::Duration;

use logdb_config_store::api::proto;
use logdb_config_store::client::ConfigClient;
use logdb_config_store::state::GROWTH_THRESHOLD;

use crate::layout::Layout;
use crate::vfs::Engine;

/// Reports used bytes every `interval`.
pub async fn report_usage(
    client: Arc<ConfigClient>,
    engine: Arc<Engine>,
    volume: String,
    interval: Duration,
) {
    let (mut last, mut allocated) = (u64::MAX, u64::MAX);
    loop {
        let wanted = engine
            .writer()
            .map_or(0, |s| s.wanted_pages() * engine.page_size as u64);
        let used = engine.used_bytes().max(wanted);
        // Reported again while it still asks for growth: a PG that could not be placed yet
        // (its pods are coming) is placed at a later report.
        let wants_growth = used as f64 > GROWTH_THRESHOLD * allocated as f64;
        if used != last || wants_growth {
            let req = proto::ReportUsageRequest {
                volume: volume.clone(),
                used_bytes: used,
            };
            match client
                .call(|mut c| {
                    let r = req.clone();
                    async move { c.report_usage(r).await }
                })
                .await
            {
                Ok(r) => {
                    last = used;
                    allocated = r.allocated_bytes;
                    if r.grown {
                        tracing::info!(
                            used,
                            allocated = r.allocated_bytes,
                            "config store grew the volume"
                        );
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e.message(), "reporting usage to the config store failed")
                }
            }
        }
        match engine.writer() {
            Some(s) => {
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = s.growth_wanted() => {}
                }
            }
            None => tokio::time::sleep(interval).await,
        }
    }
}

/// Follows the volume in the config store: the writer ships to every PG it gains, a replica
/// reads from them; `on_change` sees every version of the volume (role changes).
pub async fn follow_volume<F>(
    client: Arc<ConfigClient>,
    engine: Arc<Engine>,
    volume: String,
    on_change: F,
) where
    F: Fn(&proto::Volume) + Send + 'static,
{
    loop {
        let stream = client
            .call(|mut c| {
                let name = volume.clone();
                async move { c.watch_volume(proto::VolumeRef { name }).await }
            })
            .await;
        let mut stream = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e.message(), "watching the volume failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Ok(Some(v)) = stream.message().await {
            let layout = match Layout::from_config(&v) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, "config store sent an unusable layout");
                    continue;
                }
            };
            on_change(&v);
            let Some(shipper) = engine.writer() else {
                if let Some(r) = engine.replica() {
                    r.set_layout(layout);
                }
                continue;
            };
            shipper.follow_addresses(&layout);
            while shipper.pg_count() < layout.pgs.len() {
                let k = shipper.pg_count();
                if let Err(e) = shipper.add_pg(&layout.pgs[k]).await {
                    tracing::warn!(pg = k, error = %e, "cannot ship to the new PG yet; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
