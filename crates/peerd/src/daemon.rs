//! Wiring: bind the listener and the control socket, open the journal,
//! start one link task per peer, the listener and the control server, and
//! run until the shutdown token fires, applying reloads on the way (SIGHUP,
//! `peerctl reload`; see `reload`); then close every link with "going
//! away", let every task drain, and remove the socket.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use peerlink::control::ReloadReport;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, Fsync};
use crate::console::Tokens;
use crate::error::{Error, Result};
use crate::handshake::Established;
use crate::journal::{self, Journal};
use crate::link::Link;
use crate::listener::{self, Accepting};
use crate::reload::{self, Current, KeyAges};
use crate::server::{self, Control};
use crate::service::notify;
use crate::status::{Observed, PeerBoard, Tally};
use crate::tls::Tls;
use crate::web;

/// Where this run keeps its files (resolved by `peerlink::paths`).
#[derive(Debug, Clone)]
pub struct Paths {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    /// Socket mode 0660 instead of 0600 (under a service manager).
    pub shared_socket: bool,
    /// `--config`, if given: what a reload reads again (else the default
    /// location, as at start).
    pub config: Option<PathBuf>,
}

/// What the daemon hands its caller once it is ready to serve.
pub struct Ready {
    /// The address it actually listens on (port 0 resolved).
    pub listen: std::net::SocketAddr,
    /// Where status snapshots come from, for the service manager's
    /// STATUS= line (`service::notify`); read-only for the caller.
    pub observed: Arc<Observed>,
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
    // First: SIGHUP's default action ends the process, and `systemctl
    // reload` may come at any time. Asks wait until the daemon is ready.
    let (asks_tx, mut asks) = mpsc::channel(4);
    crate::service::reload_on_sighup(asks_tx.clone())?;
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
    let http = match cfg.http_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Listen {
                    addr: addr.to_string(),
                    source,
                })?,
        ),
        None => None,
    };
    let http_addr = http.as_ref().map(TcpListener::local_addr).transpose()?;
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
    let tally = Arc::new(Tally::default());
    let key_ages = KeyAges::new(&paths.state_dir);
    let (settings_tx, settings) = watch::channel(Arc::new(Current {
        cfg: cfg.clone(),
        tls: tls.clone(),
        links: HashMap::new(),
        boards: Vec::new(),
        key_ages: key_ages.update(&reload::ids(&cfg)),
    }));
    let mut running = Running {
        paths: paths.clone(),
        journal: journal.clone(),
        tracker: tracker.clone(),
        shutdown: shutdown.clone(),
        settings: settings_tx,
        links: HashMap::new(),
        tls_digest: reload::tls_digest(&cfg),
        key_ages,
        last: Arc::new(Mutex::new(None)),
        tally: tally.clone(),
    };
    running.apply(cfg.clone(), tls);
    let accepting = Arc::new(Accepting {
        journal: journal.clone(),
        settings: settings.clone(),
        tally: tally.clone(),
    });
    tracker.spawn(listener::run(
        tcp,
        accepting,
        shutdown.clone(),
        tracker.clone(),
    ));
    let observed = Arc::new(Observed {
        settings: settings.clone(),
        journal: journal.clone(),
        tally,
        last_reload: running.last.clone(),
        started_ms: peerlink::now_ms(),
        listen: listen.to_string(),
        http_listen: http_addr.map(|a| a.to_string()),
        socket: paths.socket.display().to_string(),
        state_dir: paths.state_dir.display().to_string(),
    });
    let ready = Ready {
        listen,
        observed: observed.clone(),
    };
    let ctl = Arc::new(Control {
        settings,
        journal: journal.clone(),
        reload: asks_tx,
        observed,
        console: http_addr.map(|a| Arc::new(Tokens::new(a))),
    });
    if let (Some(http), Some(addr)) = (http, http_addr) {
        if !addr.ip().is_loopback() {
            tracing::warn!(
                "insecure = true: http_listen {addr} is reachable beyond this host; /metrics needs no token there"
            );
        }
        tracker.spawn(web::run(
            http,
            ctl.clone(),
            shutdown.clone(),
            tracker.clone(),
        ));
    }
    tracker.spawn(server::run(control, ctl, shutdown.clone(), tracker.clone()));
    let http_note = http_addr
        .map(|a| format!(", http on {a} (/metrics, console)"))
        .unwrap_or_default();
    tracing::info!(
        "peerd {} ({}) ready: listening on {listen}{}, control socket {}{http_note}",
        cfg.instance,
        peerlink::VERSION,
        cfg.path,
        paths.socket.display()
    );
    on_ready(ready);

    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(ask) = asks.recv() => {
                let report = running.reload();
                if let Some(reply) = ask.reply {
                    let _ = reply.send(report);
                }
            }
        }
    }
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

/// One peer's link task, as the daemon keeps it.
struct LinkHandle {
    /// Stops the link (a reload removed the peer).
    stop: CancellationToken,
    offers: mpsc::Sender<Established>,
    board: PeerBoard,
}

/// What the daemon changes on a reload.
struct Running {
    paths: Paths,
    journal: Journal,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    settings: watch::Sender<Arc<Current>>,
    links: HashMap<String, LinkHandle>,
    /// The TLS files' contents as last loaded (a renewal keeps the paths).
    tls_digest: Vec<u8>,
    key_ages: KeyAges,
    last: Arc<Mutex<Option<ReloadReport>>>,
    /// Counts failed authentications (handed to every link).
    tally: Arc<Tally>,
}

impl Running {
    /// Re-read the config; apply it whole or refuse it whole. Logged, told
    /// to systemd, and kept for `peerctl status`.
    fn reload(&mut self) -> ReloadReport {
        notify::reloading();
        let result = self.try_reload().map_err(|e| one_line(&e));
        let report = ReloadReport {
            at_ms: peerlink::now_ms(),
            applied: result.is_ok(),
            error: result.as_ref().err().cloned(),
            changes: result.unwrap_or_default(),
        };
        let line = match (&report.error, report.changes.is_empty()) {
            (Some(e), _) => {
                tracing::error!("reload refused, still running on the old config: {e}");
                format!("reload refused: {e}")
            }
            (None, true) => {
                tracing::info!("reloaded: nothing changed");
                "reloaded: nothing changed".to_string()
            }
            (None, false) => {
                let what = report.changes.join("; ");
                tracing::info!("reloaded: {what}");
                format!("reloaded: {what}")
            }
        };
        notify::reloaded(&line);
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(report.clone());
        report
    }

    fn try_reload(&mut self) -> std::result::Result<Vec<String>, String> {
        let old = self.settings.borrow().cfg.clone();
        let new =
            Config::load(&old.instance, self.paths.config.as_deref()).map_err(|e| e.to_string())?;
        let tls = Tls::load(&new).map_err(|e| e.to_string())?;
        let mut changes = reload::diff(&old, &new)?;
        let digest = reload::tls_digest(&new);
        if digest != self.tls_digest && new.tls == old.tls {
            changes.push("[tls] certificate, key or CA renewed on disk".into());
        }
        self.tls_digest = digest;
        self.apply(Arc::new(new), Arc::new(tls));
        Ok(changes)
    }

    /// Make `cfg` current: stop the links of removed peers, start those of
    /// new ones, and hand everyone the new settings.
    fn apply(&mut self, cfg: Arc<Config>, tls: Arc<Tls>) {
        self.journal
            .set_peers(cfg.peers.iter().map(|p| p.name.clone()).collect());
        self.journal.set_limits(crate::journal::Limits {
            outbox_bytes: cfg.outbox_limit_bytes,
            outbox_messages: cfg.outbox_limit_messages,
            retention_bytes: cfg.inbox_retention_bytes,
            retention_age: cfg.inbox_retention_age,
        });
        let removed: Vec<String> = self
            .links
            .keys()
            .filter(|n| !cfg.peers.iter().any(|p| &p.name == *n))
            .cloned()
            .collect();
        for name in removed {
            if let Some(h) = self.links.remove(&name) {
                h.stop.cancel();
            }
        }
        let mut start = Vec::new();
        for peer in &cfg.peers {
            if self.links.contains_key(&peer.name) {
                continue;
            }
            let (tx, rx) = mpsc::channel(4);
            let handle = LinkHandle {
                stop: self.shutdown.child_token(),
                offers: tx,
                board: PeerBoard::new(&peer.name, &peer.url),
            };
            start.push((
                peer.name.clone(),
                rx,
                handle.stop.clone(),
                handle.board.clone(),
            ));
            self.links.insert(peer.name.clone(), handle);
        }
        let current = Current {
            links: cfg
                .peers
                .iter()
                .filter_map(|p| Some((p.name.clone(), self.links.get(&p.name)?.offers.clone())))
                .collect(),
            boards: cfg
                .peers
                .iter()
                .filter_map(|p| Some(self.links.get(&p.name)?.board.clone()))
                .collect(),
            key_ages: self.key_ages.update(&reload::ids(&cfg)),
            cfg,
            tls,
        };
        self.settings.send_replace(Arc::new(current));
        // After the new settings are out: a new link finds its peer there.
        for (name, offers, stop, board) in start {
            let link = Link {
                name,
                settings: self.settings.subscribe(),
                journal: self.journal.clone(),
                board,
                tally: self.tally.clone(),
                offers,
                shutdown: stop,
                tracker: self.tracker.clone(),
            };
            self.tracker.spawn(link.run());
        }
    }
}

/// An error in one line, for the journal and `status`: the source snippet
/// of a TOML error (`2 | bogus = 1`, `  | ^^^^^`) left out.
fn one_line(e: &str) -> String {
    e.lines()
        .map(str::trim)
        .filter(|l| {
            let rest = l
                .trim_start_matches(|c: char| c.is_ascii_digit())
                .trim_start();
            !l.is_empty() && !rest.starts_with('|')
        })
        .collect::<Vec<_>>()
        .join(": ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn errors_fit_one_line() {
        let e = "a.toml: TOML parse error at line 2, column 1\n  |\n2 | bogus = 1\n  | ^^^^^\nunknown field `bogus`";
        assert_eq!(
            super::one_line(e),
            "a.toml: TOML parse error at line 2, column 1: unknown field `bogus`"
        );
        assert_eq!(super::one_line("plain"), "plain");
    }
}
