//! `thv-actor`: shared-key authentication in front of local MCP servers.
//!
//! This crate is only the command line; the work is done by the library
//! crates `thv-actors`, `thv-server` and `thv-bridge`.

mod cli;
mod key_cmd;
mod logging;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    // Before any thread exists: a bridge started by an MCP client has no
    // DBUS_SESSION_BUS_ADDRESS, but the standard per-user bus may be there.
    thv_actors::prepare_session_bus(None);

    let cli = Cli::parse();
    logging::init(cli.log_format, cli.command.default_log_level());

    let result = match cli.command {
        Command::Key(cmd) => key_cmd::run(cli.keystore, cmd),
        Command::DemoServer => thv_server::demo::run()
            .map(|()| ExitCode::SUCCESS)
            .map_err(|e| CliError::new(format!("demo server: {e}"))),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("thv-actor: error: {err}");
            ExitCode::from(err.code)
        }
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
