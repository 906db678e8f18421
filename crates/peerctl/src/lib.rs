//! `peerctl`: the command-line client of `peerd`. The binary parses
//! arguments and maps errors to exit codes; everything else is here.

pub mod cli;
pub mod client;
pub mod error;
pub mod send;
pub mod status;
pub mod tail;

use cli::{Cli, Command};
use client::Target;
use error::{CtlError, EXIT_OK};

/// Run one command; returns the exit code on success.
pub async fn run(cli: Cli) -> Result<u8, CtlError> {
    let target = Target::resolve(cli.instance.as_deref(), cli.socket.as_deref())?;
    match cli.command {
        Command::Send(args) => send::run(&target, args).await.map(|()| EXIT_OK),
        Command::Tail(args) => tail::run(&target, args).await.map(|()| EXIT_OK),
        Command::Status(args) => status::run(&target, args).await,
    }
}
