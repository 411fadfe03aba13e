//! A loopback TCP proxy that counts the bytes going each way. Benchmarks put one in front of each
//! storage node to measure what leaves the writer at the transport level (gRPC framing, HTTP/2
//! and all); fault-injection tests can cut it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
pub struct Counters {
    /// Client → upstream bytes.
    pub upstream: AtomicU64,
    /// Upstream → client bytes.
    pub downstream: AtomicU64,
    /// While set, new connections are refused and open ones are closed.
    pub cut: AtomicBool,
}

pub struct Proxy {
    pub addr: SocketAddr,
    pub counters: Arc<Counters>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(Counters::default());
        let c = Arc::clone(&counters);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if c.cut.load(Ordering::Relaxed) {
                    continue;
                }
                let c = Arc::clone(&c);
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let up = pump(cr, sw, Arc::clone(&c), true);
                    let down = pump(sr, cw, c, false);
                    tokio::select! { _ = up => {}, _ = down => {} }
                });
            }
        });
        Ok(Proxy { addr, counters })
    }

    pub fn upstream_bytes(&self) -> u64 {
        self.counters.upstream.load(Ordering::Relaxed)
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    c: Arc<Counters>,
    upstream: bool,
) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        if c.cut.load(Ordering::Relaxed) {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let counter = if upstream { &c.upstream } else { &c.downstream };
        counter.fetch_add(n as u64, Ordering::Relaxed);
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
