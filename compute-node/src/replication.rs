//! The record feed between the writer and its replicas (`logdb.replication.v1`): the writer
//! serves `Subscribe` from its shipper's feed; a replica finds the writer in the config store,
//! subscribes, and applies each batch. A replica that falls too far behind is cut off, resubscribes
//! and starts from the current state with an empty pool — reads then come from storage.

use std::sync::Arc;
use std::time::Duration;

use logdb_config_store::api::proto::VolumeRef;
use logdb_config_store::client::ConfigClient;
use logdb_types::record::RedoRecord;
use logdb_types::{Epoch, Lsn};
use tokio::net::TcpListener;
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status, Streaming};

use crate::replica::{Batch, Replica};
use crate::shipper::{FeedBatch, Shipper};
use crate::vfs::Engine;

pub mod proto {
    tonic::include_proto!("logdb.replication.v1");
}

/// The writer side: one feed per subscriber.
pub struct FeedService {
    shipper: Arc<Shipper>,
}

pub fn encode(b: &FeedBatch) -> proto::FeedBatch {
    proto::FeedBatch {
        epoch: b.epoch.0,
        vdl: b.vdl.0,
        vdl_time_us: b.vdl_time_us,
        records: b
            .records
            .iter()
            .map(|r| {
                let mut out = Vec::with_capacity(r.encoded_len());
                r.encode_into(&mut out);
                out
            })
            .collect(),
        pg_tails: b.pg_tails.iter().map(|l| l.0).collect(),
        scls: b
            .scls
            .iter()
            .map(|(segment, scl)| proto::SegmentScl {
                segment: segment.clone(),
                scl: scl.0,
            })
            .collect(),
    }
}

/// A feed batch with every record decoded and its checksum verified.
pub fn decode(p: proto::FeedBatch) -> Result<Batch, String> {
    let records = p
        .records
        .iter()
        .map(|bytes| RedoRecord::decode(bytes).map_err(|e| format!("feed record: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Batch {
        epoch: Epoch(p.epoch),
        vdl: Lsn(p.vdl),
        vdl_time_us: p.vdl_time_us,
        records,
        pg_tails: p.pg_tails.into_iter().map(Lsn).collect(),
        scls: p
            .scls
            .into_iter()
            .map(|s| (s.segment, Lsn(s.scl)))
            .collect(),
    })
}

#[tonic::async_trait]
impl proto::replication_server::Replication for FeedService {
    type SubscribeStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<proto::FeedBatch, Status>> + Send + 'static>,
    >;

    async fn subscribe(
        &self,
        r: Request<proto::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        logdb_common::peer_tls::authorize_for(
            &r,
            "the replication feed",
            &[logdb_common::peer_tls::Role::Compute],
            &self.shipper.layout().volume,
        )?;
        if let Some(why) = self.shipper.fenced() {
            return Err(Status::failed_precondition(format!(
                "this writer was fenced ({why}); follow the new writer"
            )));
        }
        let replica = r.into_inner().replica_id;
        tracing::info!(%replica, "replica subscribed to the feed");
        let (first, mut rx) = self.shipper.subscribe_feed();
        let (tx, out) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            if tx.send(Ok(encode(&first))).await.is_err() {
                return;
            }
            loop {
                let msg = match rx.recv().await {
                    Ok(b) => Ok(encode(&b)),
                    Err(RecvError::Lagged(n)) => Err(Status::resource_exhausted(format!(
                        "replica {replica} fell {n} batches behind the feed; resubscribe"
                    ))),
                    Err(RecvError::Closed) => return,
                };
                let end = msg.is_err();
                if tx.send(msg).await.is_err() || end {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out),
        )))
    }
}

/// Serves the feed of `shipper` on `listener` until the process ends; `Err` if its TLS cannot
/// be set up.
pub fn serve(listener: TcpListener, shipper: Arc<Shipper>) -> Result<(), tonic::transport::Error> {
    let svc = proto::replication_server::ReplicationServer::new(FeedService { shipper })
        .max_encoding_message_size(256 << 20);
    let mut server = logdb_common::peer_tls::transport().server()?;
    tokio::spawn(async move {
        let incoming = logdb_common::grpc_listener::incoming(listener);
        if let Err(e) = server.add_service(svc).serve_with_incoming(incoming).await {
            tracing::error!(error = %e, "feed server stopped");
        }
    });
    Ok(())
}

/// Where the volume's writer serves its feed, per the config store (`None`: no writer yet).
pub async fn writer_feed_address(
    client: &ConfigClient,
    volume: &str,
) -> Result<Option<String>, Status> {
    let v = client
        .call(|mut c| {
            let name = volume.to_string();
            async move { c.get_volume(VolumeRef { name }).await }
        })
        .await?;
    Ok(v.computes
        .iter()
        .find(|c| c.id == v.writer && !c.replication_address.is_empty())
        .map(|c| c.replication_address.clone()))
}

/// Subscribes to the feed at `address`; answers the first batch and the rest of the stream.
pub async fn subscribe(
    address: &str,
    replica_id: &str,
) -> Result<(Batch, Streaming<proto::FeedBatch>), String> {
    let channel = logdb_common::peer_tls::endpoint(address)
        .map_err(|e| format!("the writer's feed address {address}: {e}"))?
        .connect()
        .await
        .map_err(|e| format!("connecting to the writer's feed at {address}: {e}"))?;
    let mut client = proto::replication_client::ReplicationClient::new(channel)
        .max_decoding_message_size(256 << 20);
    let mut stream = client
        .subscribe(proto::SubscribeRequest {
            replica_id: replica_id.to_string(),
        })
        .await
        .map_err(|e| format!("subscribing at {address}: {}", e.message()))?
        .into_inner();
    let first = stream
        .message()
        .await
        .map_err(|e| format!("feed at {address}: {}", e.message()))?
        .ok_or_else(|| format!("feed at {address} ended at once"))?;
    Ok((decode(first)?, stream))
}

/// Subscribes to the current writer's feed, waiting for one to exist.
pub async fn subscribe_to_writer(
    client: &ConfigClient,
    volume: &str,
    replica_id: &str,
) -> (Batch, Streaming<proto::FeedBatch>) {
    let mut logged = false;
    loop {
        let why = match writer_feed_address(client, volume).await {
            Ok(Some(addr)) => match subscribe(&addr, replica_id).await {
                Ok(s) => return s,
                Err(e) => e,
            },
            Ok(None) => format!("volume {volume} has no writer yet"),
            Err(e) => format!("config store: {}", e.message()),
        };
        if !logged {
            tracing::warn!(reason = %why, "waiting for the writer's feed");
            logged = true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Applies the feed for as long as the process runs, resubscribing (to whichever compute is the
/// writer by then) whenever it breaks.
pub async fn follow(
    client: Arc<ConfigClient>,
    volume: String,
    replica_id: String,
    engine: Arc<Engine>,
    replica: Arc<Replica>,
    mut stream: Streaming<proto::FeedBatch>,
) {
    loop {
        loop {
            let batch = match stream.message().await {
                Ok(Some(b)) => b,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e.message(), "feed broke; resubscribing");
                    break;
                }
            };
            let batch = match decode(batch) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "bad feed batch; resubscribing");
                    break;
                }
            };
            if !apply(&engine, &replica, batch, false).await {
                return;
            }
        }
        let (first, s) = subscribe_to_writer(&client, &volume, &replica_id).await;
        tracing::info!(vdl = %first.vdl, epoch = %first.epoch, "following the writer's feed");
        if !apply(&engine, &replica, first, true).await {
            return;
        }
        stream = s;
    }
}

async fn apply(engine: &Arc<Engine>, replica: &Arc<Replica>, batch: Batch, fresh: bool) -> bool {
    let (e, r) = (Arc::clone(engine), Arc::clone(replica));
    tokio::task::spawn_blocking(move || r.apply(&e, batch, fresh))
        .await
        .is_ok()
}
