//! The command line, as clap definitions (also the source of completions
//! and man pages).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// peerlink client: send messages through the local peerd, tail the ones
/// it received, show its links.
#[derive(Debug, Parser)]
#[command(
    name = "peerctl",
    version,
    after_help = "Which instance, files, environment and exit status: see `peerctl --help`.",
    after_long_help = MORE
)]
pub struct Cli {
    /// peerd instance [default: the only one running, named on stderr;
    /// none running or several: see "Which instance"].
    #[arg(
        short = 'i',
        long,
        global = true,
        env = "PEERD_INSTANCE",
        value_name = "NAME"
    )]
    pub instance: Option<String>,
    /// Control socket of the daemon [default: the instance's, see "Files"].
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// The rest of `peerctl --help`, and of its man pages (crates/xtask turns
/// each `Title:` block into a section, `  TAG  TEXT` lines into tagged
/// paragraphs).
pub const MORE: &str = "\
Which instance:
  With -i NAME (or PEERD_INSTANCE) or --socket PATH, exactly that one. With
  neither: the only instance running, named on stderr (\"peerctl: instance
  'b' (the only one running; ...)\"). With several running, `status` shows
  each of them and every other command refuses (exit 2), listing them. With
  none running, exit 3.

Files:
  $XDG_RUNTIME_DIR/peerd/NAME/control.sock  the control socket of instance NAME run by you (not root)
  /tmp/peerd-UID/NAME/control.sock  the same where XDG_RUNTIME_DIR is not set
  /run/peerd/NAME/control.sock  instance NAME run by root or systemd; peerctl looks here too (members of group peerd may use it)

Environment:
  PEERD_INSTANCE  the instance, as -i
  PEERD_SOCKET  the control socket, as --socket
  XDG_RUNTIME_DIR  where the sockets of your own instances are
  NO_COLOR  no colour (nor with CLICOLOR=0; CLICOLOR_FORCE=1 forces it)

Exit status:
  0  success (status: every link is up)
  1  error (the message says what went wrong)
  2  usage error, or several instances running and none named
  3  the daemon is not running or cannot be reached
  4  a link is down (status), or not delivered in time (send --wait)
  5  status: messages were lost since the daemon started
  130  interrupted by Ctrl-C (send says how many were stored)";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Send messages to the peer.
    ///
    /// Each argument is one message; with no argument (or `-`) each line of
    /// stdin is one (each NUL-terminated record with --null), streamed in
    /// batches. Returns once the messages are stored in the outbox, or with
    /// --wait once the peer has stored them.
    ///
    /// A message is 1 byte up to the daemon's max_message. Empty messages
    /// are never stored: an empty argument is a usage error (nothing is
    /// sent), a blank stdin line is skipped. A message over max_message is
    /// refused naming the limit (an argument: nothing is sent; a stdin line:
    /// the lines before it were sent, nothing after it).
    Send(SendArgs),
    /// Show received messages.
    ///
    /// The last 10 by default, like tail(1). Each line shows the time it
    /// arrived, who sent it (a peer's name or `client:<addr>` for a plain
    /// WebSocket client) and the body, with newlines and control characters
    /// escaped so one message is one line; --json prints one object per
    /// line instead.
    Tail(TailArgs),
    /// Show the daemon and its links.
    ///
    /// Exit status 0 when every link is up, 4 when one is down, 3 when the
    /// daemon cannot be reached. Colour only on a terminal, never with
    /// NO_COLOR.
    Status(StatusArgs),
    /// Interactive terminal: typed lines are sent, arrivals are shown.
    ///
    /// Each line typed is sent; messages print as they arrive, above the
    /// prompt, which is redrawn with whatever was half typed. Ctrl-D or
    /// Ctrl-C leaves. With stdin not a terminal: each stdin line is sent,
    /// arrivals go to stdout like `tail`, and it exits at the end of input
    /// once the sends are stored.
    Attach,
    /// Give up on one queued message that a peer cannot take.
    ///
    /// When a queued message is larger than the peer's max_message, the
    /// queue to that peer holds on it (`status` says which one). Raise the
    /// peer's max_message, or drop that message: it is never sent, the
    /// peer is told it is lost, both sides log and count it, and the queue
    /// moves on.
    Drop(DropArgs),
    /// Print a one-time URL of the browser console.
    ///
    /// The daemon serves its console at http_listen (set it in the config
    /// to turn it on). The URL carries a token that works once, within 10
    /// minutes: opening it logs that browser in (a session cookie) and
    /// drops the token from the address. Run it again for another browser.
    Console(ConsoleArgs),
    /// Make the daemon re-read its config, and say what that did.
    ///
    /// The same as `systemctl reload peerd@<i>` or SIGHUP: what can change
    /// live is applied (peers added or removed, timers, limits, secrets,
    /// TLS files) without touching the sessions it does not concern; a
    /// config with an error, or one that changes `listen`, `node` or the
    /// journal's settings, is refused whole and the old one kept (exit
    /// status 1).
    Reload,
    /// Print a shell completion script.
    ///
    /// For example `peerctl completions bash >
    /// ~/.local/share/bash-completion/completions/peerctl`.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
pub struct ConsoleArgs {
    /// Also open the URL in a browser (xdg-open, or $BROWSER).
    #[arg(long)]
    pub open: bool,
}

#[derive(Debug, Args)]
pub struct SendArgs {
    /// Return only once the peer has stored the messages.
    #[arg(short, long)]
    pub wait: bool,
    /// With --wait: give up after this long (e.g. `5s`, `1m`); the messages
    /// stay queued and are still delivered later.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub timeout: Option<std::time::Duration>,
    /// Read NUL-separated messages from stdin instead of lines, so a
    /// message may hold newlines (`find -print0 | peerctl send -0`).
    #[arg(short = '0', long)]
    pub null: bool,
    /// Send only to this peer (repeat, or give a comma-separated list);
    /// without it, every configured peer gets the messages.
    #[arg(long, value_name = "PEER", value_delimiter = ',')]
    pub to: Vec<String>,
    /// Messages (not empty); `-` or none: read lines from stdin, blank ones
    /// skipped. A message is bytes: invalid UTF-8 is sent as it is, from
    /// arguments as from stdin.
    pub messages: Vec<std::ffi::OsString>,
}

#[derive(Debug, Args)]
pub struct TailArgs {
    /// How many of the latest messages to show first (0: only new ones).
    #[arg(short = 'n', long, value_name = "N", default_value_t = 10)]
    pub lines: u64,
    /// Keep showing messages as they arrive.
    #[arg(short, long)]
    pub follow: bool,
    /// Start at this inbox sequence number instead of the last N.
    #[arg(long, value_name = "SEQ", conflicts_with = "lines")]
    pub from: Option<u64>,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
    /// Only messages from this origin (a peer's name, or `client:<addr>`);
    /// -n counts those.
    #[arg(long, value_name = "ORIGIN")]
    pub from_peer: Option<String>,
}

#[derive(Debug, Args)]
pub struct DropArgs {
    /// The peer whose queue holds the message.
    #[arg(long, value_name = "NAME")]
    pub peer: String,
    /// The message's outbox sequence number (as `status` shows it).
    #[arg(value_name = "SEQ")]
    pub seq: u64,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Machine-readable output: one JSON object ("schema": 1; fields are
    /// only ever added), or an array of them when several instances run
    /// and none is named.
    #[arg(long)]
    pub json: bool,
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
