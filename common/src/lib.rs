//! What every logdb process shares: the logging setup, the gRPC listener (TCP_NODELAY), the
//! Prometheus endpoint, the installation's certificates and TLS configurations, and small
//! helpers for benchmark programs.

pub mod durable_file;
pub mod grpc_listener;
pub mod logging;
pub mod metrics_http;
pub mod peer_tls;
pub mod pki;
pub mod shutdown;
pub mod stats;
pub mod test_pki;
pub mod tls;
