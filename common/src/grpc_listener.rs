//! Accepted gRPC connections with TCP_NODELAY: requests and replies are small and latency-bound,
//! and without it Nagle's algorithm and delayed ACKs add ~40 ms to a round trip. Shared by every
//! logdb gRPC server.

use tokio::net::{TcpListener, TcpStream};
use tokio_stream::{Stream, StreamExt};

pub fn incoming(listener: TcpListener) -> impl Stream<Item = std::io::Result<TcpStream>> {
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|sock| {
        if let Ok(s) = &sock {
            let _ = s.set_nodelay(true);
        }
        sock
    })
}
