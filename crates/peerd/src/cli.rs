//! The `peerd` command line, as clap definitions. It lives in the library
//! (not in `main.rs`) so that one definition feeds the binary, its man
//! page and its shell completions (`make man`, `crates/xtask`).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// peerlink daemon: keeps one persistent, authenticated WebSocket link to a
/// peer daemon and delivers messages across it exactly once, in order.
#[derive(Debug, Parser)]
#[command(name = "peerd", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// Instance name (`a` and `b` work without a config file).
    pub instance: Option<String>,
    /// Config file [default: /etc/peerd/<instance>.toml, or built-in for a and b].
    #[arg(long, short = 'c', value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// Control socket path [default: see README "Paths"].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// State directory (journal) [default: see README "Paths"].
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

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the effective config (secrets masked); non-zero on any problem.
    CheckConfig {
        /// Instance name.
        instance: String,
    },
    /// Check or repair the journal of a stopped instance (README "Durability").
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
