//! Command-line arguments.

use clap::{Args, Parser, Subcommand};

/// weir: the errors-and-rate-limits contract of HTTP APIs, from both ends.
#[derive(Debug, Parser)]
#[command(name = "weir", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Explain an API error response: its dialect, codes, and whether and when to retry.
    Explain(ExplainArgs),
}

/// `weir explain`.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The HTTP status of the response (100-599). Optional when the body carries one
    /// (problem+json `status`) or needs none (an MCP tool error).
    #[arg(long, value_parser = clap::value_parser!(u16).range(100..=599))]
    pub status: Option<u16>,

    /// A response header, as 'Name: value'. Repeat for several.
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,

    /// The response body: literal text, '@FILE' to read a file, or '@-' for standard input.
    #[arg(long)]
    pub body: Option<String>,

    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,

    /// An error code your code understands; the most specific code is then the deepest
    /// of these in the innerError chain. Repeat for several. Default: every code counts.
    #[arg(long = "known", value_name = "CODE")]
    pub known: Vec<String>,

    /// Evaluate dates against this Unix time instead of the clock (reproducible output).
    #[arg(long, value_name = "UNIX_SECONDS")]
    pub now: Option<u64>,
}
