//! serve's control socket: how `thv-actor rm` and `thv-actor key` reach a
//! running serve.
//!
//! HTTP/1.1 over the Unix socket `control.sock` in the state directory,
//! created mode 0600 in a directory only the user can enter. Requests carry
//! no key and get none back:
//!
//! - `POST /v1/workloads/<name>/invalidate`: keys changed; drop cached ones
//! - `POST /v1/workloads/<name>/remove`: stop the workload and delete its keys
//! - test builds only (feature `fault-injection`):
//!   `POST /v1/workloads/<name>/fault-keystore` and `.../fault-validator`
//!   make the next keystore operation or validation panic

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use thv_actors::WorkloadName;
use tokio::sync::{mpsc, oneshot};

use crate::error::Error;

/// A command for the serve main loop.
#[derive(Debug)]
pub enum ControlCommand {
    /// Drop cached keys of the workload.
    Invalidate {
        /// The workload.
        workload: WorkloadName,
        /// Answered once every Validator has been told, so that a request
        /// the caller sends next meets the emptied cache.
        reply_tx: oneshot::Sender<()>,
    },
    /// Stop the workload and delete its keys.
    Remove {
        /// The workload.
        workload: WorkloadName,
        /// The answer: `Ok(false)` when serve does not run it.
        reply_tx: oneshot::Sender<Result<bool, String>>,
    },
    /// Test builds only: make the next KeyStore operation or validation
    /// panic.
    #[cfg(feature = "fault-injection")]
    InjectFault {
        /// `keystore` or `validator`.
        target: String,
        /// Answered once the fault is armed.
        reply_tx: oneshot::Sender<()>,
    },
}

/// Mounts the control routes; commands go to `commands_tx`.
pub fn configure(
    cfg: &mut actix_web::web::ServiceConfig,
    commands_tx: mpsc::Sender<ControlCommand>,
) {
    use actix_web::{web, HttpResponse};

    let tx = web::Data::new(commands_tx);
    cfg.app_data(tx).route(
        "/v1/workloads/{name}/{op}",
        web::post().to(
            |path: web::Path<(String, String)>, tx: web::Data<mpsc::Sender<ControlCommand>>| async move {
                let (name, op) = path.into_inner();
                let Ok(workload) = WorkloadName::new(&name) else {
                    return HttpResponse::BadRequest().body("invalid workload name");
                };
                match op.as_str() {
                    "invalidate" => {
                        let (reply_tx, reply_rx) = oneshot::channel();
                        let _ = tx.send(ControlCommand::Invalidate { workload, reply_tx }).await;
                        match reply_rx.await {
                            Ok(()) => HttpResponse::Ok().body("invalidated"),
                            Err(_) => HttpResponse::ServiceUnavailable().body("serve is stopping"),
                        }
                    }
                    "remove" => {
                        let (reply_tx, reply_rx) = oneshot::channel();
                        if tx.send(ControlCommand::Remove { workload, reply_tx }).await.is_err() {
                            return HttpResponse::ServiceUnavailable().body("serve is stopping");
                        }
                        match reply_rx.await {
                            Ok(Ok(true)) => HttpResponse::Ok().body("removed"),
                            Ok(Ok(false)) => HttpResponse::NotFound().body("not running"),
                            Ok(Err(e)) => HttpResponse::InternalServerError().body(e),
                            Err(_) => HttpResponse::ServiceUnavailable().body("serve is stopping"),
                        }
                    }
                    #[cfg(feature = "fault-injection")]
                    "fault-keystore" | "fault-validator" => {
                        let target = op.trim_start_matches("fault-").to_owned();
                        let (reply_tx, reply_rx) = oneshot::channel();
                        let _ = tx.send(ControlCommand::InjectFault { target, reply_tx }).await;
                        match reply_rx.await {
                            Ok(()) => HttpResponse::Ok().body("armed"),
                            Err(_) => HttpResponse::ServiceUnavailable().body("serve is stopping"),
                        }
                    }
                    _ => HttpResponse::NotFound().body("unknown command"),
                }
            },
        ),
    );
}

/// What serve answered a control command.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// Done.
    Done,
    /// serve does not run that workload.
    NotRunning,
}

/// Sends `op` for `workload` to the serve whose control socket is `socket`.
/// Blocking, with a 10-second bound.
///
/// # Errors
///
/// [`Error::NotRunning`] when nothing listens; [`Error::Control`] when
/// serve refused.
pub fn send(socket: &Path, workload: &WorkloadName, op: &str) -> Result<Answer, Error> {
    #[cfg(unix)]
    {
        use std::os::unix::net::UnixStream;

        let not_running = || Error::NotRunning {
            dir: socket.parent().unwrap_or(socket).to_owned(),
        };
        let mut stream = UnixStream::connect(socket).map_err(|_| not_running())?;
        stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
        stream.set_write_timeout(Some(Duration::from_secs(10))).ok();
        let request = format!(
            "POST /v1/workloads/{workload}/{op} HTTP/1.1\r\nHost: localhost\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .map_err(|e| Error::Control(format!("cannot send: {e}")))?;
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .map_err(|e| Error::Control(format!("no answer: {e}")))?;

        let status = response.split_whitespace().nth(1).unwrap_or("");
        let body = response.split("\r\n\r\n").nth(1).unwrap_or("").trim();
        match status {
            "200" => Ok(Answer::Done),
            "404" if body == "not running" => Ok(Answer::NotRunning),
            _ => Err(Error::Control(format!("{status} {body}"))),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (socket, workload, op);
        Err(Error::Control(
            "control sockets need a Unix platform".into(),
        ))
    }
}
