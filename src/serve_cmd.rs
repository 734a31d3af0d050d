//! `thv-actor serve`: builds the workload list, then runs the server.

use std::process::ExitCode;

use thv_server::config::{
    self, Config, Listen, Transport, Upstream, Workload, DEFAULT_ROTATION_OVERLAP,
};
#[cfg(unix)]
use thv_server::serve::{self, ServeOptions};

use crate::cli::{ServeArgs, UpstreamTransportArg};
use crate::CliError;

/// The built-in workload's name.
const DEMO: &str = "demo";

/// Runs serve until SIGINT or SIGTERM.
pub fn run(keystore: thv_actors::BackendChoice, args: ServeArgs) -> Result<ExitCode, CliError> {
    let (config, origin) = workloads(args)?;

    // The listeners, the control socket and the signals are Unix ones; the
    // config is still checked, so that its errors come first.
    #[cfg(not(unix))]
    {
        let _ = (config, origin, keystore);
        Err(CliError::new(
            "`thv-actor serve` runs only on Unix systems (Linux, macOS) so far",
        ))
    }

    #[cfg(unix)]
    {
        let mut options = ServeOptions::new(config, origin, keystore, thv_actors::state_dir()?);
        test_overrides(&mut options);
        // Kept for the benchmark that compares the two layouts.
        if std::env::var("THV_ACTOR_VALIDATOR").as_deref() == Ok("shared") {
            options.validator_per_worker = false;
        }

        actix_web::rt::System::new().block_on(serve::run(options))?;
        Ok(ExitCode::SUCCESS)
    }
}

/// The workloads, and where they came from for error messages: the command
/// line, a config file, or the built-in demo.
fn workloads(args: ServeArgs) -> Result<(Config, String), CliError> {
    if let Some(name) = args.name {
        let upstream = match (args.url, args.command.is_empty()) {
            (Some(url), true) => Upstream::Url {
                url,
                transport: match args.transport {
                    UpstreamTransportArg::StreamableHttp => Transport::StreamableHttp,
                    UpstreamTransportArg::Sse => Transport::Sse,
                },
                headers: Default::default(),
            },
            (None, false) => Upstream::Command {
                argv: args.command,
                env: Default::default(),
            },
            _ => {
                return Err(CliError::new(
                    "--name needs either --url URL or a command after -- (for example: \
                     thv-actor serve --name time -- mcp-server-time)",
                ))
            }
        };
        let workload = single(thv_actors::WorkloadName::new(&name)?, upstream, args.port);
        return Ok((
            Config {
                workloads: vec![workload],
            },
            "the command line".into(),
        ));
    }

    let path = match args.config {
        Some(path) => Some(path),
        None => config::default_path().filter(|p| p.exists()),
    };
    if let Some(path) = path {
        let config = Config::load(&path).map_err(|e| CliError::new(e.to_string()))?;
        if config.workloads.is_empty() {
            return Err(CliError::new(format!(
                "{}: no [[workloads]] to serve",
                path.display()
            )));
        }
        return Ok((config, path.display().to_string()));
    }

    let exe = std::env::current_exe().map_err(|e| {
        CliError::new(format!(
            "cannot find this program's path for the demo workload: {e}"
        ))
    })?;
    let demo = single(
        thv_actors::WorkloadName::new(DEMO)?,
        Upstream::Command {
            argv: vec![exe.display().to_string(), "demo-server".into()],
            env: Default::default(),
        },
        None,
    );
    Ok((
        Config {
            workloads: vec![demo],
        },
        "the built-in demo workload".into(),
    ))
}

fn single(name: thv_actors::WorkloadName, upstream: Upstream, port: Option<u16>) -> Workload {
    let session_idle_timeout = config::default_session_idle_timeout(&upstream);
    Workload {
        name,
        upstream,
        port,
        shared_key_auth: true,
        inject_key_env: false,
        key_rotation_days: 0,
        rotation_overlap: DEFAULT_ROTATION_OVERLAP,
        session_idle_timeout,
        allowed_origins: Vec::new(),
        listen: Listen::Tcp,
        peer_check: true,
        allowed_uids: Vec::new(),
    }
}

/// Test builds only: shorter clocks, so that schedules can be tested.
#[cfg(all(unix, feature = "fault-injection"))]
fn test_overrides(options: &mut ServeOptions) {
    let millis = |var: &str| {
        std::env::var(var)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map(std::time::Duration::from_millis)
    };
    if let Some(day) = millis("THV_ACTOR_TEST_DAY_MS") {
        tracing::warn!(
            day_ms = day.as_millis() as u64,
            "test setting: a day is shortened"
        );
        options.day = day;
    }
    if let Some(every) = millis("THV_ACTOR_TEST_MAINTENANCE_MS") {
        options.maintenance_interval = every;
    }
    if let Some(stale) = millis("THV_ACTOR_TEST_MAX_STALE_MS") {
        options.validator.max_stale = stale;
    }
}

#[cfg(all(unix, not(feature = "fault-injection")))]
fn test_overrides(_options: &mut ServeOptions) {}
