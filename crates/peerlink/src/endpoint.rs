//! Binding and connecting the control socket: every `interprocess` call of
//! the project is here, so the platform differences live in one file.
//!
//! On Unix the endpoint is a socket file (mode 0600, or 0660 under a service
//! manager so an admin group can use `peerctl`); on Windows the named pipe
//! named by the path's file name. A socket file left behind by a crashed
//! daemon is replaced at start, but only after checking that no live
//! daemon answers on it.

use std::io;
use std::path::Path;

use interprocess::local_socket::tokio::{Listener, Stream, prelude::*};
use interprocess::local_socket::{ListenerOptions, Name};

use crate::paths::MAX_SOCKET_PATH;

/// Why the control socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("control socket path {path} is {len} bytes; Unix sockets allow at most {max}")]
    PathTooLong {
        path: String,
        len: usize,
        max: usize,
    },
    #[error("another peerd is already answering on {0}")]
    InUse(String),
    #[error("cannot create control socket {path}")]
    Io { path: String, source: io::Error },
}

fn name(path: &Path) -> io::Result<Name<'_>> {
    #[cfg(windows)]
    {
        use interprocess::local_socket::GenericNamespaced;
        let pipe = path.file_name().unwrap_or(path.as_os_str());
        pipe.to_ns_name::<GenericNamespaced>()
    }
    #[cfg(not(windows))]
    {
        use interprocess::local_socket::GenericFilePath;
        path.to_fs_name::<GenericFilePath>()
    }
}

/// Connect to a daemon's control socket.
pub async fn connect(path: &Path) -> io::Result<Stream> {
    Stream::connect(name(path)?).await
}

/// Bind the control socket at `path`, creating its directory (mode 0700)
/// when missing. `shared` selects mode 0660 instead of 0600.
pub async fn bind(path: &Path, shared: bool) -> Result<Listener, BindError> {
    let display = path.display().to_string();
    let io_err = |source| BindError::Io {
        path: display.clone(),
        source,
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        let len = path.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(BindError::PathTooLong {
                path: display,
                len,
                max: MAX_SOCKET_PATH,
            });
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_err)?;
        }
        if path.exists() {
            if connect(path).await.is_ok() {
                return Err(BindError::InUse(display));
            }
            std::fs::remove_file(path).map_err(io_err)?;
        }
    }
    let _ = MAX_SOCKET_PATH;
    let opts = ListenerOptions::new()
        .name(name(path).map_err(io_err)?)
        .reclaim_name(true);
    #[cfg(unix)]
    let opts = {
        use interprocess::os::unix::local_socket::ListenerOptionsExt;
        opts.mode(if shared { 0o660 } else { 0o600 })
    };
    #[cfg(not(unix))]
    let _ = shared;
    let listener = opts.create_tokio().map_err(|e| {
        if e.kind() == io::ErrorKind::AddrInUse {
            BindError::InUse(display.clone())
        } else {
            io_err(e)
        }
    })?;
    // Linux passes the mode set above through the umask at bind(), so a
    // service's `UMask=0027` would leave 0640 and lock the admin group
    // out: set the mode exactly once the file exists.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = if shared { 0o660 } else { 0o600 };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_err)?;
    }
    Ok(listener)
}

/// Does this connect error mean "no daemon there" (as opposed to, say,
/// permission denied)? Decided from the error kind, never from its text.
pub fn is_not_running(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::AddrNotAvailable
    )
}

/// Receiving half of a control connection.
pub type RecvHalf = tokio::io::ReadHalf<Stream>;
/// Sending half of a control connection.
pub type SendHalf = tokio::io::WriteHalf<Stream>;

/// Split a control connection so one task can read while another writes.
pub fn split(stream: Stream) -> (RecvHalf, SendHalf) {
    tokio::io::split(stream)
}
