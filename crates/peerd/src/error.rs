//! The daemon library's one error type.

use std::path::PathBuf;

/// Everything that can stop `peerd` from starting or keep a request from
/// being served. Per-connection problems (a bad peer frame, a client that
/// went away) are logged where they happen and never become this.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {message}")]
    Config { path: String, message: String },
    #[error("{0}")]
    Usage(String),
    #[error(
        "cannot listen on {addr}{}",
        if source.kind() == std::io::ErrorKind::AddrInUse {
            ": another program holds that port (perhaps another peerd; `ss -ltnp` says which); change `listen` or stop it"
        } else {
            ""
        }
    )]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Bind(#[from] peerlink::endpoint::BindError),
    #[error("journal at {path}: {message}")]
    Journal { path: PathBuf, message: String },
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
