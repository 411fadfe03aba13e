//! A client of the config store that finds the leader by itself: it tries the member it believes
//! leads, follows the `x-logdb-leader` hint of a follower's refusal, and moves on to the next
//! member when one is unreachable — so a leader change costs a retry, not an error.

use logdb_types::Epoch;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use tonic::{Code, Response, Status};

use crate::api::proto::config_service_client::ConfigServiceClient;
use crate::api::{proto, LEADER_HEADER};

pub struct ConfigClient {
    members: Vec<String>,
    leader: Mutex<Option<String>>,
    timeout: Duration,
    /// One channel per member, kept: a channel reconnects by itself, and a TLS handshake per
    /// call would cost more than the call.
    channels: Mutex<std::collections::HashMap<String, Channel>>,
}

fn channel(addr: &str) -> Result<Channel, Status> {
    Ok(logdb_common::peer_tls::endpoint(addr)
        .map_err(|e| Status::invalid_argument(format!("config store address {addr}: {e}")))?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect_lazy())
}

impl ConfigClient {
    fn channel(&self, addr: &str) -> Result<Channel, Status> {
        let mut channels = self.channels.lock().expect("channels lock");
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let c = channel(addr)?;
        channels.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// `members`: the addresses of the group's members.
    pub fn new(members: Vec<String>) -> Self {
        ConfigClient {
            members,
            leader: Mutex::new(None),
            timeout: Duration::from_secs(30),
            channels: Mutex::new(Default::default()),
        }
    }

    /// Runs `call` on the leader, retrying through leader changes for up to 30 s.
    pub async fn call<T, F, Fut>(&self, call: F) -> Result<T, Status>
    where
        F: Fn(ConfigServiceClient<Channel>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let deadline = Instant::now() + self.timeout;
        let mut next = 0usize;
        loop {
            let addr = self
                .leader
                .lock()
                .expect("leader lock")
                .clone()
                .unwrap_or_else(|| self.members[next % self.members.len()].clone());
            match call(ConfigServiceClient::new(self.channel(&addr)?)).await {
                Ok(r) => {
                    *self.leader.lock().expect("leader lock") = Some(addr);
                    return Ok(r.into_inner());
                }
                Err(s)
                    if s.code() == Code::Unavailable
                        || s.code() == Code::Unknown
                        || s.code() == Code::Cancelled =>
                {
                    let hint = s
                        .metadata()
                        .get(LEADER_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    *self.leader.lock().expect("leader lock") = hint.clone();
                    if hint.is_none() {
                        next += 1;
                    }
                    if Instant::now() > deadline {
                        return Err(Status::unavailable(format!(
                            "no config store leader reachable: {}",
                            s.message()
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(if hint.is_some() { 5 } else { 50 }))
                        .await;
                }
                Err(s) => return Err(s),
            }
        }
    }

    pub async fn acquire_ticket(
        &self,
        volume: &str,
        writer: &str,
        known_epoch: Epoch,
    ) -> Result<proto::Ticket, Status> {
        let req = proto::AcquireTicketRequest {
            volume: volume.into(),
            writer: writer.into(),
            known_epoch: known_epoch.0,
        };
        self.call(|mut c| {
            let req = req.clone();
            async move { c.acquire_ticket(req).await }
        })
        .await
    }
}
