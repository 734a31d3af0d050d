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
    /// [default: auto, or the keystore of the running serve]
    #[arg(
        long,
        global = true,
        env = "THV_ACTOR_KEYSTORE",
        hide_env_values = true
    )]
    pub keystore: Option<String>,

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

    /// Run every workload behind an authenticating proxy on loopback.
    ///
    /// Workloads come from the config file (--config, THV_ACTOR_CONFIG, or
    /// $XDG_CONFIG_HOME/thv-actor/config.toml, by default
    /// ~/.config/thv-actor/config.toml), or one from the command line
    /// (--name with --url, or with a command after --). With neither, serve
    /// hosts the built-in `demo` workload.
    Serve(ServeArgs),

    /// Connect an MCP client's stdio to a workload, adding its key.
    ///
    /// This is the command an MCP client launches. It finds the workload's
    /// URL and keystore from the running serve, reads the key from the
    /// keychain, and sends it on every request.
    Bridge(BridgeArgs),

    /// List the workloads of the running serve (`[]` when none runs).
    List(ListArgs),

    /// Remove a workload: stop it if serve runs it, and delete its keys.
    Rm(WorkloadArg),

    /// Print (or --write) an MCP client's configuration for a workload.
    ClientConfig(ClientConfigArgs),

    /// Run `thv-actor serve` at login as a user service (systemd on Linux,
    /// launchd on macOS).
    #[command(subcommand)]
    Service(crate::service::ServiceCommand),

    /// Run the built-in demo MCP server on stdin/stdout (serve spawns it for
    /// the default `demo` workload).
    DemoServer,
}

impl Command {
    /// The log level when RUST_LOG is unset.
    pub fn default_log_level(&self) -> &'static str {
        match self {
            Command::Serve(_) | Command::Bridge(_) => "info,actix_server=warn",
            _ => "warn",
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

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The config file.
    #[arg(long, env = "THV_ACTOR_CONFIG", hide_env_values = true)]
    pub config: Option<std::path::PathBuf>,

    /// Serve one workload of this name, given by --url or a command after --.
    #[arg(long)]
    pub name: Option<String>,

    /// The upstream MCP server's URL (with --name).
    #[arg(long, requires = "name", conflicts_with = "command")]
    pub url: Option<String>,

    /// The upstream's transport (with --url).
    #[arg(long, value_enum, requires = "url", default_value_t = UpstreamTransportArg::StreamableHttp)]
    pub transport: UpstreamTransportArg,

    /// The loopback port (with --name); without it a free port is picked
    /// and kept for the next start.
    #[arg(long, requires = "name")]
    pub port: Option<u16>,

    /// The stdio MCP server to run (with --name), after `--`.
    #[arg(last = true, requires = "name")]
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum UpstreamTransportArg {
    /// Streamable HTTP.
    StreamableHttp,
    /// Legacy HTTP+SSE.
    Sse,
}

#[derive(Debug, Args)]
pub struct BridgeArgs {
    /// The workload to connect to.
    pub workload: String,

    /// Connect here instead of the URL the running serve publishes:
    /// http://127.0.0.1:PORT/mcp, or unix:/path/to.sock for a workload on a
    /// Unix socket.
    #[arg(long)]
    pub url: Option<String>,

    /// How long to wait for serve to come up (or back) before answering a
    /// request with an error, like 30s or 2m.
    #[arg(long, default_value = "30s")]
    pub connect_wait: String,
}

#[derive(Debug, Args)]
pub struct ClientConfigArgs {
    /// The workload.
    pub workload: String,

    /// Which client's format.
    #[arg(long, value_enum, default_value_t = ClientKind::ClaudeDesktop)]
    pub client: ClientKind,

    /// Merge it into the client's user configuration file (backing the old
    /// one up first) instead of printing it.
    #[arg(long)]
    pub write: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ClientKind {
    /// Claude Desktop (claude_desktop_config.json).
    ClaudeDesktop,
    /// Cursor (~/.cursor/mcp.json).
    Cursor,
    /// VS Code (the user mcp.json).
    Vscode,
}
