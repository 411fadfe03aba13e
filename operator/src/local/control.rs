//! How `logdb status`, `logdb down` and `logdb node` talk to a running `logdb up`: one JSON
//! request and one JSON answer per line over a loopback TCP connection, whose address the
//! supervisor leaves in the data dir's runtime file.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::state::Runtime;
use super::status::LocalStatus;
use super::LocalError;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Status,
    NodeStop {
        node: String,
    },
    NodeStart {
        node: String,
    },
    /// Make a replica the writer (`None`: any replica).
    Failover {
        target: Option<String>,
    },
    Down,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Reply {
    Status(Box<LocalStatus>),
    Done { message: String },
    Error { message: String },
}

/// How long one request may take (a node start waits for the node to announce itself).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(150);

/// Sends `req` to the `logdb up` running on `data_dir`.
pub async fn request(data_dir: &Path, req: &Request) -> Result<Reply, LocalError> {
    let not_running = || {
        LocalError::Refused(format!(
            "no `logdb up` is running on data dir {} (start one with `logdb up`)",
            data_dir.display()
        ))
    };
    let runtime = Runtime::load(data_dir)?.ok_or_else(not_running)?;
    let mut sock = TcpStream::connect(runtime.control)
        .await
        .map_err(|_| not_running())?;
    let mut line = serde_json::to_string(req).expect("request serializes");
    line.push('\n');
    let exchange = async {
        sock.write_all(line.as_bytes()).await?;
        let mut answer = String::new();
        BufReader::new(&mut sock).read_line(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| LocalError::Refused("`logdb up` did not answer in time".into()))?
        .map_err(LocalError::io("talking to `logdb up`"))?;
    if answer.is_empty() {
        return Err(LocalError::Refused(
            "`logdb up` closed the connection without answering".into(),
        ));
    }
    serde_json::from_str(&answer)
        .map_err(|e| LocalError::Refused(format!("`logdb up` answered something unreadable: {e}")))
}

/// Reads one request from `sock`, answers it with `handle`.
pub async fn serve_one<F, Fut>(mut sock: TcpStream, handle: F)
where
    F: FnOnce(Request) -> Fut,
    Fut: std::future::Future<Output = Reply>,
{
    let mut line = String::new();
    let (read, mut write) = sock.split();
    if BufReader::new(read).read_line(&mut line).await.is_err() {
        return;
    }
    let reply = match serde_json::from_str::<Request>(&line) {
        Ok(req) => handle(req).await,
        Err(e) => Reply::Error {
            message: format!("bad request: {e}"),
        },
    };
    let mut out = serde_json::to_string(&reply).expect("reply serializes");
    out.push('\n');
    let _ = write.write_all(out.as_bytes()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_read_as_json() {
        let r: Request = serde_json::from_str(r#"{"op":"node_stop","node":"a1"}"#).unwrap();
        assert_eq!(r, Request::NodeStop { node: "a1".into() });
        assert_eq!(
            serde_json::to_string(&Request::Down).unwrap(),
            r#"{"op":"down"}"#
        );
    }

    #[tokio::test]
    async fn no_running_up_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = request(dir.path(), &Request::Status)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("no `logdb up` is running on data dir"),
            "{err}"
        );
        // A runtime file left behind by a killed `logdb up` points at nothing.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let control = l.local_addr().unwrap();
        drop(l);
        Runtime { pid: 1, control }.save(dir.path()).unwrap();
        let err = request(dir.path(), &Request::Status)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("no `logdb up` is running"), "{err}");
    }
}
