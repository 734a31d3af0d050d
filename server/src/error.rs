//! [`Error`]: what starting or running serve can fail with.

use std::path::PathBuf;

use crate::config::ConfigError;

/// Everything serve can fail with. Messages are one line and never contain
/// a key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The user's configuration is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),

    /// The keychain or an actor failed.
    #[error(transparent)]
    Keys(#[from] thv_actors::Error),

    /// The environment: the port is taken or cannot be bound.
    #[error("{origin}: workload {workload}: field `{field}`: cannot listen on {addr}: {source}")]
    Bind {
        /// The config field that chose the address: `port` or `listen`.
        field: &'static str,
        /// Where the port came from: the config file, or "remembered port".
        origin: String,
        /// The workload.
        workload: String,
        /// The address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },

    /// Another serve owns this state directory.
    #[error(
        "another thv-actor serve{} is running with state directory {}; stop it first",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
        dir.display()
    )]
    AlreadyRunning {
        /// Its pid, when its state file says.
        pid: Option<u32>,
        /// The state directory.
        dir: PathBuf,
    },

    /// The environment: a state file could not be used.
    #[error("{what} {}: {source}", path.display())]
    State {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },

    /// A workload could not be started.
    #[error("workload {workload}: {message}")]
    Workload {
        /// The workload.
        workload: String,
        /// What went wrong.
        message: String,
    },

    /// The caller: no serve is running to take a control command.
    #[error("no thv-actor serve is running (state directory {})", dir.display())]
    NotRunning {
        /// The state directory looked at.
        dir: PathBuf,
    },

    /// The running serve refused or failed a control command.
    #[error("serve answered: {0}")]
    Control(String),
}

impl Error {
    pub(crate) fn state(
        what: &'static str,
        path: &std::path::Path,
        source: std::io::Error,
    ) -> Error {
        Error::State {
            what,
            path: path.to_owned(),
            source,
        }
    }
}
