//! Local mode (DESIGN.md §10): the LogVolume spec run as processes on one machine — the config
//! store in-process, six `logdb-storage` processes in three pretend zones and the writer, each
//! with its own data dir and log file — plus the commands that inspect and drive it.

pub mod binaries;
pub mod child;
pub mod control;
pub mod credentials;
pub mod endpoint;
pub mod state;
pub mod status;
pub mod supervisor;

/// Everything local mode can refuse, each with what and why.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("{0}")]
    Refused(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

impl LocalError {
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LocalError {
        let what = what.into();
        move |source| LocalError::Io { what, source }
    }
}
