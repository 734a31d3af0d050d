//! `thv-actor`: shared-key authentication in front of local MCP servers.
//!
//! This crate is only the command line; the work is done by the library
//! crates `thv-actors`, `thv-server` and `thv-bridge`.

mod bridge_cmd;
mod cli;
mod client_config;
mod key_cmd;
mod logging;
mod serve_cmd;
mod service;
mod workloads_cmd;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

/// mimalloc instead of glibc malloc: the proxy allocates and frees a few small
/// buffers per forwarded request, and malloc/free were ~8 % of serve's CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format, cli.command.default_log_level());

    let result = run(cli);
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("thv-actor: error: {err}");
            ExitCode::from(err.code)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, CliError> {
    // Before any thread exists: a bridge started by an MCP client has no
    // DBUS_SESSION_BUS_ADDRESS, but the standard per-user bus, or the one
    // serve recorded, may be there.
    if let Command::Bridge(args) = cli.command {
        let plan = bridge_cmd::prepare(args)?;
        return bridge_cmd::run(cli.keystore, plan);
    }
    thv_actors::prepare_session_bus(None);

    match cli.command {
        Command::Key(cmd) => key_cmd::run(cli.keystore, cmd),
        Command::Serve(args) => serve_cmd::run(keystore_choice(cli.keystore, None)?, args),
        Command::Bridge(_) => unreachable!("handled above"),
        Command::List(args) => workloads_cmd::list(args),
        Command::Rm(arg) => workloads_cmd::rm(cli.keystore, arg),
        Command::ClientConfig(args) => client_config::run(args),
        Command::Service(cmd) => service::run(cmd),
        Command::DemoServer => thv_server::demo::run()
            .map(|()| ExitCode::SUCCESS)
            .map_err(|e| CliError::new(format!("demo server: {e}"))),
    }
}

/// The keystore to use: `--keystore` or `THV_ACTOR_KEYSTORE` when given,
/// else the running serve's, else `auto`.
pub fn keystore_choice(
    flag: Option<String>,
    serve: Option<&thv_server::state::ServeState>,
) -> Result<thv_actors::BackendChoice, CliError> {
    match (flag, serve) {
        (Some(name), _) => Ok(name.parse()?),
        (None, Some(serve)) => Ok(thv_actors::BackendChoice::Named(serve.keystore)),
        (None, None) => Ok(thv_actors::BackendChoice::Auto),
    }
}

/// A failure to report on stderr as one line, with an exit code.
#[derive(Debug)]
pub struct CliError {
    message: String,
    code: u8,
}

impl CliError {
    /// Exit code 1 with `message`.
    pub fn new(message: impl Into<String>) -> CliError {
        CliError {
            message: message.into(),
            code: 1,
        }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // One line, always: a source error may span several.
        f.write_str(&self.message.replace('\n', " "))
    }
}

impl From<thv_actors::Error> for CliError {
    fn from(err: thv_actors::Error) -> CliError {
        CliError::new(err.to_string())
    }
}

impl From<thv_server::Error> for CliError {
    fn from(err: thv_server::Error) -> CliError {
        CliError::new(err.to_string())
    }
}
