//! Logging setup shared by every logdb binary: `tracing` to stderr, level from `RUST_LOG`
//! (default info), so stdout stays free for the one JSON line a process announces itself with.

pub fn init() {
    init_with_default("info,openraft=warn");
}

/// Like [`init`], with another filter when `RUST_LOG` is unset (the `logdb` command keeps the
/// terminal quiet).
pub fn init_with_default(filter: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
        )
        .with_writer(std::io::stderr)
        .init();
}
