//! `peerctl`: the command-line client of `peerd`. The binary parses
//! arguments and maps errors to exit codes; everything else is here.

pub mod attach;
pub mod cli;
pub mod client;
pub mod error;
pub mod progress;
pub mod send;
pub mod status;
pub mod tail;

use std::io::Write;

use clap::CommandFactory;
use cli::{Cli, Command};
use client::{Selection, Target};
use error::{CtlError, EXIT_OK};

/// Run one command; returns the exit code on success.
pub async fn run(cli: Cli) -> Result<u8, CtlError> {
    if let Command::Completions { shell } = cli.command {
        // Into memory first: clap_complete panics when a write fails, and
        // `peerctl completions zsh | head` closes the pipe early.
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "peerctl", &mut script);
        let mut out = std::io::stdout().lock();
        out.write_all(&script)?;
        out.flush()?;
        return Ok(EXIT_OK);
    }
    let selection = Target::resolve(cli.instance.as_deref(), cli.socket.as_deref())?;
    if let (Command::Status(args), Selection::Several(all)) = (&cli.command, &selection) {
        return status::run_several(all, args).await;
    }
    let target = selection.one()?;
    if let Some(note) = target.note() {
        eprintln!("{note}");
    }
    match cli.command {
        Command::Send(args) => send::run(&target, args).await.map(|()| EXIT_OK),
        Command::Tail(args) => tail::run(&target, args).await.map(|()| EXIT_OK),
        Command::Status(args) => status::run(&target, &args).await,
        Command::Attach => attach::run(&target).await.map(|()| EXIT_OK),
        Command::Drop(args) => drop_record(&target, args).await.map(|()| EXIT_OK),
        Command::Console(args) => console(&target, args).await.map(|()| EXIT_OK),
        Command::Reload => reload(&target).await,
        Command::Completions { .. } => Ok(EXIT_OK),
    }
}

/// `peerctl drop`.
async fn drop_record(target: &Target, args: cli::DropArgs) -> Result<(), CtlError> {
    use peerlink::control::{Request, Response};
    let mut client = client::Client::connect(target).await?;
    client
        .send(&Request::Drop {
            peer: args.peer,
            seq: args.seq,
        })
        .await?;
    match client.recv().await? {
        Response::Dropped { peer, seq } => {
            println!("dropped message {seq} for {peer}; {peer} is told it is lost");
            Ok(())
        }
        Response::Error { kind, message } => Err(CtlError::Daemon { kind, message }),
        other => Err(CtlError::Protocol(format!("answered drop with {other:?}"))),
    }
}

/// `peerctl console`: print (and maybe open) a one-time console URL.
async fn console(target: &Target, args: cli::ConsoleArgs) -> Result<(), CtlError> {
    use peerlink::control::{Request, Response};
    let mut client = client::Client::connect(target).await?;
    client.send(&Request::Console).await?;
    let url = match client.recv().await? {
        Response::Console { url } => url,
        Response::Error { kind, message } => return Err(CtlError::Daemon { kind, message }),
        other => {
            return Err(CtlError::Protocol(format!(
                "answered console with {other:?}"
            )));
        }
    };
    println!("{url}");
    if args.open {
        let opener = std::env::var_os("BROWSER").unwrap_or_else(|| "xdg-open".into());
        let opened = std::process::Command::new(&opener)
            .arg(&url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        if let Err(e) = opened {
            eprintln!(
                "peerctl: cannot start {}: {e}; open the URL above yourself",
                opener.to_string_lossy()
            );
        }
    }
    Ok(())
}

/// `peerctl reload`: exit 0 when applied, 1 when refused.
async fn reload(target: &Target) -> Result<u8, CtlError> {
    use peerlink::control::{Request, Response};
    let mut client = client::Client::connect(target).await?;
    client.send(&Request::Reload).await?;
    match client.recv().await? {
        Response::Reloaded(r) => {
            println!("{}", status::reload_line(&r, r.at_ms));
            Ok(if r.applied {
                EXIT_OK
            } else {
                error::EXIT_ERROR
            })
        }
        Response::Error { kind, message } => Err(CtlError::Daemon { kind, message }),
        other => Err(CtlError::Protocol(format!(
            "answered reload with {other:?}"
        ))),
    }
}

/// Whether to colour what goes to `stream`: only a terminal, never with
/// `NO_COLOR` (or `CLICOLOR=0`), always with `CLICOLOR_FORCE` (the rules
/// of `anstream`, which clap uses too).
pub fn colour<S: anstream::stream::RawStream>(stream: &S) -> bool {
    anstream::AutoStream::choice(stream) != anstream::ColorChoice::Never
}
