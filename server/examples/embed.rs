//! Someone else's actix-web service with thv-actor's shared key in front of
//! its `/api` routes, and `/public/health` left open.
//!
//! ```text
//! cargo run -p thv-server --example embed
//! ```
//!
//! Environment:
//!
//! - `THV_ACTOR_KEYSTORE`: `auto` (the default), `secret-service`,
//!   `keyutils`, `macos-keychain` or `windows-credential-manager`
//! - `EMBED_WORKLOAD`: the workload whose key guards `/api` (default
//!   `embedded-demo`); the key is created when missing and kept on exit
//! - `EMBED_PORT`: the loopback port (default 0: any free port)
//! - `EMBED_SHARED_VALIDATOR=1`: one Validator for every worker instead of
//!   one per worker (see "One Validator per worker, or one shared" in the
//!   docs)
//! - `EMBED_SELF_TEST=1`: instead of serving until SIGTERM or ctrl-c, make
//!   one request without the key (expects 401) and one with it (expects
//!   200), print `self-test ok`, delete the key and exit
//!
//! This file is the source of truth for the excerpts in docs/embedding.md.

use std::net::{Ipv4Addr, TcpListener};
use std::process::ExitCode;

use actix::Addr;
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpResponse, HttpServer};
use thv_actors::{
    Backend, BackendChoice, CreateKey, DeleteKeys, GetKeys, KeyStore, Validator, ValidatorConfig,
    Validators, WorkloadName,
};
use thv_server::auth::{AuthenticatedWorkload, SharedKeyAuth, KEY_HEADER};
use thv_server::guard::LoopbackGuard;

type Error = Box<dyn std::error::Error>;

/// What the environment asked for.
struct Settings {
    keystore: BackendChoice,
    workload: WorkloadName,
    port: u16,
    shared_validator: bool,
    self_test: bool,
}

impl Settings {
    fn from_env() -> Result<Settings, Error> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());

        let keystore = var("THV_ACTOR_KEYSTORE")
            .as_deref()
            .unwrap_or("auto")
            .parse()?;
        let workload =
            WorkloadName::new(var("EMBED_WORKLOAD").as_deref().unwrap_or("embedded-demo"))?;
        let port = match var("EMBED_PORT") {
            Some(port) => port
                .parse()
                .map_err(|e| format!("EMBED_PORT is not a port number: {e}"))?,
            None => 0,
        };
        let shared_validator = var("EMBED_SHARED_VALIDATOR").is_some_and(|v| v == "1");
        let self_test = var("EMBED_SELF_TEST").is_some_and(|v| v == "1");

        Ok(Settings {
            keystore,
            workload,
            port,
            shared_validator,
            self_test,
        })
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("embed: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Error> {
    let settings = Settings::from_env()?;

    // Before any thread starts: lets a process started without
    // DBUS_SESSION_BUS_ADDRESS find the Secret Service.
    thv_actors::prepare_session_bus(None);

    // Opening the keychain blocks; do it before the async runtime exists.
    let backend = Backend::open(settings.keystore)?;

    actix_web::rt::System::new().block_on(serve(settings, backend))
}

async fn serve(settings: Settings, backend: Backend) -> Result<(), Error> {
    // The KeyStore actor owns every keychain call, on a thread of its own.
    let keystore = KeyStore::start(backend)?;
    let workload = settings.workload.clone();
    let created = keystore
        .send(CreateKey {
            workload: workload.clone(),
        })
        .await??;
    if created {
        eprintln!("created a key for workload {workload}");
    }

    // Bind first: the guard must know the port, and port 0 picks one.
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, settings.port))?;
    let port = listener.local_addr()?.port();

    // Every worker's Validator, so that a rotation or deletion can reach
    // their caches with `validators.invalidate(Some(&workload))`.
    let validators = Validators::new();

    // The alternative: one Validator on this thread, asked from every
    // worker across threads.
    let shared = settings.shared_validator.then(|| {
        let validator = Validator::start(keystore.clone(), ValidatorConfig::default());
        validators.register(&validator);
        validator
    });

    let app_workload = workload.clone();
    let app_keystore = keystore.clone();
    let server = HttpServer::new(move || {
        // One Validator per worker, started in the worker's own arbiter:
        // the middleware asks it without crossing threads.
        let validator = shared.clone().unwrap_or_else(|| {
            let validator = Validator::start(app_keystore.clone(), ValidatorConfig::default());
            validators.register(&validator);
            validator
        });

        App::new()
            // Outermost: refuse foreign Host and Origin before anything else.
            .wrap(LoopbackGuard::new(port, &[]))
            .route("/public/health", web::get().to(health))
            .service(
                web::scope("/api")
                    .wrap(SharedKeyAuth::new(app_workload.clone(), validator))
                    .route("/whoami", web::get().to(whoami)),
            )
    })
    .listen(listener)?
    .run();
    println!("listening on http://127.0.0.1:{port}");

    if !settings.self_test {
        // HttpServer stops gracefully on SIGTERM and ctrl-c.
        eprintln!("the key for /api: `thv-actor key show {workload}`");
        server.await?;
        return Ok(());
    }

    let handle = server.handle();
    let running = actix_web::rt::spawn(server);
    let outcome = self_test(&keystore, &workload, port).await;

    handle.stop(true).await;
    let _ = running.await;
    keystore.send(DeleteKeys { workload }).await??;
    outcome?;
    println!("self-test ok");
    Ok(())
}

/// Open to anyone who passes the guard.
async fn health() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(r#"{"status":"ok"}"#)
}

/// Only reached with the workload's key; the middleware put who it was in
/// the request extensions.
async fn whoami(caller: web::ReqData<AuthenticatedWorkload>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(serde_json::json!({ "workload": caller.workload.as_str() }).to_string())
}

/// One request without the key and one with it, over real HTTP.
async fn self_test(
    keystore: &Addr<KeyStore>,
    workload: &WorkloadName,
    port: u16,
) -> Result<(), Error> {
    // awc is built with rustls; it needs a crypto provider even for http.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = awc::Client::default();
    let url = format!("http://127.0.0.1:{port}/api/whoami");

    let public = client
        .get(format!("http://127.0.0.1:{port}/public/health"))
        .send()
        .await?;
    expect(
        public.status(),
        StatusCode::OK,
        "/public/health without a key",
    )?;

    let refused = client.get(&url).send().await?;
    expect(
        refused.status(),
        StatusCode::UNAUTHORIZED,
        "/api/whoami without a key",
    )?;

    let key = keystore
        .send(GetKeys {
            workload: workload.clone(),
        })
        .await??
        .current;
    let mut admitted = client
        .get(&url)
        .insert_header((KEY_HEADER, key.expose_encoded().as_str()))
        .send()
        .await?;
    expect(
        admitted.status(),
        StatusCode::OK,
        "/api/whoami with the key",
    )?;
    let body: serde_json::Value = admitted.json().await?;
    if body["workload"] != workload.as_str() {
        return Err(format!("/api/whoami answered {body}, not workload {workload}").into());
    }
    Ok(())
}

fn expect(got: StatusCode, want: StatusCode, what: &str) -> Result<(), Error> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: expected {want}, got {got}").into())
    }
}
