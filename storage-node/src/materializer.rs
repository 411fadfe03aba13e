//! The background coalescer (DESIGN.md §5): applies pending records to page versions a round at a
//! time, and moves each segment's retention horizon so old log files and versions are freed. Runs
//! off the request path: a write is acknowledged once durable, never waiting for this loop.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::node::Node;
use crate::segment::now_ms;

#[derive(Clone, Copy, Debug)]
pub struct MaterializerConfig {
    pub interval: Duration,
    pub gc_interval: Duration,
}

/// Runs until `shutdown` turns true.
pub async fn run(node: Arc<Node>, cfg: MaterializerConfig, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_gc = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            return;
        }
        let gc = last_gc.elapsed() >= cfg.gc_interval;
        if gc {
            last_gc = tokio::time::Instant::now();
        }
        let node2 = Arc::clone(&node);
        let done = tokio::task::spawn_blocking(move || round(&node2, gc)).await;
        if let Err(e) = done {
            tracing::error!(error = %e, "coalescing round panicked");
        }
    }
}

/// One pass over every segment: coalesce, and (when `gc`) collect garbage.
pub fn round(node: &Node, gc: bool) {
    for seg in node.segments() {
        match seg.coalesce() {
            Ok(out) => {
                node.metrics.records_coalesced.inc_by(out.records as u64);
            }
            Err(e) => {
                if e.is_corruption() {
                    node.metrics.corrupt_reads.inc();
                }
                tracing::error!(segment = %seg.key(), error = %e, "coalescing failed");
            }
        }
        if gc {
            if let Err(e) = seg.collect_garbage(now_ms()) {
                tracing::error!(segment = %seg.key(), error = %e, "garbage collection failed");
            }
        }
    }
}
