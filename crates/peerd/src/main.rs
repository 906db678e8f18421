//! The `peerd` binary: parse arguments, set up logging, run the library.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use clap::Parser;
use peerd::cli::{Cli, Command, JournalCommand};
use peerd::config::Config;
use peerd::daemon::{self, Paths};
use peerd::service::detach::{self, Readiness, Side};
use peerlink::paths::{self, Env};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let cli = parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cli.log))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal() && !cli.daemon;
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
        for w in peerd::access::service_user_warnings(&cfg) {
            eprintln!("peerd: warning: {w}");
        }
        return Ok(());
    }
    if let Some(Command::Journal(cmd)) = &cli.command {
        return journal(cmd);
    }
    let Some(instance) = cli.instance.as_deref() else {
        // main checked this already (a usage error, exit 2)
        anyhow::bail!("which instance? e.g. `peerd a` (see `peerd --help`)");
    };
    let cfg = Config::load(instance, cli.config.as_deref())?;
    let env = Env::current();
    let mut socket = paths::socket_path(instance, cli.socket.as_deref(), &env);
    let state_dir =
        paths::state_dir(instance, cli.state_dir.as_deref(), &env).ok_or_else(|| {
            anyhow::anyhow!("no state directory: set --state-dir, $STATE_DIRECTORY or $HOME")
        })?;
    let mut state_dir = state_dir;
    if cli.daemon {
        // The daemon runs in `/`. (Only then: an absolute socket path can
        // be longer than the 108 bytes a relative one fits in.)
        socket = absolute(&socket);
        state_dir = absolute(&state_dir);
    }
    let shared_socket =
        std::env::var_os("INVOCATION_ID").is_some() || std::env::var_os("NOTIFY_SOCKET").is_some();
    // Before the runtime: fork keeps only the calling thread.
    let daemonized = if cli.daemon {
        match detach(&cli, &state_dir)? {
            Some(d) => Some(d),
            None => return Ok(()),
        }
    } else {
        None
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        peerd::service::cancel_on_signals(shutdown.clone())?;
        let notify_shutdown = shutdown.clone();
        let readiness = daemonized.as_ref().map(|d| d.readiness.clone());
        let on_ready = Box::new(move |ready: daemon::Ready| {
            peerd::service::notify::start(ready.observed, notify_shutdown);
            if let Some(r) = readiness {
                r.lock().unwrap_or_else(|p| p.into_inner()).ready();
            }
        });
        let paths = Paths {
            socket,
            state_dir,
            shared_socket,
            config: cli.config.clone(),
        };
        daemon::run(cfg, paths, shutdown, on_ready).await?;
        Ok(())
    });
    if let Some(d) = daemonized {
        d.finish(&result);
    }
    result
}

/// The command line, with usage errors (exit 2) that say what was meant:
/// an instance is required unless a subcommand is given, and a second
/// word after the instance is an extra argument, not a subcommand.
fn parse() -> Cli {
    use clap::CommandFactory;
    use clap::error::{ContextKind, ErrorKind};
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.kind() == ErrorKind::ArgumentConflict => {
            let extra = e
                .get(ContextKind::InvalidSubcommand)
                .or_else(|| e.get(ContextKind::InvalidArg))
                .map(|v| v.to_string())
                .unwrap_or_default();
            Cli::command()
                .error(
                    ErrorKind::UnknownArgument,
                    format!(
                        "unexpected argument '{extra}': `peerd` takes one instance name (`peerd a`); \
                         a subcommand comes first (`peerd check-config a`)"
                    ),
                )
                .exit()
        }
        Err(e) => e.exit(),
    };
    if cli.instance.is_none() && cli.command.is_none() {
        Cli::command()
            .error(
                ErrorKind::MissingRequiredArgument,
                "which instance? e.g. `peerd a` (a and b need no config file)",
            )
            .exit()
    }
    cli
}

/// `peerd journal verify|repair`.
fn journal(cmd: &JournalCommand) -> anyhow::Result<()> {
    let (JournalCommand::Verify {
        instance,
        state_dir,
    }
    | JournalCommand::Repair {
        instance,
        state_dir,
    }) = cmd;
    let dir = paths::state_dir(instance, state_dir.as_deref(), &Env::current())
        .ok_or_else(|| anyhow::anyhow!("no state directory: set --state-dir or $HOME"))?
        .join("journal");
    match cmd {
        JournalCommand::Verify { .. } => {
            let report = peerd::journal::repair::verify(&dir)?;
            print!("{}", report.render(false));
            if !report.is_clean() {
                anyhow::bail!(
                    "the journal in {} is damaged; `peerd journal repair {instance}` drops what \
                     is listed above",
                    dir.display()
                );
            }
            println!("peerd can start on this journal");
        }
        JournalCommand::Repair { .. } => {
            let report = peerd::journal::repair::repair(&dir)?;
            print!("{}", report.render(true));
            if report.is_clean() {
                println!("nothing to repair: no damaged records");
            } else {
                println!(
                    "repaired; peerd can start on this journal (peers are told about the dropped \
                     outbox records when they connect)"
                );
            }
        }
    }
    Ok(())
}

/// What the detached daemon keeps to report to its parent and clean up.
struct Daemonized {
    readiness: Arc<Mutex<Readiness>>,
    pidfile: PathBuf,
}

impl Daemonized {
    /// Tell a parent still waiting why start-up failed; remove the pidfile.
    fn finish(self, result: &anyhow::Result<()>) {
        if let Err(e) = result {
            let mut r = self.readiness.lock().unwrap_or_else(|p| p.into_inner());
            r.failed(&format!("{e:#}"));
        }
        let _ = std::fs::remove_file(&self.pidfile);
    }
}

/// `--daemon`: fork into the background. In the parent, wait for the
/// daemon's report and return `None` (success) or its error; in the
/// daemon, return what it needs to report.
fn detach(cli: &Cli, state_dir: &Path) -> anyhow::Result<Option<Daemonized>> {
    let opts = detach::Options {
        pidfile: absolute(
            &cli.pidfile
                .clone()
                .unwrap_or_else(|| state_dir.join("peerd.pid")),
        ),
        log_file: absolute(
            &cli.log_file
                .clone()
                .unwrap_or_else(|| state_dir.join("peerd.log")),
        ),
    };
    match detach::detach(&opts)? {
        Side::Parent(Ok(pid)) => {
            println!(
                "peerd: running in the background, pid {pid}; log {}, pidfile {}",
                opts.log_file.display(),
                opts.pidfile.display()
            );
            Ok(None)
        }
        Side::Parent(Err(message)) => Err(anyhow::anyhow!(message)),
        Side::Daemon(readiness) => Ok(Some(Daemonized {
            readiness: Arc::new(Mutex::new(readiness)),
            pidfile: opts.pidfile,
        })),
    }
}

/// `p` from the current directory (the daemon later runs in `/`).
fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}
