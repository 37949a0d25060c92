//! `weir`: the errors-and-rate-limits contract of HTTP APIs, from both ends.
//!
//! The binary is thin on purpose (as ripgrep's is): it parses arguments, wires the
//! library crates together and turns their errors into one-line messages and exit codes.

mod args;
mod call;
mod explain;
mod serve;

use clap::Parser;

/// mimalloc: the gateway allocates per request (headers, bodies, futures) on several
/// threads; glibc's arenas contend there, mimalloc's thread-local heaps do not.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::process::ExitCode;

/// Exit code for usage errors (bad flags, unreadable files), as clap and most CLIs use.
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = match args::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                print!("{e}");
                return ExitCode::SUCCESS;
            }
            eprintln!("weir: {}", one_line(&e.to_string()));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let result = match cli.command {
        args::Command::Explain(a) => explain::run(a),
        args::Command::Serve(a) => serve::run(a),
        args::Command::HashKey(a) => serve::hash_key(a),
        args::Command::Call(a) => call::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("weir: {}", one_line(&format!("{e:#}")));
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// The first meaningful line of a message, without clap's `error: ` prefix.
fn one_line(msg: &str) -> String {
    let line = msg.lines().find(|l| !l.trim().is_empty()).unwrap_or(msg);
    line.trim().trim_start_matches("error: ").to_owned()
}
