//! `thv-actor key ...`: key management through the KeyStore actor.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use actix::Addr;
use thv_actors::{
    Backend, BackendChoice, CreateKey, DeleteKeys, Error, GetKeys, KeyInfo, KeyStore, ListKeys,
    RotateKey, WorkloadName,
};

use crate::cli::KeyCommand;
use crate::CliError;

/// Runs one key command in a fresh actix System.
pub fn run(keystore: Option<String>, cmd: KeyCommand) -> Result<ExitCode, CliError> {
    let dir = thv_actors::state_dir()?;
    let running = thv_server::state::running_state(&dir)?;
    let choice = crate::keystore_choice(keystore, running.as_ref())?;
    #[cfg(unix)]
    let changed = match &cmd {
        KeyCommand::Rotate(a) => Some(a.workload.clone()),
        KeyCommand::Delete(a) => Some(a.workload.clone()),
        _ => None,
    };

    let code = with_keystore(
        choice,
        move |store| async move { dispatch(&store, cmd).await },
    )?;

    // A running serve re-reads keys within a second anyway; telling it
    // makes the change immediate.
    #[cfg(unix)]
    if let (Some(serve), Some(workload)) = (running, changed) {
        if let Ok(workload) = WorkloadName::new(&workload) {
            if let Err(err) =
                thv_server::control::send(&serve.control_socket, &workload, "invalidate")
            {
                tracing::debug!(error = %err, "could not tell serve about the key change");
            }
        }
    }
    Ok(code)
}

/// Runs `f` with a started KeyStore in a fresh actix System.
pub fn with_keystore<F, Fut, T>(choice: BackendChoice, f: F) -> Result<T, CliError>
where
    F: FnOnce(Addr<KeyStore>) -> Fut,
    Fut: std::future::Future<Output = Result<T, CliError>>,
{
    actix::System::new().block_on(async move {
        let backend = open_backend(choice)?;
        let store = KeyStore::start(backend)?;
        f(store).await
    })
}

/// Opens the backend off the async thread: the probe is a keychain call.
fn open_backend(choice: BackendChoice) -> Result<Backend, CliError> {
    std::thread::spawn(move || Backend::open(choice))
        .join()
        .map_err(|_| CliError::new("keystore probe panicked"))?
        .map_err(CliError::from)
}

async fn dispatch(store: &Addr<KeyStore>, cmd: KeyCommand) -> Result<ExitCode, CliError> {
    match cmd {
        KeyCommand::Create(arg) => {
            let workload = WorkloadName::new(&arg.workload)?;
            let created = ask(
                store,
                CreateKey {
                    workload: workload.clone(),
                },
            )
            .await?;
            if created {
                eprintln!("created a key for workload {workload}");
            } else {
                eprintln!("workload {workload} already has a key");
            }
        }
        KeyCommand::Show(arg) => {
            let workload = WorkloadName::new(&arg.workload)?;
            let keys = ask(store, GetKeys { workload }).await?;
            let mut line = keys.current.expose_encoded();
            line.push('\n');
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(line.as_bytes())
                .and_then(|()| stdout.flush())
                .map_err(|e| CliError::new(format!("cannot write the key to stdout: {e}")))?;
        }
        KeyCommand::Rotate(args) => {
            let workload = WorkloadName::new(&args.workload)?;
            let overlap = parse_overlap(&args.overlap)?;
            let rotated = ask(
                store,
                RotateKey {
                    workload: workload.clone(),
                    overlap,
                },
            )
            .await?;
            match rotated.previous_valid_until {
                Some(until) => eprintln!(
                    "rotated the key of workload {workload}; the previous key stays valid until {}",
                    humantime::format_rfc3339_seconds(until)
                ),
                None => eprintln!(
                    "rotated the key of workload {workload}; the previous key was revoked"
                ),
            }
        }
        KeyCommand::Delete(arg) => {
            let workload = WorkloadName::new(&arg.workload)?;
            if !ask(
                store,
                DeleteKeys {
                    workload: workload.clone(),
                },
            )
            .await?
            {
                return Err(Error::NoKey { workload }.into());
            }
            eprintln!("deleted the keys of workload {workload}");
        }
        KeyCommand::List(args) => {
            let infos = ask(store, ListKeys).await?;
            let known = known_workloads();
            print_list(&infos, &known, args.json)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn ask<M, T>(store: &Addr<KeyStore>, msg: M) -> Result<T, CliError>
where
    M: actix::Message<Result = Result<T, Error>> + Send + 'static,
    T: Send + 'static,
    KeyStore: actix::Handler<M>,
{
    store
        .send(msg)
        .await
        .map_err(|e| Error::from_mailbox("keystore", e))?
        .map_err(CliError::from)
}

/// Parses `90s`, `10m`, `1h`, `0s`.
fn parse_overlap(text: &str) -> Result<Duration, CliError> {
    humantime::parse_duration(text).map_err(|e| {
        CliError::new(format!(
            "invalid --overlap \"{text}\": {e} (examples: 90s, 10m, 1h, 0s)"
        ))
    })
}

/// Workloads that account for a key: in the config file serve would read,
/// or run by the running serve. Keys of any other workload are orphans
/// (left by a workload that was removed from the config without `rm`).
fn known_workloads() -> Vec<String> {
    let mut known = Vec::new();
    let path = std::env::var_os("THV_ACTOR_CONFIG")
        .map(std::path::PathBuf::from)
        .or_else(thv_server::config::default_path);
    if let Some(config) = path.and_then(|p| thv_server::config::Config::load(&p).ok()) {
        known.extend(config.workloads.into_iter().map(|w| w.name.to_string()));
    }
    if let Ok(dir) = thv_actors::state_dir() {
        if let Ok(Some(state)) = thv_server::state::running_state(&dir) {
            known.extend(state.workloads.into_iter().map(|w| w.name));
        }
    }
    known
}

fn print_list(infos: &[KeyInfo], known: &[String], json: bool) -> Result<(), CliError> {
    let orphan = |info: &KeyInfo| !known.iter().any(|k| k == info.workload.as_str());
    let mut out = String::new();
    if json {
        let rows: Vec<serde_json::Value> = infos
            .iter()
            .map(|info| {
                let mut row = json_row(info);
                row["orphan"] = orphan(info).into();
                row
            })
            .collect();
        out.push_str(&serde_json::to_string_pretty(&rows).expect("plain data serialises"));
        out.push('\n');
    } else {
        let width = infos
            .iter()
            .map(|i| i.workload.as_str().len() + 2)
            .max()
            .unwrap_or(0)
            .max(10);
        out.push_str(&format!(
            "{:<width$} {:<21} {:<21} PREVIOUS KEYS VALID UNTIL\n",
            "WORKLOAD", "CREATED", "ROTATED"
        ));
        let mut orphans = 0;
        for info in infos {
            let previous: Vec<String> =
                info.previous_expiries.iter().map(|t| rfc3339(*t)).collect();
            let mark = if orphan(info) {
                orphans += 1;
                "*"
            } else {
                ""
            };
            out.push_str(&format!(
                "{:<width$} {:<21} {:<21} {}\n",
                format!("{}{mark}", info.workload),
                rfc3339(info.created_at),
                info.rotated_at.map_or_else(|| "-".to_owned(), rfc3339),
                if previous.is_empty() {
                    "-".to_owned()
                } else {
                    previous.join(", ")
                },
            ));
        }
        if orphans > 0 {
            out.push_str(
                "* in no config and not running: `thv-actor rm <workload>` deletes its keys\n",
            );
        }
    }
    std::io::stdout()
        .write_all(out.as_bytes())
        .map_err(|e| CliError::new(format!("cannot write to stdout: {e}")))
}

fn json_row(info: &KeyInfo) -> serde_json::Value {
    serde_json::json!({
        "workload": info.workload,
        "created_at": rfc3339(info.created_at),
        "rotated_at": info.rotated_at.map(rfc3339),
        "previous_keys": info.previous_expiries.iter()
            .map(|t| serde_json::json!({ "valid_until": rfc3339(*t) }))
            .collect::<Vec<_>>(),
    })
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}
