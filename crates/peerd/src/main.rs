//! The `peerd` binary: parse arguments, set up logging, run the library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use peerd::config::Config;
use peerd::daemon::{self, Paths};
use peerlink::paths::{self, Env};
use tokio_util::sync::CancellationToken;

/// peerlink daemon: keeps one persistent, authenticated WebSocket link to a
/// peer daemon and delivers messages across it exactly once, in order.
#[derive(Parser)]
#[command(name = "peerd", version, args_conflicts_with_subcommands = true)]
struct Cli {
    /// Instance name (`a` and `b` work without a config file).
    instance: Option<String>,
    /// Config file [default: /etc/peerd/<instance>.toml, or built-in for a and b].
    #[arg(long, short = 'c', value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// Control socket path [default: see README "Paths"].
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// State directory (journal) [default: see README "Paths"].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Log filter, e.g. `info`, `debug`, `peerd=trace` (or RUST_LOG).
    #[arg(long, value_name = "FILTER", env = "PEERD_LOG", default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Print the effective config (secrets masked); non-zero on any problem.
    CheckConfig {
        /// Instance name.
        instance: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cli.log))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal();
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi);
    // Under journald (JOURNAL_STREAM set) the journal adds the timestamps.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        fmt.without_time().init();
    } else {
        fmt.init();
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peerd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(Command::CheckConfig { instance }) = &cli.command {
        let cfg = Config::load(instance, cli.config.as_deref())?;
        peerd::tls::Tls::load(&cfg)?;
        print!("{}", cfg.render());
        return Ok(());
    }
    let Some(instance) = cli.instance.as_deref() else {
        anyhow::bail!("which instance? e.g. `peerd a` (see `peerd --help`)");
    };
    let cfg = Config::load(instance, cli.config.as_deref())?;
    let env = Env::current();
    let socket = paths::socket_path(instance, cli.socket.as_deref(), &env);
    let state_dir =
        paths::state_dir(instance, cli.state_dir.as_deref(), &env).ok_or_else(|| {
            anyhow::anyhow!("no state directory: set --state-dir, $STATE_DIRECTORY or $HOME")
        })?;
    let shared_socket =
        std::env::var_os("INVOCATION_ID").is_some() || std::env::var_os("NOTIFY_SOCKET").is_some();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        peerd::service::cancel_on_signals(shutdown.clone())?;
        daemon::run(
            cfg,
            Paths {
                socket,
                state_dir,
                shared_socket,
            },
            shutdown,
            Box::new(|_| {}),
        )
        .await?;
        Ok(())
    })
}
