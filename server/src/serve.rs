//! `thv-actor serve`: every workload behind its own authenticating listener
//! on loopback.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix::Addr;
use actix_web::dev::ServerHandle;
use actix_web::middleware::Condition;
use actix_web::{web, App, HttpResponse, HttpServer};
use thv_actors::{
    Backend, BackendChoice, BackendKind, CreateKey, DeleteKeys, GetKeyInfo, GetKeys, KeyStore,
    PruneKeys, RefreshBackend, RotateKey, Validator, ValidatorConfig, Validators, WorkloadName,
};
use tokio::sync::mpsc;
use zeroize::Zeroizing;

use crate::auth::{AuthStats, SharedKeyAuth};
use crate::config::{Config, Listen, Transport, Upstream, Workload};
use crate::control::{self, ControlCommand};
use crate::error::Error;
use crate::guard::LoopbackGuard;
use crate::peer::{self, PeerGuard, PeerPolicy};
use crate::proxy::{self, HttpUpstream, UpstreamSpec, UpstreamTransport};
use crate::state::{Ports, ServeLock, ServeState, WorkloadState, STATE_VERSION};
use crate::stdio::{self, StdioHost, StdioSpec};

/// How often the kernel keyring's persistent keyring has its expiry reset.
const KEYRING_REFRESH: Duration = Duration::from_secs(3600);

/// Everything serve needs to start.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The workloads.
    pub config: Config,
    /// Where the workloads came from, for error messages (the config path,
    /// "the command line", "the built-in demo workload").
    pub origin: String,
    /// Which keystore.
    pub keystore: BackendChoice,
    /// The state directory.
    pub state_dir: PathBuf,
    /// How the Validators cache.
    pub validator: ValidatorConfig,
    /// One Validator per worker thread (the default), or one shared by all
    /// workers of a listener (kept to measure the difference).
    pub validator_per_worker: bool,
    /// Worker threads per workload listener.
    pub workers: usize,
    /// Bound on connecting to an HTTP upstream.
    pub connect_timeout: Duration,
    /// How often the rotation schedule and expired previous keys are
    /// checked.
    pub maintenance_interval: Duration,
    /// The length of a day for `key_rotation_days`; 86 400 s except in tests.
    pub day: Duration,
}

impl ServeOptions {
    /// Options with the defaults for `config`.
    pub fn new(
        config: Config,
        origin: String,
        keystore: BackendChoice,
        state_dir: PathBuf,
    ) -> ServeOptions {
        ServeOptions {
            config,
            origin,
            keystore,
            state_dir,
            validator: ValidatorConfig::default(),
            validator_per_worker: true,
            workers: std::thread::available_parallelism().map_or(2, |n| n.get().min(4)),
            connect_timeout: Duration::from_secs(5),
            maintenance_interval: Duration::from_secs(30),
            day: Duration::from_secs(86_400),
        }
    }
}

/// A workload that is being served.
struct Running {
    workload: Workload,
    /// A Unix socket listener's file, removed when the workload stops.
    socket_path: Option<PathBuf>,
    server: ServerHandle,
    stdio: Option<StdioHost>,
    state: WorkloadState,
}

/// What every workload's listener shares.
struct Shared {
    keystore: Addr<KeyStore>,
    validators: Validators,
    options: ServeOptions,
    /// The stdio hosts of `inject_key_env` workloads, which need the key
    /// again after a rotation.
    injected: std::sync::Mutex<BTreeMap<WorkloadName, StdioHost>>,
}

/// Runs serve until SIGINT or SIGTERM: starts every workload, publishes the
/// state, prints one line per workload, then serves; at the end stops the
/// workloads and removes the state. Call inside an actix `System`.
///
/// # Errors
///
/// Any start-up failure (another serve running, the keychain unreachable, a
/// port taken, a command that cannot be spawned), after stopping what had
/// started.
pub async fn run(options: ServeOptions) -> Result<(), Error> {
    let dir = options.state_dir.clone();
    let lock = ServeLock::acquire(&dir)?;

    // The keychain probe blocks: keep it off this async thread.
    let choice = options.keystore;
    let backend = actix_web::rt::task::spawn_blocking(move || Backend::open(choice))
        .await
        .map_err(|_| Error::Control("keystore probe panicked".into()))??;
    let kind = backend.kind();
    tracing::info!(keystore = %kind, "keystore ready");
    let shared = Arc::new(Shared {
        keystore: KeyStore::start(backend)?,
        validators: Validators::new(),
        options,
        injected: Default::default(),
    });

    let mut ports = Ports::load(&dir);
    let mut running: BTreeMap<WorkloadName, Running> = BTreeMap::new();
    for workload in shared.options.config.workloads.clone() {
        match start_workload(&shared, workload, &mut ports).await {
            Ok(r) => {
                running.insert(r.workload.name.clone(), r);
            }
            Err(err) => {
                stop_all(&mut running).await;
                return Err(err);
            }
        }
    }
    ports.save(&dir)?;

    let (commands_tx, mut commands_rx) = mpsc::channel(16);
    let control_socket = dir.join("control.sock");
    let control = start_control(&control_socket, commands_tx)?;

    let publish = |running: &BTreeMap<WorkloadName, Running>| {
        lock.publish(&ServeState {
            version: STATE_VERSION,
            pid: std::process::id(),
            keystore: kind,
            dbus_session_bus_address: (kind == BackendKind::SecretService)
                .then(|| std::env::var("DBUS_SESSION_BUS_ADDRESS").ok())
                .flatten(),
            control_socket: control_socket.clone(),
            workloads: ordered_states(&shared.options.config, running),
        })
    };
    // Signal handlers go in before the lines that say serve is ready, so a
    // supervisor that stops serve as soon as it is ready gets a clean stop.
    let signals = Signals {
        terminate: signal(tokio::signal::unix::SignalKind::terminate())?,
        interrupt: signal(tokio::signal::unix::SignalKind::interrupt())?,
    };
    publish(&running)?;
    for state in ordered_states(&shared.options.config, &running) {
        println!(
            "{}  {}  (connect an MCP client with: thv-actor bridge {})",
            state.name, state.url, state.name
        );
    }
    use std::io::Write as _;
    let _ = std::io::stdout().flush();

    let outcome = serve_until_signal(
        signals,
        &shared,
        &mut running,
        &mut ports,
        &mut commands_rx,
        &publish,
    )
    .await;

    tracing::info!("stopping");
    stop_all(&mut running).await;
    control.stop(true).await;
    lock.withdraw();
    outcome
}

/// The workloads being served, by name.
type RunningSet = BTreeMap<WorkloadName, Running>;

/// The signals that stop serve.
struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

async fn serve_until_signal(
    mut signals: Signals,
    shared: &Arc<Shared>,
    running: &mut RunningSet,
    ports: &mut Ports,
    commands_rx: &mut mpsc::Receiver<ControlCommand>,
    publish: &dyn Fn(&RunningSet) -> Result<(), Error>,
) -> Result<(), Error> {
    // Keychain work runs beside the loop, never in it: a slow or hung
    // keychain must not hold up a signal or a control command.
    let every = shared.options.maintenance_interval;
    let mut maintenance = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    maintenance.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut refresh = tokio::time::interval(KEYRING_REFRESH);
    let busy = Arc::new(std::sync::atomic::AtomicBool::new(false));

    loop {
        tokio::select! {
            _ = signals.terminate.recv() => return Ok(()),
            _ = signals.interrupt.recv() => return Ok(()),
            _ = refresh.tick() => {
                let keystore = shared.keystore.clone();
                actix_web::rt::spawn(async move {
                    if let Err(err) = ask(&keystore, RefreshBackend).await {
                        tracing::warn!(error = %err, "cannot refresh the keyring");
                    }
                });
            }
            _ = maintenance.tick() => {
                use std::sync::atomic::Ordering;
                // One pass at a time; a tick that finds one running is skipped.
                if !busy.swap(true, Ordering::AcqRel) {
                    let (shared, busy) = (shared.clone(), busy.clone());
                    actix_web::rt::spawn(async move {
                        maintain(&shared).await;
                        busy.store(false, Ordering::Release);
                    });
                }
            }
            Some(command) = commands_rx.recv() => match command {
                ControlCommand::Invalidate { workload, reply_tx } => {
                    tracing::debug!(workload = %workload, "keys changed elsewhere; dropping cached keys");
                    shared.validators.invalidate(Some(&workload));
                    let _ = reply_tx.send(());
                    let shared = shared.clone();
                    actix_web::rt::spawn(async move { refresh_injected_key(&shared, &workload).await });
                }
                #[cfg(feature = "fault-injection")]
                ControlCommand::InjectFault { target, reply_tx } => {
                    tracing::warn!(target = %target, "fault injection armed");
                    if target == "keystore" {
                        let _ = shared.keystore.send(thv_actors::InjectBackendPanic).await;
                    } else {
                        shared.validators.inject_panic();
                    }
                    let _ = reply_tx.send(());
                }
                ControlCommand::Remove { workload, reply_tx } => {
                    let answer = remove(shared, running, ports, &workload).await;
                    if answer.is_ok() {
                        if let Err(err) = publish(running) {
                            tracing::warn!(error = %err, "cannot update the state file");
                        }
                    }
                    let _ = reply_tx.send(answer.map_err(|e| e.to_string()));
                }
            },
        }
    }
}

fn signal(kind: tokio::signal::unix::SignalKind) -> Result<tokio::signal::unix::Signal, Error> {
    tokio::signal::unix::signal(kind).map_err(|e| Error::Workload {
        workload: "serve".into(),
        message: format!("cannot install a signal handler: {e}"),
    })
}

/// Rotates keys that are due and drops previous keys whose overlap ended,
/// for this serve's workloads only.
async fn maintain(shared: &Arc<Shared>) {
    let now = SystemTime::now();
    for workload in &shared.options.config.workloads {
        if !workload.shared_key_auth {
            continue;
        }
        let asked = GetKeyInfo {
            workload: workload.name.clone(),
        };
        let info = match ask(&shared.keystore, asked).await {
            Ok(Some(info)) => info,
            Ok(None) => continue,
            Err(err) => {
                tracing::warn!(workload = %workload.name, error = %err, "cannot read key times");
                continue;
            }
        };

        if info.previous_expiries.first().is_some_and(|t| *t <= now) {
            let prune = PruneKeys {
                workload: workload.name.clone(),
            };
            if let Ok(true) = ask(&shared.keystore, prune).await {
                shared.validators.invalidate(Some(&workload.name));
            }
        }

        if workload.key_rotation_days == 0 {
            continue;
        }
        let last = info.rotated_at.unwrap_or(info.created_at);
        let every = shared
            .options
            .day
            .saturating_mul(workload.key_rotation_days);
        if last + every > now {
            continue;
        }
        let rotate = RotateKey {
            workload: workload.name.clone(),
            overlap: workload.rotation_overlap,
        };
        match ask(&shared.keystore, rotate).await {
            Ok(_) => {
                tracing::info!(
                    workload = %workload.name,
                    days = workload.key_rotation_days,
                    "scheduled key rotation"
                );
                shared.validators.invalidate(Some(&workload.name));
                refresh_injected_key(shared, &workload.name).await;
            }
            Err(err) => {
                tracing::warn!(workload = %workload.name, error = %err, "scheduled rotation failed")
            }
        }
    }
}

/// After a rotation, gives an `inject_key_env` workload's new processes the
/// new key.
async fn refresh_injected_key(shared: &Arc<Shared>, workload: &WorkloadName) {
    let host = shared
        .injected
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(workload)
        .cloned();
    let Some(host) = host else { return };

    let asked = GetKeys {
        workload: workload.clone(),
    };
    match ask(&shared.keystore, asked).await {
        Ok(keys) => {
            host.replace_injected_key(Zeroizing::new(keys.current.expose_encoded().to_string()));
            tracing::warn!(
                workload = %workload,
                "the key changed: processes started from now on get the new TOOLHIVE_SHARED_KEY; \
                 those already running keep the one they were started with"
            );
        }
        Err(err) => tracing::warn!(
            workload = %workload,
            error = %err,
            "cannot read the rotated key for TOOLHIVE_SHARED_KEY"
        ),
    }
}

async fn remove(
    shared: &Arc<Shared>,
    running: &mut BTreeMap<WorkloadName, Running>,
    ports: &mut Ports,
    workload: &WorkloadName,
) -> Result<bool, Error> {
    let Some(r) = running.remove(workload) else {
        return Ok(false);
    };
    stop(r).await;
    shared
        .injected
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(workload);
    ask(
        &shared.keystore,
        DeleteKeys {
            workload: workload.clone(),
        },
    )
    .await?;
    shared.validators.invalidate(Some(workload));
    ports.remove(workload.as_str());
    ports.save(&shared.options.state_dir)?;
    tracing::info!(workload = %workload, "workload removed");
    Ok(true)
}

async fn start_workload(
    shared: &Arc<Shared>,
    workload: Workload,
    ports: &mut Ports,
) -> Result<Running, Error> {
    let name = workload.name.clone();
    let fail = |message: String| Error::Workload {
        workload: name.to_string(),
        message,
    };

    // The listener, bound first so that a taken port is a start-up error
    // that leaves no key behind.
    let listener = bind(shared, &workload, ports)?;
    let port = match &listener {
        Bound::Tcp(tcp) => {
            let port = tcp.local_addr().map_err(|e| fail(e.to_string()))?.port();
            if workload.port.is_none() {
                ports.set(name.as_str(), port);
            }
            port
        }
        Bound::Unix(..) => 0,
    };
    let base = match &listener {
        Bound::Tcp(_) => format!("http://127.0.0.1:{port}"),
        Bound::Unix(_, path) => format!("unix:{}", path.display()),
    };
    let socket_path = match &listener {
        Bound::Unix(_, path) => Some(path.clone()),
        Bound::Tcp(_) => None,
    };
    if !workload.peer_check {
        tracing::warn!(
            workload = %name,
            "PEER CHECK IS OFF for this workload: processes of other users are not refused"
        );
    }

    // Keys: made when the workload is first deployed.
    let mut inject_key = None;
    if workload.shared_key_auth {
        ask(
            &shared.keystore,
            CreateKey {
                workload: name.clone(),
            },
        )
        .await?;
        if workload.inject_key_env {
            let keys = ask(
                &shared.keystore,
                GetKeys {
                    workload: name.clone(),
                },
            )
            .await?;
            inject_key = Some(Zeroizing::new(keys.current.expose_encoded().to_string()));
        }
    } else {
        tracing::warn!(
            workload = %name,
            "SHARED KEY AUTH IS OFF for this workload: any local process can use it"
        );
    }

    // The upstream.
    let (route, stdio_host, upstream) = match &workload.upstream {
        Upstream::Command { argv, env } => {
            let host = StdioHost::start(StdioSpec {
                workload: name.clone(),
                command: argv.clone(),
                env: env.clone(),
                inject_key,
                session_idle_timeout: workload.session_idle_timeout,
            })
            .map_err(|e| fail(with_causes(&e)))?;
            if workload.inject_key_env && workload.shared_key_auth {
                let mut injected = shared.injected.lock().unwrap_or_else(|p| p.into_inner());
                injected.insert(name.clone(), host.clone());
            }
            ("/mcp", Some(host.clone()), Target::Stdio(host))
        }
        Upstream::Url {
            url,
            transport,
            headers,
        } => {
            let spec = UpstreamSpec {
                workload: name.clone(),
                url: url.clone(),
                transport: match transport {
                    Transport::StreamableHttp => UpstreamTransport::StreamableHttp,
                    Transport::Sse => UpstreamTransport::Sse,
                },
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                connect_timeout: shared.options.connect_timeout,
            };
            let upstream =
                HttpUpstream::new(spec).map_err(|e| fail(format!("field `url`: {e}")))?;
            let route = if *transport == Transport::Sse {
                "/sse"
            } else {
                "/mcp"
            };
            (route, None, Target::Http(upstream))
        }
    };

    let server =
        listen(shared, &workload, port, upstream, listener).map_err(|e| fail(e.to_string()))?;
    let state = WorkloadState {
        name: name.to_string(),
        url: match &socket_path {
            Some(_) => base,
            None => format!("{base}{route}"),
        },
        transport: if route == "/sse" {
            "sse"
        } else {
            "streamable-http"
        }
        .into(),
        upstream: match &workload.upstream {
            Upstream::Command { .. } => "stdio".into(),
            Upstream::Url { transport, .. } => transport.as_str().into(),
        },
        shared_key_auth: workload.shared_key_auth,
        pid: std::process::id(),
    };
    tracing::info!(workload = %name, url = %state.url, upstream = %state.upstream, "workload listening");
    Ok(Running {
        workload,
        server,
        stdio: stdio_host,
        state,
        socket_path,
    })
}

#[derive(Clone)]
enum Target {
    Stdio(StdioHost),
    Http(HttpUpstream),
}

/// A bound listener, not yet serving.
enum Bound {
    Tcp(TcpListener),
    Unix(std::os::unix::net::UnixListener, PathBuf),
}

fn bind(shared: &Arc<Shared>, workload: &Workload, ports: &Ports) -> Result<Bound, Error> {
    if let Listen::Unix(path) = &workload.listen {
        return bind_unix(shared, workload, path).map(|l| Bound::Unix(l, path.clone()));
    }
    bind_tcp(shared, workload, ports).map(Bound::Tcp)
}

/// Binds a Unix socket, mode 0600, in a directory only this user can enter.
fn bind_unix(
    shared: &Arc<Shared>,
    workload: &Workload,
    path: &std::path::Path,
) -> Result<std::os::unix::net::UnixListener, Error> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    let fail = |message: String| Error::Bind {
        field: "listen",
        origin: shared.options.origin.clone(),
        workload: workload.name.to_string(),
        addr: format!("unix:{}", path.display()),
        source: std::io::Error::other(message),
    };
    let dir = path
        .parent()
        .ok_or_else(|| fail("no parent directory".into()))?;
    thv_actors::create_private_dir(dir).map_err(|e| fail(e.to_string()))?;
    let meta = std::fs::metadata(dir).map_err(|e| fail(e.to_string()))?;
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    if meta.uid() != uid || meta.mode() & 0o077 != 0 {
        return Err(fail(format!(
            "directory {} must belong to uid {uid} and be closed to others \
             (chmod 700)",
            dir.display()
        )));
    }

    // A socket file left by a serve that died is stale: nothing listens.
    if std::os::unix::net::UnixStream::connect(path).is_err() {
        let _ = std::fs::remove_file(path);
    }
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(|e| fail(e.to_string()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| fail(e.to_string()))?;
    Ok(listener)
}

fn bind_tcp(
    shared: &Arc<Shared>,
    workload: &Workload,
    ports: &Ports,
) -> Result<TcpListener, Error> {
    let bind_err = |origin: &str, port: u16, source| Error::Bind {
        field: "port",
        origin: origin.to_owned(),
        workload: workload.name.to_string(),
        addr: format!("127.0.0.1:{port}"),
        source,
    };

    if let Some(port) = workload.port {
        return TcpListener::bind((Ipv4Addr::LOCALHOST, port))
            .map_err(|e| bind_err(&shared.options.origin, port, e));
    }
    if let Some(port) = ports.get(workload.name.as_str()) {
        match TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
            Ok(listener) => return Ok(listener),
            Err(err) => tracing::warn!(
                workload = %workload.name,
                port,
                error = %err,
                "the port this workload had before is taken; picking another"
            ),
        }
    }
    TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .map_err(|e| bind_err(&shared.options.origin, 0, e))
}

fn listen(
    shared: &Arc<Shared>,
    workload: &Workload,
    port: u16,
    target: Target,
    listener: Bound,
) -> std::io::Result<ServerHandle> {
    let name = workload.name.clone();
    let peer_on = workload.peer_check;
    let mut policy = PeerPolicy {
        enabled: workload.peer_check,
        ..PeerPolicy::default()
    };
    if !workload.allowed_uids.is_empty() {
        policy.allowed_uids = workload.allowed_uids.clone();
    }
    let auth_on = workload.shared_key_auth;
    let origins = workload.allowed_origins.clone();
    let keystore = shared.keystore.clone();
    let validators = shared.validators.clone();
    let validator_config = shared.options.validator;
    let stats = Arc::new(AuthStats::default());
    let shared_validator = (!shared.options.validator_per_worker).then(|| {
        let validator = Validator::start(keystore.clone(), validator_config);
        validators.register(&validator);
        validator.do_send(thv_actors::Preload {
            workload: name.clone(),
        });
        validator
    });

    let server = HttpServer::new(move || {
        // One Validator per worker thread by default: the middleware asks it
        // without crossing threads.
        let validator = shared_validator.clone().unwrap_or_else(|| {
            let validator = Validator::start(keystore.clone(), validator_config);
            validators.register(&validator);
            validator
        });
        if auth_on {
            validator.do_send(thv_actors::Preload {
                workload: name.clone(),
            });
        }
        let auth = SharedKeyAuth::with_stats(name.clone(), validator, stats.clone());
        let target = target.clone();

        // The last wrap runs first: who the peer is, then Host and Origin,
        // then (in the scope) the key.
        App::new()
            .wrap(LoopbackGuard::new(port, &origins))
            .wrap(Condition::new(
                peer_on,
                PeerGuard::new(policy.clone(), name.clone()),
            ))
            .route("/health", web::get().to(health))
            .service(
                web::scope("")
                    .wrap(Condition::new(auth_on, auth))
                    .configure(move |cfg| match target {
                        Target::Stdio(host) => stdio::configure(cfg, host),
                        Target::Http(upstream) => proxy::configure(cfg, upstream),
                    }),
            )
    })
    .workers(shared.options.workers)
    .disable_signals()
    .shutdown_timeout(2)
    .on_connect(peer::on_connect);
    // listen_uds, not bind_uds: only listeners added this way run the
    // connection hook that records the peer's identity.
    let server = match listener {
        Bound::Tcp(tcp) => server.listen(tcp)?,
        Bound::Unix(unix, _) => server.listen_uds(unix)?,
    }
    .run();

    let handle = server.handle();
    actix_web::rt::spawn(server);
    Ok(handle)
}

async fn health() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(r#"{"status":"ok"}"#)
}

fn start_control(
    socket: &std::path::Path,
    commands_tx: mpsc::Sender<ControlCommand>,
) -> Result<ServerHandle, Error> {
    let _ = std::fs::remove_file(socket);
    let server = HttpServer::new(move || {
        let tx = commands_tx.clone();
        App::new().configure(move |cfg| control::configure(cfg, tx))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .bind_uds(socket)
    .map_err(|e| Error::state("cannot listen on", socket, e))?
    .run();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::state("cannot restrict", socket, e))?;
    }
    let handle = server.handle();
    actix_web::rt::spawn(server);
    Ok(handle)
}

fn ordered_states(
    config: &Config,
    running: &BTreeMap<WorkloadName, Running>,
) -> Vec<WorkloadState> {
    config
        .workloads
        .iter()
        .filter_map(|w| running.get(&w.name).map(|r| r.state.clone()))
        .collect()
}

async fn stop(r: Running) {
    r.server.stop(true).await;
    if let Some(host) = r.stdio {
        host.shutdown().await;
    }
    if let Some(path) = r.socket_path {
        let _ = std::fs::remove_file(path);
    }
}

async fn stop_all(running: &mut BTreeMap<WorkloadName, Running>) {
    let all = std::mem::take(running);
    futures_util::future::join_all(all.into_values().map(stop)).await;
}

async fn ask<M, T>(keystore: &Addr<KeyStore>, msg: M) -> Result<T, thv_actors::Error>
where
    M: actix::Message<Result = Result<T, thv_actors::Error>> + Send + 'static,
    T: Send + 'static,
    KeyStore: actix::Handler<M>,
{
    keystore
        .send(msg)
        .await
        .map_err(|e| thv_actors::Error::from_mailbox("keystore", e))?
}

/// `err` and its sources on one line: "cannot start x: No such file or
/// directory (os error 2)".
fn with_causes(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
