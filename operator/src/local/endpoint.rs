//! The two stable PostgreSQL endpoints of a local volume, as Kubernetes gives them by Services
//! `<name>-rw` and `<name>-ro`: each client connection is forwarded to the compute node that is
//! the writer at that moment (read-write) or to the next replica in turn (read-only, the writer
//! when there is none). A failover moves the writer; the endpoint stays.

use std::sync::atomic::{AtomicUsize, Ordering};

use logdb_config_store::member::Member;
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    ReadWrite,
    ReadOnly,
}

/// Where a new connection to `endpoint` goes now, per the config store's view of `volume`.
pub async fn target(
    member: &Member,
    volume: &str,
    endpoint: Endpoint,
    turn: &AtomicUsize,
) -> Option<String> {
    let state = member.state().await;
    let v = state.volumes.get(volume)?;
    let writer = v.writer.as_ref().and_then(|w| v.computes.get(w));
    match endpoint {
        Endpoint::ReadWrite => writer.map(|c| c.pg_address.clone()),
        Endpoint::ReadOnly => {
            let replicas: Vec<&String> = v
                .computes
                .values()
                .filter(|c| Some(&c.id) != v.writer.as_ref())
                .map(|c| &c.pg_address)
                .collect();
            if replicas.is_empty() {
                return writer.map(|c| c.pg_address.clone());
            }
            let n = turn.fetch_add(1, Ordering::Relaxed);
            Some(replicas[n % replicas.len()].clone())
        }
    }
}

/// Forwards every connection accepted on `listener` to `target()`'s answer at that moment.
pub async fn serve<F, Fut>(listener: TcpListener, target: F)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Option<String>> + Send,
{
    let target = std::sync::Arc::new(target);
    loop {
        let Ok((mut client, _)) = listener.accept().await else {
            continue;
        };
        let target = std::sync::Arc::clone(&target);
        tokio::spawn(async move {
            let addr = target().await;
            drop(target);
            let Some(addr) = addr else {
                tracing::warn!("no compute node to forward to yet; closing the connection");
                return;
            };
            match TcpStream::connect(&addr).await {
                Ok(mut server) => {
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
                Err(e) => tracing::warn!(%addr, error = %e, "compute node unreachable"),
            }
        });
    }
}
