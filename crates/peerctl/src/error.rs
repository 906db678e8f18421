//! The client's one error type, and the exit code each error means.

use std::path::PathBuf;

use peerlink::control::ErrorKind;

pub const EXIT_OK: u8 = 0;
pub const EXIT_ERROR: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_UNREACHABLE: u8 = 3;
pub const EXIT_DOWN: u8 = 4;
/// `status`: messages were lost since the daemon started (README "Durability").
pub const EXIT_LOST: u8 = 5;
/// Stopped by Ctrl-C (128 + SIGINT, as shells report it).
pub const EXIT_INTERRUPTED: u8 = 130;

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error(
        "peerd instance '{instance}' is not running (no socket at {}); start it with \
         `systemctl start peerd@{instance}` or `peerd {instance}`",
        path.display()
    )]
    NotRunning { instance: String, path: PathBuf },
    #[error(
        "no peerd instance is running (no control socket under {}); start one with `peerd a` \
         (or `systemctl start peerd@a`), or name one with `-i NAME` or `--socket PATH`",
        list(looked_in)
    )]
    NoneRunning { looked_in: Vec<PathBuf> },
    #[error("no peerd is answering at {} ({source})", path.display())]
    NoDaemonAt {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "no access to peerd instance '{instance}': permission denied on {}, which is for \
         members of group '{group}'; join it with `sudo adduser $USER {group}`, then log in \
         again (or run peerctl with sudo)",
        path.display()
    )]
    NoAccess {
        instance: String,
        path: PathBuf,
        group: String,
    },
    #[error("cannot reach peerd at {}: {source}", path.display())]
    Unreachable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("peerd {0}")]
    Protocol(String),
    #[error("peerd refused: {message}")]
    Daemon { kind: ErrorKind, message: String },
    #[error("{0}")]
    NotDelivered(String),
    #[error("{0}")]
    Usage(String),
    /// Ctrl-C: what was done before it.
    #[error("{0}")]
    Interrupted(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl CtlError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::NotRunning { .. }
            | CtlError::NoneRunning { .. }
            | CtlError::NoDaemonAt { .. }
            | CtlError::NoAccess { .. }
            | CtlError::Unreachable { .. } => EXIT_UNREACHABLE,
            CtlError::NotDelivered(_) => EXIT_DOWN,
            CtlError::Usage(_) => EXIT_USAGE,
            CtlError::Interrupted(_) => EXIT_INTERRUPTED,
            _ => EXIT_ERROR,
        }
    }
}

/// `a, b or c` for a list of paths.
fn list(paths: &[PathBuf]) -> String {
    let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    match shown.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        Some((last, _)) => last.clone(),
        None => "the usual places".to_string(),
    }
}
