//! `peerd --daemon`: the classic detach for hosts without systemd.
//!
//! The `daemonize` crate does the double fork, `setsid`, `chdir /`, umask,
//! the locked pidfile and the redirection of stdout and stderr to the log
//! file. It is unmaintained (RUSTSEC-2025-0069), so it is used here and
//! only here, behind the one flag; systemd users never run this code.
//!
//! It must run **before** the tokio runtime starts: `fork` copies only the
//! calling thread, so a runtime's worker threads would not survive it.
//!
//! # Readiness
//!
//! The parent must not exit 0 before the daemon can serve, or a script
//! that runs `peerd --daemon a && peerctl send x` races it. Like sccache's
//! server reporting its bound address to the client that spawned it, the
//! daemon reports over a socket pair created before the fork:
//!
//! | child writes        | parent                                       |
//! |---------------------|----------------------------------------------|
//! | `ready <pid>\n`     | exits 0                                      |
//! | `error\n<message>`  | prints the message to stderr, exits 1        |
//! | nothing, then EOF   | the child died: says so, points at the log   |
//!
//! The child closes its end after reporting, so the parent never waits on
//! a daemon that is up; it waits at most [`READY_TIMEOUT`] for one that is
//! still starting.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// How long the parent waits for the daemon's word.
pub const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// Where a detached daemon keeps its files. Absolute paths: the daemon
/// changes its working directory to `/`.
#[derive(Debug, Clone)]
pub struct Options {
    /// Holds the daemon's pid, locked while it runs (a second daemon with
    /// the same pidfile refuses to start).
    pub pidfile: PathBuf,
    /// stdout and stderr of the daemon, appended to.
    pub log_file: PathBuf,
}

/// Which side of the fork [`detach`] returned in.
pub enum Side {
    /// The original process: the daemon's report. `Ok(pid)` once it is
    /// ready, `Err(message)` when it failed to start.
    Parent(Result<u32, String>),
    /// The detached daemon: run it, then report through this.
    Daemon(Readiness),
}

/// The daemon's end of the readiness pipe. Reports once; later calls and
/// a drop without a report close the pipe, which the parent reads as
/// "died during start".
pub struct Readiness(Option<Box<dyn Write + Send>>);

impl Readiness {
    /// The daemon is up: the parent may exit 0.
    pub fn ready(&mut self) {
        self.report(&format!("ready {}\n", std::process::id()));
    }

    /// The daemon could not start: the parent prints `message`.
    pub fn failed(&mut self, message: &str) {
        self.report(&format!("error\n{message}"));
    }

    /// Has nothing been reported yet?
    pub fn pending(&self) -> bool {
        self.0.is_some()
    }

    fn report(&mut self, text: &str) {
        if let Some(mut s) = self.0.take() {
            // The parent may be gone (killed): nothing to do about it.
            let _ = s.write_all(text.as_bytes());
        }
    }
}

/// Not on this platform: there is no fork.
#[cfg(not(unix))]
pub fn detach(_: &Options) -> std::io::Result<Side> {
    Err(std::io::Error::other(
        "--daemon needs a Unix host; run peerd as a service instead",
    ))
}

/// Detach into the background. Call before any thread is started.
///
/// Errors opening the log file are returned before anything forks. In the
/// daemon, a failure of the detach itself (e.g. the pidfile is locked by a
/// running daemon) is reported to the parent and the process exits 1.
#[cfg(unix)]
pub fn detach(opts: &Options) -> std::io::Result<Side> {
    use daemonize::{Daemonize, Outcome};
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::net::UnixStream;

    for p in [&opts.pidfile, &opts.log_file] {
        if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(&opts.log_file)
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot open log file {}: {e}", opts.log_file.display()),
            )
        })?;
    let (parent_end, daemon_end) = UnixStream::pair()?;
    let outcome = Daemonize::new()
        .pid_file(&opts.pidfile)
        .working_directory("/")
        .umask(0o027)
        .stdout(log.try_clone()?)
        .stderr(log)
        .execute();
    match outcome {
        Outcome::Parent(Ok(_)) => {
            drop(daemon_end);
            Ok(Side::Parent(wait_for_report(parent_end, opts)))
        }
        Outcome::Parent(Err(e)) => Err(std::io::Error::other(format!("cannot detach: {e}"))),
        Outcome::Child(Ok(_)) => {
            drop(parent_end);
            Ok(Side::Daemon(Readiness(Some(Box::new(daemon_end)))))
        }
        Outcome::Child(Err(e)) => {
            drop(parent_end);
            Readiness(Some(Box::new(daemon_end))).failed(&format!(
                "cannot detach: {e} (pidfile {}: is another peerd using it?)",
                opts.pidfile.display()
            ));
            std::process::exit(1);
        }
    }
}

/// Read the daemon's report (see the module doc).
#[cfg(unix)]
fn wait_for_report(
    mut pipe: std::os::unix::net::UnixStream,
    opts: &Options,
) -> Result<u32, String> {
    use std::io::Read;

    let see_log = format!("see {}", opts.log_file.display());
    pipe.set_read_timeout(Some(READY_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut text = String::new();
    // Bounded: a report is one line or one error message.
    let read = (&mut pipe).take(64 * 1024).read_to_string(&mut text);
    if let Err(e) = read {
        return Err(
            if e.kind() == std::io::ErrorKind::WouldBlock
                || e.kind() == std::io::ErrorKind::TimedOut
            {
                format!(
                    "the daemon did not report ready within {}s; it may still be starting: {see_log}",
                    READY_TIMEOUT.as_secs()
                )
            } else {
                format!("reading the daemon's report: {e}; {see_log}")
            },
        );
    }
    if let Some(rest) = text.strip_prefix("ready ") {
        return rest
            .trim()
            .parse()
            .map_err(|_| format!("garbled report from the daemon: {text:?}; {see_log}"));
    }
    if let Some(message) = text.strip_prefix("error\n") {
        return Err(message.to_string());
    }
    Err(format!("the daemon exited during start; {see_log}"))
}
