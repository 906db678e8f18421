//! Wiring: bind the listener and the control socket, open the journal,
//! start one link task per peer, the listener and the control server, and
//! run until the shutdown token fires; then close every link with "going
//! away", let every task drain, and remove the socket.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, Fsync};
use crate::error::{Error, Result};
use crate::journal::{self, Journal};
use crate::link::Link;
use crate::listener::{self, Accepting};
use crate::server::{self, Control};
use crate::status::PeerBoard;
use crate::tls::Tls;

/// Where this run keeps its files (resolved by `peerlink::paths`).
#[derive(Debug, Clone)]
pub struct Paths {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    /// Socket mode 0660 instead of 0600 (under a service manager).
    pub shared_socket: bool,
}

/// What the daemon hands its caller once it is ready to serve.
pub struct Ready {
    /// The address it actually listens on (port 0 resolved).
    pub listen: std::net::SocketAddr,
    /// The status record of each peer link, for the service manager's
    /// STATUS= line (`service::notify`); read-only for the caller.
    pub boards: Vec<PeerBoard>,
}

/// Called once the daemon is ready to serve (listener and control socket
/// up): where `service` sends READY=1 or tells a `--daemon` parent.
pub type OnReady = Box<dyn FnOnce(Ready) + Send>;

/// Run the daemon until `shutdown` is cancelled.
pub async fn run(
    cfg: Config,
    paths: Paths,
    shutdown: CancellationToken,
    on_ready: OnReady,
) -> Result<()> {
    let cfg = Arc::new(cfg);
    let tls = Arc::new(Tls::load(&cfg)?);
    let tcp = match TcpListener::bind(cfg.listen).await {
        Ok(tcp) => tcp,
        // The same words as a second daemon on the same socket gets, when
        // that is what holds the port.
        Err(e)
            if e.kind() == std::io::ErrorKind::AddrInUse
                && peerlink::endpoint::connect(&paths.socket).await.is_ok() =>
        {
            return Err(peerlink::endpoint::BindError::InUse(format!(
                "{} (it holds {} too)",
                paths.socket.display(),
                cfg.listen
            ))
            .into());
        }
        Err(source) => {
            return Err(Error::Listen {
                addr: cfg.listen.to_string(),
                source,
            });
        }
    };
    let listen = tcp.local_addr()?;
    let control = peerlink::endpoint::bind(&paths.socket, paths.shared_socket).await?;
    if cfg.insecure_listen() {
        tracing::warn!(
            "insecure = true: listening on {listen} beyond this host with no secret; anyone who can reach it can send messages"
        );
    }
    if cfg.fsync == Fsync::Never {
        tracing::warn!(
            "fsync = \"never\": accepted messages can be lost in a crash; use only for benchmarks"
        );
    }
    let journal_dir = paths.state_dir.join("journal");
    let journal = Journal::open(journal::Options {
        dir: journal_dir.clone(),
        peers: cfg.peers.iter().map(|p| p.name.clone()).collect(),
        outbox_limit_bytes: cfg.outbox_limit_bytes,
        outbox_limit_messages: cfg.outbox_limit_messages,
        inbox_retention_bytes: cfg.inbox_retention_bytes,
        inbox_retention_age: cfg.inbox_retention_age,
        fsync: cfg.fsync == Fsync::Batch,
        segment_bytes: journal::SEGMENT_BYTES,
    })
    .map_err(|e| Error::Journal {
        path: journal_dir,
        message: e.to_string(),
    })?;

    let tracker = TaskTracker::new();
    let mut links = HashMap::new();
    let mut boards = Vec::new();
    for peer in &cfg.peers {
        let (tx, rx) = mpsc::channel(4);
        let board = PeerBoard::new(&peer.name, &peer.url);
        links.insert(peer.name.clone(), tx);
        boards.push(board.clone());
        let link = Link {
            cfg: cfg.clone(),
            peer: peer.clone(),
            journal: journal.clone(),
            tls: tls.clone(),
            board,
            offers: rx,
            shutdown: shutdown.clone(),
            tracker: tracker.clone(),
        };
        tracker.spawn(link.run());
    }
    let accepting = Arc::new(Accepting {
        cfg: cfg.clone(),
        journal: journal.clone(),
        tls,
        links,
    });
    tracker.spawn(listener::run(
        tcp,
        accepting,
        shutdown.clone(),
        tracker.clone(),
    ));
    let ready = Ready {
        listen,
        boards: boards.clone(),
    };
    let ctl = Arc::new(Control {
        cfg: cfg.clone(),
        journal: journal.clone(),
        boards,
        started_ms: peerlink::now_ms(),
        listen: listen.to_string(),
        socket: paths.socket.display().to_string(),
        state_dir: paths.state_dir.display().to_string(),
    });
    tracker.spawn(server::run(control, ctl, shutdown.clone(), tracker.clone()));
    tracing::info!(
        "peerd {} ({}) ready: listening on {listen}{}, control socket {}",
        cfg.instance,
        peerlink::VERSION,
        cfg.path,
        paths.socket.display()
    );
    on_ready(ready);

    shutdown.cancelled().await;
    tracing::info!("shutting down");
    tracker.close();
    // 1.5 s, so the whole stop (signal to exit) stays within the 2 s that
    // SPEC §9 promises even when a task is stuck.
    if tokio::time::timeout(Duration::from_millis(1500), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("some tasks did not finish within 1.5s; exiting anyway");
    }
    // Every task that could write is gone: write the journal's state down.
    if tokio::time::timeout(Duration::from_secs(2), journal.close())
        .await
        .is_err()
    {
        tracing::warn!("the journal did not close within 2s; exiting anyway");
    }
    // The listener (and its reclaim-on-drop) is gone with its task; make
    // sure the file is too.
    let _ = std::fs::remove_file(&paths.socket);
    tracing::info!("stopped");
    Ok(())
}
