//! The `peerd` command line, as clap definitions. It lives in the library
//! (not in `main.rs`) so that one definition feeds the binary, its man
//! page and its shell completions (`make man`, `crates/xtask`).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// peerlink daemon: keeps one persistent, authenticated WebSocket link to a
/// peer daemon and delivers messages across it exactly once, in order.
#[derive(Debug, Parser)]
#[command(
    name = "peerd",
    version,
    args_conflicts_with_subcommands = true,
    after_help = "Files, environment, signals and exit status: see `peerd --help`.",
    after_long_help = MORE
)]
pub struct Cli {
    /// Instance name (`a` and `b` work without a config file).
    pub instance: Option<String>,
    /// Config file [default: /etc/peerd/<instance>.toml, or built-in for a and b].
    #[arg(long, short = 'c', value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// Control socket path [default: $PEERD_SOCKET, else
    /// $RUNTIME_DIRECTORY/control.sock, else /run/peerd/<instance>/control.sock
    /// as root, else $XDG_RUNTIME_DIR/peerd/<instance>/control.sock, else
    /// /tmp/peerd-<uid>/<instance>/control.sock].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// State directory (journal) [default: $STATE_DIRECTORY, else
    /// /var/lib/peerd/<instance> as root, else $XDG_STATE_HOME/peerd/<instance>,
    /// else ~/.local/state/peerd/<instance>].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Log filter, e.g. `info`, `debug`, `peerd=trace` (or RUST_LOG).
    #[arg(long, value_name = "FILTER", env = "PEERD_LOG", default_value = "info")]
    pub log: String,
    /// Detach into the background (hosts without systemd); returns once
    /// the daemon is ready, or fails with its error.
    #[arg(long)]
    pub daemon: bool,
    /// With --daemon: pidfile, locked while the daemon runs [default: <state dir>/peerd.pid].
    #[arg(long, value_name = "PATH", requires = "daemon")]
    pub pidfile: Option<PathBuf>,
    /// With --daemon: log file, appended to [default: <state dir>/peerd.log].
    #[arg(long, value_name = "PATH", requires = "daemon")]
    pub log_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The rest of `peerd --help`, and of its man pages (crates/xtask turns
/// each `Title:` block into a section, `  TAG  TEXT` lines into tagged
/// paragraphs).
pub const MORE: &str = "\
Files:
  /etc/peerd/NAME.toml  the config of instance NAME ($CONFIGURATION_DIRECTORY/NAME.toml under systemd; a and b need none: a listens on 127.0.0.1:8080 with peer b at ws://127.0.0.1:8081/ws, b the other way round)
  /run/peerd/NAME/control.sock  its control socket, as root (under systemd $RUNTIME_DIRECTORY/control.sock); otherwise $XDG_RUNTIME_DIR/peerd/NAME/control.sock, or /tmp/peerd-UID/NAME/control.sock
  /var/lib/peerd/NAME  its state directory, as root (under systemd $STATE_DIRECTORY): journal/ holds the messages; otherwise $XDG_STATE_HOME/peerd/NAME, or ~/.local/state/peerd/NAME

Environment:
  PEERD_LOG  log filter, as --log (RUST_LOG, when set, wins)
  PEERD_SOCKET  the control socket, as --socket
  RUNTIME_DIRECTORY, STATE_DIRECTORY, CONFIGURATION_DIRECTORY  set by systemd: the folders above
  NOTIFY_SOCKET  set by systemd (Type=notify): READY=1 once the listener and control socket are up, STATUS= the links, WATCHDOG=1
  XDG_RUNTIME_DIR, XDG_STATE_HOME, HOME  the paths above, when not root

Signals:
  SIGTERM, SIGINT  close the links with \"going away\", write the journal's state, remove the control socket and exit 0 within 2 s
  SIGHUP  re-read the config and apply what changed without touching unaffected links (as `peerctl reload`); a bad config is refused whole and the old one kept

Exit status:
  0  stopped by a signal, or check-config / journal found nothing wrong
  1  error: config, port or socket taken, journal damaged (the message says which and what to do)
  2  usage error";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the effective config (secrets masked); non-zero on any problem.
    CheckConfig {
        /// Instance name.
        instance: String,
    },
    /// Check or repair the journal of a stopped instance (in its state
    /// directory, journal/).
    #[command(subcommand)]
    Journal(JournalCommand),
}

#[derive(Debug, Subcommand)]
pub enum JournalCommand {
    /// Read every record of both logs and report damage, and what a repair
    /// would drop; changes nothing. Exit 0 when peerd can start on it.
    Verify {
        /// Instance name.
        instance: String,
        /// State directory [default: as `peerd <instance>` would use].
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
    },
    /// Drop damaged records (each replaced by a tombstone, so no sequence
    /// number is reused; peers are told what they will never get) and cut
    /// torn tails; prints exactly which records it dropped.
    Repair {
        /// Instance name.
        instance: String,
        /// State directory [default: as `peerd <instance>` would use].
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
