//! Opening the volume as its writer (docs/DESIGN.md §5): fence a write quorum of every PG, scan
//! a read quorum, decide (`crate::recovery::decide`), have the decision adopted, bring lagging
//! segments up to their PG's tail, then start the senders.

use super::copy::copy_range;
use super::feed::FEED_CAPACITY;
use super::link::{answer_in_time, Link, RECOVERY_RPC_TIMEOUT};
use super::{ShipError, ShipState, Shipper, ShipperConfig};
use crate::layout::{Layout, SEGMENTS_PER_PG, WRITE_QUORUM};
use crate::metrics::ComputeMetrics;
use crate::page_read::client;
use crate::quorum::Quorum;
use crate::recovery::{self, Header, Point, SegmentScan};
use logdb_types::proto::{
    CreateSegmentRequest, InstallEpochRequest, RecoveryPoint, StreamRecordsRequest, TruncateRequest,
};
use logdb_types::record::FLAG_COMMIT;
use logdb_types::{Epoch, Lsn};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

impl Shipper {
    /// Opens the volume as its writer: creates missing segments, installs a new epoch on a write
    /// quorum of every PG (fencing any older writer), finds each PG's complete tail from a read
    /// quorum, brings lagging segments up to it, discards records above it, then starts one
    /// sender per segment.
    pub async fn open(
        layout: Layout,
        cfg: ShipperConfig,
        metrics: Arc<ComputeMetrics>,
    ) -> Result<Arc<Shipper>, ShipError> {
        let rec_err = |m: String| ShipError::Recovery(m);
        let mut links: Vec<Vec<Arc<Link>>> = Vec::new();
        for (k, pg) in layout.pgs.iter().enumerate() {
            let mut row = Vec::new();
            for (i, m) in pg.members.iter().enumerate() {
                row.push(Link::new(k, i, m)?);
            }
            links.push(row);
        }

        // 1. Create/open every segment; learn SCLs and epochs. Wait for a write quorum per PG.
        let deadline = Instant::now() + cfg.open_timeout;
        let mut states: Vec<Vec<Option<logdb_types::proto::SegmentState>>>;
        loop {
            states = Vec::new();
            for (k, row) in links.iter().enumerate() {
                let mut got = Vec::new();
                for link in row {
                    let req = CreateSegmentRequest {
                        volume_id: layout.volume.clone(),
                        segment_id: link.member.segment.clone(),
                        pg_index: k as u32,
                        first_page: k as u64 * layout.pages_per_pg,
                        page_count: layout.pages_per_pg,
                        page_size: layout.page_size,
                        retention_seconds: layout.retention_seconds,
                        epoch: 0,
                    };
                    let r = tokio::time::timeout(
                        Duration::from_secs(3),
                        client(&link.channel()).create_segment(req),
                    )
                    .await;
                    got.push(match r {
                        Ok(Ok(s)) => Some(s.into_inner()),
                        Ok(Err(e))
                            if e.code() == tonic::Code::AlreadyExists
                                || e.code() == tonic::Code::InvalidArgument =>
                        {
                            return Err(rec_err(format!(
                                "segment {} on {}: {}",
                                link.member.segment,
                                link.address(),
                                e.message()
                            )));
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(segment = %link.member.segment, error = %e, "segment not reachable");
                            None
                        }
                        Err(_) => None,
                    });
                }
                states.push(got);
            }
            let short: Vec<String> = states
                .iter()
                .enumerate()
                .filter(|(_, s)| s.iter().flatten().count() < WRITE_QUORUM)
                .map(|(k, s)| format!("PG {k}: {}/6", s.iter().flatten().count()))
                .collect();
            if short.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                return Err(rec_err(format!(
                    "no write quorum of segments reachable ({})",
                    short.join(", ")
                )));
            }
            tracing::warn!(missing = %short.join(", "), "waiting for a write quorum of storage nodes");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // 2. A new epoch above every one installed, on a write quorum of every PG.
        let seen = states
            .iter()
            .flatten()
            .flatten()
            .map(|s| s.epoch)
            .max()
            .unwrap_or(0);
        let epoch = if cfg.ticket {
            // A config store ticket is used as is: two writers never share an epoch.
            if seen >= cfg.min_epoch.0 {
                return Err(rec_err(format!(
                    "writer ticket epoch {} is not above epoch {seen} already installed on storage: a newer writer holds the volume",
                    cfg.min_epoch
                )));
            }
            cfg.min_epoch
        } else {
            Epoch(cfg.min_epoch.0.max(seen + 1))
        };
        for (k, row) in links.iter().enumerate() {
            let mut ok = 0;
            for (i, link) in row.iter().enumerate() {
                if states[k][i].is_none() {
                    continue;
                }
                let req = InstallEpochRequest {
                    volume_id: layout.volume.clone(),
                    segment_id: link.member.segment.clone(),
                    epoch: epoch.0,
                };
                match answer_in_time(client(&link.channel()).install_epoch(req)).await {
                    Ok(s) => {
                        ok += 1;
                        states[k][i] = Some(s.into_inner());
                    }
                    Err(e) => {
                        tracing::warn!(segment = %link.member.segment, error = %e.message(), "epoch install failed");
                        states[k][i] = None;
                    }
                }
            }
            if ok < WRITE_QUORUM {
                return Err(rec_err(format!(
                    "epoch {epoch} installed on only {ok}/6 segments of PG {k}"
                )));
            }
        }

        // 3. What every answering segment holds above what is known durable (headers only).
        let from = recovery::scan_start(
            states
                .iter()
                .flatten()
                .flatten()
                .map(|s| (Lsn(s.materialized_lsn), Lsn(s.last_committed_lsn))),
        );
        let mut scans: Vec<Vec<Option<SegmentScan>>> = Vec::new();
        for (k, row) in links.iter().enumerate() {
            let mut got = Vec::new();
            for (i, link) in row.iter().enumerate() {
                got.push(match &states[k][i] {
                    None => None,
                    Some(st) => match tokio::time::timeout(
                        RECOVERY_RPC_TIMEOUT,
                        scan_segment(&layout.volume, link, st, from),
                    )
                    .await
                    .unwrap_or_else(|_| Err("no answer in time".into()))
                    {
                        Ok(scan) => Some(scan),
                        Err(e) => {
                            tracing::warn!(segment = %link.member.segment, error = %e, "segment scan failed; treating it as unreachable");
                            None
                        }
                    },
                });
            }
            scans.push(got);
        }

        // 4. The decision: volume-wide VCL and VDL, each PG's tail, the history to adopt.
        let decision =
            recovery::decide(epoch, Lsn(from.0 - 1), &scans).map_err(|e| rec_err(e.to_string()))?;
        let history: Vec<RecoveryPoint> = decision
            .history
            .iter()
            .map(|p| RecoveryPoint {
                epoch: p.epoch.0,
                above_lsn: p.above.0,
                next_lsn: p.next.0,
            })
            .collect();
        let vdl = decision.vdl;

        // 5. The decision is adopted by a write quorum of every PG before anything is written
        // (every later recovery then sees it); segments that did not adopt it now adopt it
        // before their first record. Then lagging segments are brought up to their PG's tail.
        let mut seg_scl = Vec::new();
        for (k, row) in links.iter().enumerate() {
            let tail = decision.pg_tails[k];
            let mut adopted: Vec<(usize, Lsn)> = Vec::new();
            for (i, link) in row.iter().enumerate() {
                if scans[k][i].is_some() {
                    let req = TruncateRequest {
                        volume_id: layout.volume.clone(),
                        segment_id: link.member.segment.clone(),
                        epoch: epoch.0,
                        above_lsn: vdl.0,
                        decisions: history.clone(),
                    };
                    match answer_in_time(client(&link.channel()).truncate(req)).await {
                        Ok(st) => {
                            adopted.push((i, Lsn(st.into_inner().scl)));
                            continue;
                        }
                        Err(e) if e.code() == tonic::Code::FailedPrecondition => {
                            return Err(ShipError::Fenced(format!(
                                "segment {} refused this writer's recovery: {}",
                                link.member.segment,
                                e.message()
                            )));
                        }
                        Err(e) => {
                            tracing::warn!(segment = %link.member.segment, error = %e.message(), "adopting the recovery decision failed; will retry before shipping")
                        }
                    }
                }
                *link.pending_history.lock().expect("lock") = Some(history.clone());
            }
            if adopted.len() < WRITE_QUORUM {
                return Err(rec_err(format!(
                    "PG {k}: only {}/6 segments adopted the recovery decision (epoch {epoch}, VDL {vdl}); a write quorum is needed",
                    adopted.len()
                )));
            }
            for n in 0..adopted.len() {
                let (i, scl) = adopted[n];
                if scl >= tail {
                    continue;
                }
                let mut sources: Vec<(usize, Lsn)> = adopted
                    .iter()
                    .copied()
                    .filter(|(j, s)| *j != i && *s > scl)
                    .collect();
                sources.sort_by_key(|(_, s)| std::cmp::Reverse(*s));
                let mut now = scl;
                for (j, _) in sources {
                    match copy_range(&layout, &row[j], &row[i], Lsn(now.0 + 1), tail, epoch).await {
                        Ok(got) => now = now.max(got),
                        Err(e) => {
                            tracing::warn!(segment = %row[i].member.segment, from = %row[j].member.segment, error = %e, "could not bring segment up to the PG tail")
                        }
                    }
                    if now >= tail {
                        break;
                    }
                }
                adopted[n].1 = now;
            }
            let complete = adopted.iter().filter(|(_, s)| *s >= tail).count();
            if complete < WRITE_QUORUM {
                return Err(rec_err(format!(
                    "PG {k}: its tail {tail} is complete on only {complete}/6 segments after recovery; a write quorum is needed"
                )));
            }
            let mut scls = [Lsn::ZERO; SEGMENTS_PER_PG];
            for (i, scl) in adopted {
                scls[i] = scl.min(tail);
            }
            seg_scl.push(scls);
        }
        let pg_tail = decision.pg_tails.clone();
        let next_lsn = decision.next_lsn;
        let last_commit_ts = decision.last_commit_ts_us;
        tracing::info!(volume = %layout.volume, %epoch, vcl = %decision.vcl, base = %decision.base, "recovery decided");
        tracing::info!(volume = %layout.volume, %epoch, %next_lsn, %vdl, "volume opened for writing");

        let shipper = Arc::new(Shipper {
            epoch,
            state: Mutex::new(ShipState {
                quorum: Quorum::new(next_lsn, vdl, pg_tail.clone(), seg_scl),
                next_tx: 1,
                last_commit_ts,
                durable_tail: pg_tail,
                fenced: None,
                feed_pending: VecDeque::new(),
            }),
            vdl_tx: watch::Sender::new(vdl),
            acks_tx: watch::Sender::new(0),
            pg_count: watch::Sender::new(links.len()),
            wanted_pages: std::sync::atomic::AtomicU64::new(0),
            growth_wanted: tokio::sync::Notify::new(),
            growth_timeout: cfg.growth_timeout,
            links: std::sync::RwLock::new(links),
            lal: cfg.lal,
            backpressure_timeout: cfg.backpressure_timeout,
            max_batch_bytes: cfg.max_batch_bytes,
            queue_limit_bytes: cfg.queue_limit_bytes,
            metrics,
            layout,
            feed: tokio::sync::broadcast::channel(FEED_CAPACITY).0,
            history,
        });
        shipper.metrics.vdl.set(vdl.0 as i64);
        for row in shipper.links.read().expect("links").iter() {
            for link in row {
                tokio::spawn(Arc::clone(&shipper).send_loop(Arc::clone(link)));
            }
        }
        Ok(shipper)
    }
}

/// What one segment holds above its materialized LSN, for the recovery decision.
async fn scan_segment(
    volume: &str,
    link: &Link,
    st: &logdb_types::proto::SegmentState,
    from: Lsn,
) -> Result<SegmentScan, String> {
    let mut stream = client(&link.channel())
        .stream_records(StreamRecordsRequest {
            volume_id: volume.to_string(),
            segment_id: link.member.segment.clone(),
            from_lsn: from.0,
            to_lsn: 0,
            headers_only: true,
            with_predecessor: true,
        })
        .await
        .map_err(|e| e.message().to_string())?
        .into_inner();
    let mut headers = Vec::new();
    while let Some(r) = stream
        .message()
        .await
        .map_err(|e| e.message().to_string())?
    {
        headers.push(Header {
            lsn: Lsn(r.lsn),
            prev: Lsn(r.prev_lsn),
            epoch: Epoch(r.written_epoch),
            commit: r.flags & FLAG_COMMIT as u32 != 0,
            commit_ts_us: r.commit_timestamp_us,
            checksum: r.checksum,
        });
    }
    Ok(SegmentScan {
        scl: Lsn(st.scl),
        materialized: Lsn(st.materialized_lsn),
        last_committed: Lsn(st.last_committed_lsn),
        highest_lsn: Lsn(st.highest_lsn),
        highest_commit_ts_us: st.highest_commit_timestamp_us,
        points: st
            .recovery_points
            .iter()
            .map(|p| Point {
                epoch: Epoch(p.epoch),
                above: Lsn(p.above_lsn),
                next: Lsn(p.next_lsn),
            })
            .collect(),
        headers,
    })
}
