//! `thv-actor list` and `thv-actor rm`.

use std::io::Write;
use std::process::ExitCode;

use thv_actors::{DeleteKeys, WorkloadName};
#[cfg(unix)]
use thv_server::control::{self, Answer};
use thv_server::state;

use crate::cli::{ListArgs, WorkloadArg};
use crate::CliError;

/// Prints the running serve's workloads.
pub fn list(args: ListArgs) -> Result<ExitCode, CliError> {
    let dir = thv_actors::state_dir()?;
    let workloads = state::running_state(&dir)?
        .map(|s| s.workloads)
        .unwrap_or_default();

    let mut out = String::new();
    if args.json {
        out = serde_json::to_string_pretty(&workloads).expect("plain data serialises");
        out.push('\n');
    } else if workloads.is_empty() {
        out.push_str("no workloads: thv-actor serve is not running\n");
    } else {
        out.push_str(&format!(
            "{:<24} {:<36} {:<16} {:<16} AUTH\n",
            "NAME", "URL", "TRANSPORT", "UPSTREAM"
        ));
        for w in &workloads {
            out.push_str(&format!(
                "{:<24} {:<36} {:<16} {:<16} {}\n",
                w.name,
                w.url,
                w.transport,
                w.upstream,
                if w.shared_key_auth {
                    "shared-key"
                } else {
                    "OFF"
                }
            ));
        }
    }
    std::io::stdout()
        .write_all(out.as_bytes())
        .map_err(|e| CliError::new(format!("cannot write to stdout: {e}")))?;
    Ok(ExitCode::SUCCESS)
}

/// Stops the workload in the running serve, if it runs there, and deletes
/// its keys.
pub fn rm(keystore: Option<String>, arg: WorkloadArg) -> Result<ExitCode, CliError> {
    let workload = WorkloadName::new(&arg.workload)?;
    let dir = thv_actors::state_dir()?;

    let running = state::running_state(&dir)?;
    #[cfg(unix)]
    if let Some(serve) = &running {
        if control::send(&serve.control_socket, &workload, "remove")? == Answer::Done {
            eprintln!("stopped workload {workload} and deleted its keys");
            return Ok(ExitCode::SUCCESS);
        }
    }

    // Not running anywhere: only the keys are left to delete.
    let choice = crate::keystore_choice(keystore, running.as_ref())?;
    let deleted = crate::key_cmd::with_keystore(choice, move |store| async move {
        crate::key_cmd::ask(&store, DeleteKeys { workload }).await
    })?;
    let name = arg.workload;
    if deleted {
        eprintln!("workload {name} was not running; deleted its keys");
        Ok(ExitCode::SUCCESS)
    } else {
        Err(CliError::new(format!(
            "workload {name} is not running and has no keys"
        )))
    }
}
