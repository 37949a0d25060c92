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
    /// Run the gateway: a reverse proxy enforcing the contract in front of your API.
    Serve(ServeArgs),
    /// Call an API like curl, but by the contract: retries only what is transient, honours
    /// Retry-After, paces itself from rate-limit headers.
    Call(CallArgs),
    /// Print the hash of an API key, to put in the config's `hash = "…"`. Reads the key
    /// from standard input when it is not given (keeps it out of shell history).
    HashKey(HashKeyArgs),
}

/// `weir serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The configuration file (TOML); see docs/configuration.md.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: std::path::PathBuf,

    /// Overrides `server.listen`.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,

    /// Overrides `server.admin_listen`.
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<std::net::SocketAddr>,

    /// Check the configuration and exit.
    #[arg(long)]
    pub check: bool,
}

/// `weir call`.
#[derive(Debug, Args)]
pub struct CallArgs {
    /// The URL.
    pub url: String,

    /// The method (default GET, or POST with a body).
    #[arg(short = 'X', long = "request", value_name = "METHOD")]
    pub method: Option<String>,

    /// A request header, as 'Name: value'. Repeat for several.
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,

    /// The body: literal text, or '@FILE'.
    #[arg(short = 'd', long = "data", value_name = "BODY")]
    pub data: Option<String>,

    /// Most attempts per request.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_attempts: u32,

    /// Deadline per request, in seconds (waits included).
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,

    /// Send the request N times through one shared client and print a JSON summary.
    #[arg(long, value_name = "N")]
    pub repeat: Option<u64>,

    /// How many of the repeated requests run at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub concurrency: u64,
}

/// `weir hash-key`.
#[derive(Debug, Args)]
pub struct HashKeyArgs {
    /// The key; read from standard input when absent.
    pub key: Option<String>,
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
