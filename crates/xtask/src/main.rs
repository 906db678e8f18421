//! `cargo run -p xtask -- man DIR | completions DIR`: see the library.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Build helpers for peerlink.
#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Write man pages of peerd and peerctl (and each subcommand) to DIR.
    Man {
        #[arg(default_value = "target/man")]
        dir: PathBuf,
    },
    /// Write completion scripts of peerd and peerctl for every shell to DIR.
    Completions {
        #[arg(default_value = "target/completions")]
        dir: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let files = match Args::parse().task {
        Task::Man { dir } => xtask::man(&dir)?,
        Task::Completions { dir } => xtask::completions(&dir)?,
    };
    for f in files {
        println!("{}", f.display());
    }
    Ok(())
}
