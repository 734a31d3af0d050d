//! `thv-actor bridge <workload>`: what an MCP client launches.

use std::time::{Duration, Instant};

use futures_util::future::LocalBoxFuture;
use futures_util::FutureExt;
use thv_actors::{Backend, GetKeys, KeyStore, SharedKey, WorkloadName};
use thv_bridge::{BridgeConfig, KeySource, KeySourceError, Transport};
use thv_server::state::{self, ServeState};

use crate::cli::BridgeArgs;
use crate::CliError;

/// What the bridge found out before any thread started.
pub struct Plan {
    args: BridgeArgs,
    workload: WorkloadName,
    state: Option<ServeState>,
    connect_wait: Duration,
}

/// Reads serve's state, waiting up to `--connect-wait` for serve to
/// publish the workload, and makes the session bus findable. Runs before
/// any thread exists, because it may set `DBUS_SESSION_BUS_ADDRESS`.
pub fn prepare(args: BridgeArgs) -> Result<Plan, CliError> {
    let workload = WorkloadName::new(&args.workload)?;
    let connect_wait = humantime::parse_duration(&args.connect_wait).map_err(|e| {
        CliError::new(format!(
            "invalid --connect-wait \"{}\": {e}",
            args.connect_wait
        ))
    })?;
    let dir = thv_actors::state_dir()?;

    let deadline = Instant::now() + connect_wait;
    let mut announced = false;
    let state = loop {
        let state = state::running_state(&dir)?;
        let has_it = state
            .as_ref()
            .is_some_and(|s| s.workloads.iter().any(|w| w.name == workload.as_str()));
        if has_it || args.url.is_some() || Instant::now() >= deadline {
            break state;
        }
        if !announced {
            eprintln!(
                "thv-actor bridge: workload {workload} is not running yet{}; waiting up to {}",
                if state.is_some() {
                    " in the running serve"
                } else {
                    " (serve is not running)"
                },
                humantime::format_duration(connect_wait)
            );
            announced = true;
        }
        std::thread::sleep(Duration::from_millis(200));
    };

    thv_actors::prepare_session_bus(
        state
            .as_ref()
            .and_then(|s| s.dbus_session_bus_address.as_deref()),
    );
    Ok(Plan {
        args,
        workload,
        state,
        connect_wait,
    })
}

/// Runs the bridge until stdin closes or SIGTERM, then exits the process.
pub fn run(keystore: Option<String>, plan: Plan) -> Result<std::process::ExitCode, CliError> {
    let name = plan.workload.as_str().to_owned();
    let entry = plan
        .state
        .as_ref()
        .and_then(|s| s.workloads.iter().find(|w| w.name == name));

    let (url, transport) = match (&plan.args.url, entry) {
        (Some(url), entry) => {
            // A `unix:` URL names only the socket: the transport is the
            // published workload's, or streamable HTTP when serve has none.
            // TODO: a --transport flag for an sse workload on a socket that
            // serve does not publish (no caller needs it yet).
            let transport = if url.ends_with("/sse")
                || (url.starts_with("unix:") && entry.is_some_and(|w| w.transport == "sse"))
            {
                Transport::Sse
            } else {
                Transport::StreamableHttp
            };
            (url.clone(), transport)
        }
        (None, Some(w)) => {
            let transport = if w.transport == "sse" {
                Transport::Sse
            } else {
                Transport::StreamableHttp
            };
            (w.url.clone(), transport)
        }
        (None, None) => {
            let why = if plan.state.is_some() {
                format!("the running serve has no workload {name} (see `thv-actor list`)")
            } else {
                format!(
                    "thv-actor serve is not running (waited {}); start it, or pass --url",
                    humantime::format_duration(plan.connect_wait)
                )
            };
            return Err(CliError::new(format!("workload {name} is unknown: {why}")));
        }
    };
    if entry.is_some_and(|w| !w.shared_key_auth) {
        eprintln!("thv-actor bridge: workload {name} runs WITHOUT shared key auth; any local process can use it");
    }

    let choice = crate::keystore_choice(keystore, plan.state.as_ref())?;
    let mut config = BridgeConfig::new(name.clone(), url, transport);
    config.connect_wait = plan.connect_wait;

    actix::System::new().block_on(async move {
        let outcome = async {
            let backend = actix_web::rt::task::spawn_blocking(move || Backend::open(choice))
                .await
                .map_err(|_| CliError::new("keystore probe panicked"))??;
            let store = KeyStore::start(backend)?;
            let keys = Box::new(KeychainKeys {
                store,
                workload: plan.workload,
            });
            thv_bridge::run_stdio(config, keys)
                .await
                .map_err(|e| CliError::new(e.to_string()))
        }
        .await;

        // stdin is read on a blocking thread that a signal does not end,
        // and dropping the runtime would wait for it: leave from here.
        match outcome {
            Ok(()) => std::process::exit(0),
            Err(err) => {
                eprintln!("thv-actor: error: {err}");
                std::process::exit(i32::from(err.code))
            }
        }
    })
}

/// Reads the workload's key through the KeyStore actor.
struct KeychainKeys {
    store: actix::Addr<KeyStore>,
    workload: WorkloadName,
}

impl KeySource for KeychainKeys {
    fn fetch(&self) -> LocalBoxFuture<'static, Result<SharedKey, KeySourceError>> {
        let asked = self.store.send(GetKeys {
            workload: self.workload.clone(),
        });
        let workload = self.workload.clone();
        async move {
            match asked.await {
                Ok(Ok(keys)) => Ok(keys.current),
                Ok(Err(err)) => Err(KeySourceError::new(format!(
                    "cannot read the key of workload {workload}: {err}"
                ))),
                Err(_) => Err(KeySourceError::new("the keystore actor is not answering")),
            }
        }
        .boxed_local()
    }
}
