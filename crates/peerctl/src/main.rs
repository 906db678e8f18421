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
    let result = runtime.block_on(peerctl::run(cli));
    // Don't wait for a read of stdin still blocked in tokio's thread pool
    // (an `attach` or `send` that ended on an error or a signal before its
    // input did): everything that matters is done by now.
    runtime.shutdown_background();
    match result {
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
