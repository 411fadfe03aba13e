//! Logging setup shared by every logdb binary: `tracing` to stderr, level from `RUST_LOG`
//! (default info), so stdout stays free for the one JSON line a process announces itself with.

pub fn init() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
}
