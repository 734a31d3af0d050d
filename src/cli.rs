//! The command-line grammar.

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Shared-key authentication for MCP servers on your machine.
///
/// `serve` runs each workload behind an authenticating proxy on loopback;
/// `bridge` is what an MCP client launches to reach one, with the key read
/// from the OS keychain.
#[derive(Debug, Parser)]
#[command(name = "thv-actor", version, propagate_version = true)]
pub struct Cli {
    /// Where keys are kept: auto, secret-service, keyutils (Linux),
    /// macos-keychain, windows-credential-manager.
    #[arg(long, global = true, env = "THV_ACTOR_KEYSTORE", default_value = "auto")]
    pub keystore: String,

    /// Log line format on stderr (filter with RUST_LOG).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, show, rotate, delete and list workload keys in the keychain.
    #[command(subcommand)]
    Key(KeyCommand),

    /// Run the built-in demo MCP server on stdin/stdout (serve spawns it for
    /// the default `demo` workload).
    DemoServer,
}

impl Command {
    /// The log level when RUST_LOG is unset.
    pub fn default_log_level(&self) -> &'static str {
        match self {
            Command::Key(_) | Command::DemoServer => "warn",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Make a key for a workload unless it has one (never prints the key).
    Create(WorkloadArg),

    /// Print a workload's current key on stdout.
    ///
    /// One of only two ways a key leaves the keychain (the other is a
    /// workload's opt-in `inject_key_env`). Exits 1 when there is no key.
    Show(WorkloadArg),

    /// Replace a workload's key; the old one keeps working for the overlap.
    Rotate(RotateArgs),

    /// Delete every key of a workload.
    Delete(WorkloadArg),

    /// List workloads with keys: created, last rotated, previous keys still
    /// valid. Never shows a key.
    List(ListArgs),
}

#[derive(Debug, Args)]
pub struct WorkloadArg {
    /// The workload's name (a-z, 0-9, '.', '_', '-'; up to 63 characters).
    pub workload: String,
}

#[derive(Debug, Args)]
pub struct RotateArgs {
    /// The workload's name.
    pub workload: String,

    /// How long the replaced key stays valid, like 90s, 10m or 1h; 0s
    /// revokes it at once.
    #[arg(long, default_value = "10m")]
    pub overlap: String,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}
