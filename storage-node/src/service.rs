//! The gRPC edge: turns `logdb.storage.v1` requests into node and segment calls and every error
//! into a status code a client can act on — INVALID_ARGUMENT for bad input (nothing applied),
//! FAILED_PRECONDITION for a stale epoch, UNAVAILABLE for "not complete yet, retry", OUT_OF_RANGE
//! below the retention horizon, DATA_LOSS for a stored copy that failed its checksum,
//! RESOURCE_EXHAUSTED for a write refused while the data disk is full (retry once space returns).

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::node::{Node, NodeError};
use crate::page_store::{StoreError, Truncation};
use crate::segment::{Segment, SegmentError, SegmentStatus};
use crate::segment_log::LogError;
use logdb_common::peer_tls::{authorize, authorize_for, Role};
use logdb_types::proto::{self, storage_service_server::StorageService};
use logdb_types::record::RedoRecord;
use logdb_types::{Epoch, Lsn, PageId, PgIndex};

/// Per-record bytes counted toward the batch limit besides the payload (header, framing).
pub const RECORD_OVERHEAD: usize = 64;

pub struct StorageSvc {
    node: Arc<Node>,
}

impl StorageSvc {
    pub fn new(node: Arc<Node>) -> Self {
        StorageSvc { node }
    }
}

fn segment_status(e: SegmentError) -> Status {
    let msg = e.to_string();
    match e {
        SegmentError::Record { .. } | SegmentError::Invalid { .. } | SegmentError::Chain { .. } => {
            Status::invalid_argument(msg)
        }
        SegmentError::Fenced(_) | SegmentError::TruncateBelowMaterialized { .. } => {
            Status::failed_precondition(msg)
        }
        SegmentError::NotYetComplete { .. }
        | SegmentError::Store {
            source: StoreError::Reopening { .. },
            ..
        } => Status::unavailable(msg),
        SegmentError::BelowHorizon { .. } => Status::out_of_range(msg),
        SegmentError::Log {
            source: LogError::NoSpace(_),
            ..
        } => Status::resource_exhausted(msg),
        ref e if e.is_corruption() => Status::data_loss(msg),
        SegmentError::Store { .. } | SegmentError::Log { .. } => Status::internal(msg),
    }
}

fn node_status(e: NodeError) -> Status {
    match e {
        NodeError::Segment(e) => segment_status(e),
        NodeError::Invalid(_)
        | NodeError::UnknownSegment { .. }
        | NodeError::NoSegmentForPage { .. } => Status::invalid_argument(e.to_string()),
        NodeError::Exists(..) => Status::already_exists(e.to_string()),
        NodeError::DataDir { .. } => Status::internal(e.to_string()),
    }
}

pub fn state_proto(st: &SegmentStatus) -> proto::SegmentState {
    let d = &st.descriptor;
    proto::SegmentState {
        volume_id: d.volume.clone(),
        segment_id: d.segment.clone(),
        pg_index: d.pg.0,
        first_page: d.first_page,
        page_count: d.page_count,
        page_size: d.page_size,
        retention_seconds: d.retention_secs,
        scl: st.scl.0,
        highest_lsn: st.highest_lsn.0,
        epoch: st.epoch.0,
        materialized_lsn: st.materialized.0,
        horizon_lsn: st.horizon.0,
        pending_records: st.pending_records,
        last_committed_lsn: st.last_committed.0,
        highest_commit_lsn: st.highest_commit.0,
        highest_commit_timestamp_us: st.highest_commit_ts_us,
        retained_log_bytes: st.retained.log_bytes,
        retained_store_bytes: st.retained.store_bytes,
        // Truncations from before decision histories (no first LSN) were this segment's own.
        recovery_points: st
            .truncations
            .iter()
            .filter(|t| t.next > Lsn::ZERO)
            .map(|t| proto::RecoveryPoint {
                epoch: t.epoch.0,
                above_lsn: t.above.0,
                next_lsn: t.next.0,
            })
            .collect(),
    }
}

/// Runs blocking segment work (redb, log reads, fsync of control) off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("storage task failed: {e}")))?
}

/// Who may make which request, always for a volume its certificate works for: records,
/// epochs and truncations come only from a compute node (the writer, whose epoch the segment
/// checks as well), which also reads pages and records; a segment's state is seen by compute
/// nodes and config store members; the list of every segment of the node by members only.
const WRITERS: &[Role] = &[Role::Compute];
const READERS: &[Role] = &[Role::Compute];
const OBSERVERS: &[Role] = &[Role::Compute, Role::Config];

impl StorageSvc {
    fn segment(&self, volume: &str, segment: &str) -> Result<Arc<Segment>, Status> {
        self.node.segment(volume, segment).map_err(node_status)
    }
}

#[tonic::async_trait]
impl StorageService for StorageSvc {
    async fn write_records(
        &self,
        request: Request<proto::WriteRecordsRequest>,
    ) -> Result<Response<proto::WriteRecordsResponse>, Status> {
        authorize_for(
            &request,
            "WriteRecords",
            WRITERS,
            &request.get_ref().volume_id,
        )?;
        let req = request.into_inner();
        let limit = self.node.config().max_batch_bytes;
        let size: usize = req
            .records
            .iter()
            .map(|r| r.redo_data.len() + RECORD_OVERHEAD)
            .sum();
        if size > limit {
            return Err(Status::invalid_argument(format!(
                "batch of {} records ({size} bytes) exceeds the limit of {limit} bytes; split it",
                req.records.len()
            )));
        }
        let seg = self.segment(&req.volume_id, &req.segment_id)?;
        let mut records = Vec::with_capacity(req.records.len());
        let mut bytes = 0u64;
        for (i, r) in req.records.into_iter().enumerate() {
            bytes += r.redo_data.len() as u64;
            let rec = RedoRecord::from_proto(r).map_err(|e| {
                Status::invalid_argument(format!(
                    "segment {}: record {i} of the batch: {e}",
                    seg.key()
                ))
            })?;
            records.push(rec);
        }
        let count = records.len() as u64;
        // Run to the end even if the caller goes away (a timeout, a writer that died): the
        // records become durable and are indexed, so a resend finds them.
        let (epoch, vdl) = (Epoch(req.epoch), Lsn(req.last_committed_lsn));
        let st = tokio::spawn(async move { seg.write(epoch, records, vdl).await })
            .await
            .map_err(|e| Status::internal(format!("storage write task failed: {e}")))?
            .map_err(|e| {
                if matches!(
                    e,
                    SegmentError::Log {
                        source: LogError::NoSpace(_),
                        ..
                    }
                ) {
                    self.node.metrics.writes_refused_no_space.inc();
                }
                segment_status(e)
            })?;
        let m = &self.node.metrics;
        m.records_received.inc_by(count);
        m.bytes_received.inc_by(bytes);
        m.write_batches.inc();
        Ok(Response::new(proto::WriteRecordsResponse {
            success: true,
            acknowledged_lsn: st.scl.0,
            error_message: String::new(),
            highest_lsn: st.highest_lsn.0,
            epoch: st.epoch.0,
        }))
    }

    async fn read_page(
        &self,
        request: Request<proto::ReadPageRequest>,
    ) -> Result<Response<proto::ReadPageResponse>, Status> {
        authorize_for(&request, "ReadPage", READERS, &request.get_ref().volume_id)?;
        let req = request.into_inner();
        let page = PageId(req.page_id);
        let seg = self
            .node
            .segment_for_page(&req.volume_id, &req.segment_id, page)
            .map_err(node_status)?;
        let node = Arc::clone(&self.node);
        let read = blocking(move || {
            seg.read_page(page, Lsn(req.requested_lsn)).map_err(|e| {
                if e.is_corruption() {
                    node.metrics.corrupt_reads.inc();
                    tracing::error!(error = %e, "corrupt data refused");
                }
                segment_status(e)
            })
        })
        .await?;
        self.node.metrics.pages_read.inc();
        Ok(Response::new(proto::ReadPageResponse {
            page_id: page.0,
            materialized_lsn: read.lsn.0,
            page_data: read.data,
            scl: read.scl.0,
        }))
    }

    async fn create_segment(
        &self,
        request: Request<proto::CreateSegmentRequest>,
    ) -> Result<Response<proto::SegmentState>, Status> {
        authorize_for(
            &request,
            "CreateSegment",
            WRITERS,
            &request.get_ref().volume_id,
        )?;
        let r = request.into_inner();
        let node = Arc::clone(&self.node);
        let seg = blocking(move || {
            node.create_segment(
                &r.volume_id,
                &r.segment_id,
                PgIndex(r.pg_index),
                r.first_page,
                r.page_count,
                r.page_size,
                r.retention_seconds,
                Epoch(r.epoch),
            )
            .map_err(node_status)
        })
        .await?;
        Ok(Response::new(state_proto(&seg.status())))
    }

    async fn get_segment_state(
        &self,
        request: Request<proto::SegmentRef>,
    ) -> Result<Response<proto::SegmentState>, Status> {
        authorize_for(
            &request,
            "GetSegmentState",
            OBSERVERS,
            &request.get_ref().volume_id,
        )?;
        let r = request.into_inner();
        let seg = self.segment(&r.volume_id, &r.segment_id)?;
        Ok(Response::new(state_proto(&seg.status())))
    }

    async fn list_segments(
        &self,
        request: Request<proto::ListSegmentsRequest>,
    ) -> Result<Response<proto::ListSegmentsResponse>, Status> {
        authorize(&request, "ListSegments", &[Role::Config])?;
        let segments = self
            .node
            .segments()
            .iter()
            .map(|s| state_proto(&s.status()))
            .collect();
        Ok(Response::new(proto::ListSegmentsResponse { segments }))
    }

    async fn install_epoch(
        &self,
        request: Request<proto::InstallEpochRequest>,
    ) -> Result<Response<proto::SegmentState>, Status> {
        authorize_for(
            &request,
            "InstallEpoch",
            WRITERS,
            &request.get_ref().volume_id,
        )?;
        let r = request.into_inner();
        let seg = self.segment(&r.volume_id, &r.segment_id)?;
        let st = blocking(move || {
            seg.install_epoch("install epoch", Epoch(r.epoch))
                .map_err(segment_status)?;
            Ok(seg.status())
        })
        .await?;
        Ok(Response::new(state_proto(&st)))
    }

    async fn truncate(
        &self,
        request: Request<proto::TruncateRequest>,
    ) -> Result<Response<proto::SegmentState>, Status> {
        authorize_for(&request, "Truncate", WRITERS, &request.get_ref().volume_id)?;
        let r = request.into_inner();
        let seg = self.segment(&r.volume_id, &r.segment_id)?;
        let st = blocking(move || {
            if r.decisions.is_empty() {
                seg.truncate(Epoch(r.epoch), Lsn(r.above_lsn))
            } else {
                let history: Vec<Truncation> = r
                    .decisions
                    .iter()
                    .map(|d| Truncation {
                        epoch: Epoch(d.epoch),
                        above: Lsn(d.above_lsn),
                        next: Lsn(d.next_lsn),
                    })
                    .collect();
                seg.adopt_history(Epoch(r.epoch), &history)
            }
            .map_err(segment_status)?;
            Ok(seg.status())
        })
        .await?;
        Ok(Response::new(state_proto(&st)))
    }

    type StreamRecordsStream =
        Pin<Box<dyn Stream<Item = Result<proto::RedoLogRecord, Status>> + Send + 'static>>;

    async fn stream_records(
        &self,
        request: Request<proto::StreamRecordsRequest>,
    ) -> Result<Response<Self::StreamRecordsStream>, Status> {
        authorize_for(
            &request,
            "StreamRecords",
            READERS,
            &request.get_ref().volume_id,
        )?;
        let r = request.into_inner();
        let seg = self.segment(&r.volume_id, &r.segment_id)?;
        let headers_only = r.headers_only;
        let records = blocking(move || {
            seg.records_with_epochs(
                Lsn(r.from_lsn),
                Lsn(r.to_lsn),
                headers_only,
                r.with_predecessor,
            )
            .map_err(segment_status)
        })
        .await?;
        let stream = tokio_stream::iter(records.into_iter().map(move |(epoch, r)| {
            let mut p = r.to_proto();
            p.written_epoch = epoch.0;
            Ok(p)
        }));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn hold_history(
        &self,
        request: Request<proto::HoldHistoryRequest>,
    ) -> Result<Response<proto::HoldHistoryResponse>, Status> {
        authorize_for(
            &request,
            "HoldHistory",
            WRITERS,
            &request.get_ref().volume_id,
        )?;
        let r = request.into_inner();
        let seg = self.segment(&r.volume_id, &r.segment_id)?;
        let (horizon, expires) = blocking(move || {
            seg.hold_history(&r.name, Lsn(r.lsn), r.ttl_seconds, crate::segment::now_ms())
                .map_err(segment_status)
        })
        .await?;
        Ok(Response::new(proto::HoldHistoryResponse {
            horizon_lsn: horizon.0,
            expires_unix_ms: expires,
        }))
    }

    async fn inspect_pages(
        &self,
        request: Request<proto::InspectPagesRequest>,
    ) -> Result<Response<proto::InspectPagesResponse>, Status> {
        authorize_for(
            &request,
            "InspectPages",
            OBSERVERS,
            &request.get_ref().volume_id,
        )?;
        let r = request.into_inner();
        let seg = self.segment(&r.volume_id, &r.segment_id)?;
        let rows = blocking(move || seg.pages(r.limit as usize).map_err(segment_status)).await?;
        let pages = rows
            .into_iter()
            .map(|row| proto::PageEntry {
                page_id: row.page.0,
                base_lsn: row.base_lsn.0,
                state: if row.coalescing {
                    proto::PageState::Coalescing
                } else if row.pending.is_empty() {
                    proto::PageState::Clean
                } else {
                    proto::PageState::Pending
                } as i32,
                pending_lsns: row.pending.into_iter().map(|l| l.0).collect(),
                deltas_above_base: row.deltas_above_base,
            })
            .collect();
        Ok(Response::new(proto::InspectPagesResponse { pages }))
    }
}
