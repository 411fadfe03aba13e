//! The background coalescer (DESIGN.md §5): moves pending records into the page-version store a
//! round at a time (deltas indexed, images where they pay), and moves each segment's retention
//! horizon at checkpoints so old deltas, images and log files are freed. Runs
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
                node.metrics.images_written.inc_by(out.images as u64);
            }
            Err(e) => {
                if e.is_corruption() {
                    node.metrics.corrupt_reads.inc();
                }
                tracing::error!(segment = %seg.key(), error = %e, "coalescing failed");
            }
        }
        if gc {
            match seg.collect_garbage(now_ms()) {
                Ok(out) => {
                    node.metrics.checkpoint_images.inc_by(out.images as u64);
                    node.metrics.deltas_freed.inc_by(out.deltas_removed as u64);
                }
                Err(e) => {
                    if e.is_corruption() {
                        node.metrics.corrupt_reads.inc();
                    }
                    tracing::error!(segment = %seg.key(), error = %e, "garbage collection failed");
                }
            }
        }
    }
}
