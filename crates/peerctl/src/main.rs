//! The `peerctl` binary: parse, run, map errors to exit codes.

use std::process::ExitCode;

use clap::Parser;
use peerctl::cli::Cli;
use peerctl::error::{CtlError, EXIT_ERROR, EXIT_OK};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("peerctl: cannot start: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    match runtime.block_on(peerctl::run(cli)) {
        Ok(code) => ExitCode::from(code),
        // Output cut short by a closed pipe (`peerctl tail | head`) is success.
        Err(CtlError::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::from(EXIT_OK)
        }
        Err(e) => {
            eprintln!("peerctl: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
