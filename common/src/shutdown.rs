//! How a logdb process learns it should stop: Ctrl-C in a terminal, or SIGTERM from a supervisor
//! (`logdb up`, Kubernetes). Every binary stops cleanly on either.

/// Completes on the first SIGINT or SIGTERM.
pub async fn signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
