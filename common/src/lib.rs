//! What every logdb process shares: the logging setup, the gRPC listener (TCP_NODELAY), the
//! Prometheus endpoint, and small helpers for benchmark programs.

pub mod durable_file;
pub mod grpc_listener;
pub mod logging;
pub mod metrics_http;
pub mod shutdown;
pub mod stats;
