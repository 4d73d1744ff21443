//! logwarden binary: parses flags and runs a subcommand.
//!
//! Minimal main for the detection branch: only `scan`. The full main (`serve`, `check-config`)
//! keeps the `Scan` variant as it is.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use logwarden::scan;

/// A Loki-compatible push proxy with streaming log-threat detection.
#[derive(Debug, Parser)]
#[command(name = "logwarden", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the detection engine over log files and prints incidents or per-line matches.
    Scan(scan::ScanArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Scan(args) => match scan::run(args) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        },
    }
}
