//! `SharedKeyAuth` and `LoopbackGuard` on a real actix-web `App`, driven
//! through `actix_web::test`, with keys from the kernel keyring.
//!
//! The App is what an embedder builds: the guard wrapped around everything,
//! an `/api` scope behind `SharedKeyAuth`, a `/public` route without it, and
//! an outer `DefaultHeaders` standing in for middleware such as CORS that
//! must still run when a request is refused. The `/api` handler echoes the
//! headers it received and the `AuthenticatedWorkload` it found, so the tests
//! see exactly what reaches application code.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::Addr;
use actix_web::http::header::{HeaderValue, AUTHORIZATION, HOST, ORIGIN, WWW_AUTHENTICATE};
use actix_web::http::StatusCode;
use actix_web::middleware::DefaultHeaders;
use actix_web::{test, web, App, HttpMessage, HttpRequest, HttpResponse};
use serde_json::{json, Value};
use thv_actors::testing::leaks;
use thv_actors::{
    Backend, BackendChoice, BackendKind, CreateKey, DeleteKeys, GetKeys, KeyStore, SharedKey,
    Validator, ValidatorConfig, WorkloadName,
};
use thv_server::auth::{AuthStats, AuthenticatedWorkload, SharedKeyAuth, CHALLENGE, KEY_HEADER};
use thv_server::guard::LoopbackGuard;

#[path = "../../tests/support/unique.rs"]
mod unique;

/// The port the guard is told the listener has; `TestRequest` needs no real
/// listener, only a `Host` that names it.
const PORT: u16 = 48811;

/// The header the outer middleware adds to every response.
const OUTER: &str = "x-outer-middleware";

/// Longest any one test may take.
const LIMIT: Duration = Duration::from_secs(60);

/// Runs `test` or fails once it has taken [`LIMIT`].
async fn bounded<F: Future>(test: F) -> F::Output {
    tokio::time::timeout(LIMIT, test)
        .await
        .expect("the test did not finish within its time limit")
}

/// The App under test, initialised as a service.
macro_rules! app {
    ($workload:expr, $validator:expr, $stats:expr) => {
        test::init_service(
            App::new()
                .wrap(LoopbackGuard::new(PORT, &[]))
                .wrap(DefaultHeaders::new().add((OUTER, "ran")))
                .route("/public/health", web::get().to(HttpResponse::Ok))
                .service(
                    web::scope("/api")
                        .wrap(SharedKeyAuth::with_stats($workload, $validator, $stats))
                        .route("/echo", web::to(echo)),
                ),
        )
        .await
    };
}

/// Answers with every header it received and the authenticated workload.
async fn echo(req: HttpRequest) -> HttpResponse {
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in req.headers() {
        headers
            .entry(name.as_str().to_owned())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let workload = req
        .extensions()
        .get::<AuthenticatedWorkload>()
        .map(|a| a.workload.as_str().to_owned());

    HttpResponse::Ok()
        .content_type("application/json")
        .body(json!({ "headers": headers, "workload": workload }).to_string())
}

/// A request to `path` as a loopback client sends it: a peer address and a
/// `Host` naming the listener.
fn request(path: &str) -> test::TestRequest {
    let peer: SocketAddr = "127.0.0.1:50123".parse().unwrap();
    test::TestRequest::get()
        .uri(path)
        .peer_addr(peer)
        .insert_header((HOST, format!("127.0.0.1:{PORT}")))
}

/// A workload name no other test, and no earlier run, uses.
fn unique_workload(tag: &str) -> WorkloadName {
    WorkloadName::new(&unique::unique_name("mw", tag)).unwrap()
}

fn keyutils() -> Backend {
    Backend::open(BackendChoice::Named(BackendKind::Keyutils))
        .unwrap_or_else(|err| panic!("the kernel keyring is needed by this test: {err}"))
}

/// Two workloads with real keys in the kernel keyring, deleted on drop
/// (also when the test fails).
struct Keys {
    backend: Backend,
    store: Addr<KeyStore>,
    workload: WorkloadName,
    key: SharedKey,
    other_key: SharedKey,
    other: WorkloadName,
}

impl Keys {
    async fn create(tag: &str) -> Keys {
        let backend = keyutils();
        let store = KeyStore::start(backend.clone()).unwrap();
        let workload = unique_workload(tag);
        let other = unique_workload(&format!("{tag}-other"));

        let mut keys = Vec::new();
        for w in [&workload, &other] {
            let created = store
                .send(CreateKey {
                    workload: w.clone(),
                })
                .await;
            assert!(created.unwrap().unwrap(), "a fresh workload got no new key");
            let set = store
                .send(GetKeys {
                    workload: w.clone(),
                })
                .await;
            keys.push(set.unwrap().unwrap().current);
        }
        let other_key = keys.pop().unwrap();
        let key = keys.pop().unwrap();

        Keys {
            backend,
            store,
            workload,
            key,
            other_key,
            other,
        }
    }

    fn validator(&self) -> Addr<Validator> {
        Validator::start(self.store.clone(), ValidatorConfig::default())
    }

    fn encoded(&self) -> String {
        self.key.expose_encoded().to_string()
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        // A KeyStore of its own on a thread of its own: this runs while the
        // test's System may be unwinding.
        let backend = self.backend.clone();
        let workloads = [self.workload.clone(), self.other.clone()];
        let cleanup = std::thread::spawn(move || {
            actix::System::new().block_on(async move {
                let Ok(store) = KeyStore::start(backend) else {
                    return;
                };
                for workload in workloads {
                    let _ = store.send(DeleteKeys { workload }).await;
                }
            })
        });
        let _ = cleanup.join();
    }
}

/// Log output of the current thread, at every level, as text.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// Starts capturing; capture ends when the guard drops.
    fn start() -> (Captured, tracing::subscriber::DefaultGuard) {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        (captured, guard)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Asserts `response` is the middleware's 401 and returns its body text.
async fn assert_unauthorized(
    response: actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>,
    case: &str,
) -> String {
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{case}");
    let challenge = response.headers().get(WWW_AUTHENTICATE).cloned();
    assert_eq!(
        challenge,
        Some(HeaderValue::from_static(CHALLENGE)),
        "{case}: the challenge"
    );
    let challenge = challenge.unwrap();
    assert!(
        !challenge
            .to_str()
            .unwrap()
            .to_ascii_lowercase()
            .starts_with("bearer"),
        "{case}: a Bearer challenge would start OAuth discovery in MCP clients"
    );
    assert_eq!(
        response.headers().get(OUTER).map(|v| v.as_bytes()),
        Some(&b"ran"[..]),
        "{case}: the outer middleware did not run on the refusal"
    );

    let body = test::read_body(response).await;
    let text = String::from_utf8(body.to_vec()).unwrap();
    let value: Value = serde_json::from_str(&text)
        .unwrap_or_else(|err| panic!("{case}: the 401 body is not JSON ({err}): {text}"));
    assert_eq!(value["jsonrpc"], "2.0", "{case}");
    assert_eq!(value["id"], Value::Null, "{case}");
    let message = value["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("X-ToolHive-Auth"),
        "{case}: the message does not name the header: {message}"
    );
    text
}

#[actix_rt::test]
async fn refuses_missing_wrong_malformed_and_foreign_keys_with_a_readable_401() {
    bounded(async {
        let keys = Keys::create("refuse").await;
        let stats = Arc::new(AuthStats::default());
        let app = app!(keys.workload.clone(), keys.validator(), stats.clone());
        let (captured, _capture) = Captured::start();

        let random = SharedKey::generate();
        let random_text = random.expose_encoded().to_string();
        let other_text = keys.other_key.expose_encoded().to_string();
        let malformed = "not-a-key-but-a-secret-looking-value-0123456789";
        let short = &keys.encoded()[..42];
        let cases: Vec<(&str, test::TestRequest)> = vec![
            ("missing", request("/api/echo")),
            (
                "key in the query string only",
                request(&format!("/api/echo?key={}", keys.encoded())),
            ),
            (
                "wrong",
                request("/api/echo").insert_header((KEY_HEADER, random_text.as_str())),
            ),
            (
                "wrong bearer",
                request("/api/echo")
                    .insert_header((AUTHORIZATION, format!("Bearer {random_text}"))),
            ),
            (
                "another workload's key",
                request("/api/echo").insert_header((KEY_HEADER, other_text.as_str())),
            ),
            (
                "malformed",
                request("/api/echo").insert_header((KEY_HEADER, malformed)),
            ),
            (
                "the real key cut short",
                request("/api/echo").insert_header((KEY_HEADER, short)),
            ),
            (
                "a non-bearer Authorization only",
                request("/api/echo")
                    .insert_header((AUTHORIZATION, format!("Basic {}", keys.encoded()))),
            ),
        ];
        let count = cases.len() as u64;

        for (case, req) in cases {
            let response = test::call_service(&app, req.to_request()).await;
            let body = assert_unauthorized(response, case).await;

            assert!(
                !leaks(&body, &random),
                "{case}: the body holds the presented key"
            );
            assert!(
                !leaks(&body, &keys.other_key),
                "{case}: the body holds a key"
            );
            assert!(
                !body.contains(malformed),
                "{case}: the body holds the value"
            );
            assert!(!body.contains(short), "{case}: the body holds the value");
        }

        // Every refusal is logged, and no line holds what was presented or
        // the workload's own key.
        let logs = captured.text();
        assert!(
            logs.matches("shared key refused").count() as u64 >= count,
            "expected one audit line per refusal:\n{logs}"
        );
        for reason in ["missing", "wrong_key", "malformed"] {
            assert!(
                logs.contains(reason),
                "no refusal logged with reason {reason}:\n{logs}"
            );
        }
        for presented in [&random, &keys.other_key, &keys.key] {
            assert!(!leaks(&logs, presented), "a key reached the logs:\n{logs}");
        }
        assert!(
            !logs.contains(malformed),
            "a presented value reached the logs"
        );
        assert!(!logs.contains(short), "a presented value reached the logs");

        assert_eq!(stats.refused.load(Ordering::Relaxed), count);
        assert_eq!(stats.accepted.load(Ordering::Relaxed), 0);
    })
    .await
}

#[actix_rt::test]
async fn accepts_the_header_and_the_bearer_form_and_strips_both() {
    bounded(async {
        let keys = Keys::create("accept").await;
        let stats = Arc::new(AuthStats::default());
        let app = app!(keys.workload.clone(), keys.validator(), stats.clone());
        let key = keys.encoded();

        let cases = [
            (
                "X-ToolHive-Auth",
                request("/api/echo").insert_header((KEY_HEADER, key.as_str())),
            ),
            (
                "Bearer",
                request("/api/echo").insert_header((AUTHORIZATION, format!("Bearer {key}"))),
            ),
            (
                "lower-case bearer",
                request("/api/echo").insert_header((AUTHORIZATION, format!("bearer {key}"))),
            ),
            (
                "both forms agreeing",
                request("/api/echo")
                    .insert_header((KEY_HEADER, key.as_str()))
                    .insert_header((AUTHORIZATION, format!("Bearer {key}"))),
            ),
        ];
        for (case, req) in cases {
            let req = req
                .insert_header(("x-custom", "kept"))
                .insert_header(("mcp-session-id", "abc"))
                .to_request();
            let response = test::call_service(&app, req).await;
            assert_eq!(response.status(), StatusCode::OK, "{case}");
            assert_eq!(response.headers().get(OUTER).unwrap(), "ran", "{case}");

            let body = test::read_body(response).await;
            let text = String::from_utf8(body.to_vec()).unwrap();
            let echoed: Value = serde_json::from_str(&text).unwrap();
            let headers = echoed["headers"].as_object().unwrap();

            assert_eq!(echoed["workload"], keys.workload.as_str(), "{case}");
            assert!(!headers.contains_key("x-toolhive-auth"), "{case}: {text}");
            assert!(!headers.contains_key("authorization"), "{case}: {text}");
            assert!(!leaks(&text, &keys.key), "{case}: the handler saw the key");
            assert_eq!(headers["x-custom"], json!(["kept"]), "{case}");
            assert_eq!(headers["mcp-session-id"], json!(["abc"]), "{case}");
        }
        assert_eq!(stats.accepted.load(Ordering::Relaxed), 4);
        assert_eq!(stats.refused.load(Ordering::Relaxed), 0);
    })
    .await
}

#[actix_rt::test]
async fn passes_a_non_bearer_authorization_beside_the_key_untouched() {
    bounded(async {
        let keys = Keys::create("basic").await;
        let app = app!(keys.workload.clone(), keys.validator(), Arc::default());

        let req = request("/api/echo")
            .insert_header((KEY_HEADER, keys.encoded()))
            .insert_header((AUTHORIZATION, "Basic dXNlcjpwYXNz"))
            .to_request();
        let response = test::call_service(&app, req).await;
        assert_eq!(response.status(), StatusCode::OK);

        let echoed: Value = test::read_body_json(response).await;
        assert_eq!(
            echoed["headers"]["authorization"],
            json!(["Basic dXNlcjpwYXNz"])
        );
        assert!(echoed["headers"].get("x-toolhive-auth").is_none());
    })
    .await
}

#[actix_rt::test]
async fn refuses_disagreeing_forms_and_repeated_headers() {
    bounded(async {
        let keys = Keys::create("conflict").await;
        let stats = Arc::new(AuthStats::default());
        let app = app!(keys.workload.clone(), keys.validator(), stats.clone());
        let (captured, _capture) = Captured::start();
        let key = keys.encoded();
        let other = SharedKey::generate();
        let other_text = other.expose_encoded().to_string();

        let cases = [
            (
                "header and bearer disagree",
                request("/api/echo")
                    .insert_header((KEY_HEADER, key.as_str()))
                    .insert_header((AUTHORIZATION, format!("Bearer {other_text}"))),
            ),
            (
                "bearer and header disagree",
                request("/api/echo")
                    .insert_header((KEY_HEADER, other_text.as_str()))
                    .insert_header((AUTHORIZATION, format!("Bearer {key}"))),
            ),
            (
                "the key header twice, both valid",
                request("/api/echo")
                    .append_header((KEY_HEADER, key.as_str()))
                    .append_header((KEY_HEADER, key.as_str())),
            ),
            (
                "the key header twice, one valid",
                request("/api/echo")
                    .append_header((KEY_HEADER, other_text.as_str()))
                    .append_header((KEY_HEADER, key.as_str())),
            ),
            (
                "Authorization twice",
                request("/api/echo")
                    .append_header((AUTHORIZATION, format!("Bearer {key}")))
                    .append_header((AUTHORIZATION, format!("Bearer {key}"))),
            ),
        ];
        for (case, req) in cases {
            let response = test::call_service(&app, req.to_request()).await;
            let body = assert_unauthorized(response, case).await;
            assert!(!leaks(&body, &keys.key), "{case}: the body holds the key");
            assert!(
                !leaks(&body, &other),
                "{case}: the body holds the presented key"
            );
        }

        let logs = captured.text();
        assert!(logs.contains("conflicting"), "{logs}");
        assert!(logs.contains("repeated"), "{logs}");
        assert!(!leaks(&logs, &keys.key) && !leaks(&logs, &other), "{logs}");
        assert_eq!(stats.accepted.load(Ordering::Relaxed), 0);
    })
    .await
}

#[actix_rt::test]
async fn answers_503_with_retry_after_when_the_keystore_is_gone() {
    bounded(async {
        let backend = keyutils();

        // A KeyStore whose System has ended: its mailbox is closed, so the
        // Validator can never read a key.
        let dead = std::thread::spawn(move || {
            actix::System::new().block_on(async move { KeyStore::start(backend).unwrap() })
        })
        .join()
        .unwrap();
        for _ in 0..100 {
            if !dead.connected() {
                break;
            }
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!dead.connected(), "the KeyStore's mailbox is still open");

        let stats = Arc::new(AuthStats::default());
        let validator = Validator::start(dead, ValidatorConfig::default());
        let workload = unique_workload("dead");
        let app = app!(workload, validator, stats.clone());
        let presented = SharedKey::generate();

        let req = request("/api/echo")
            .insert_header((KEY_HEADER, presented.expose_encoded().as_str()))
            .to_request();
        let response = test::call_service(&app, req).await;

        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers().get("retry-after").unwrap(), "1");
        assert_eq!(response.headers().get(OUTER).unwrap(), "ran");
        let body: Value = test::read_body_json(response).await;
        assert_eq!(body["id"], Value::Null);
        assert!(!leaks(&body.to_string(), &presented));
        assert_eq!(stats.undecided.load(Ordering::Relaxed), 1);
        assert_eq!(stats.accepted.load(Ordering::Relaxed), 0);
    })
    .await
}

#[cfg(feature = "fault-injection")]
#[actix_rt::test]
async fn a_validator_panic_costs_exactly_one_request_a_503() {
    use thv_actors::InjectValidatorPanic;

    bounded(async {
        let keys = Keys::create("panic").await;
        let stats = Arc::new(AuthStats::default());
        let validator = keys.validator();
        let app = app!(keys.workload.clone(), validator.clone(), stats.clone());
        let key = keys.encoded();

        validator.send(InjectValidatorPanic).await.unwrap();
        let requests = (0..50).map(|_| {
            let req = request("/api/echo")
                .insert_header((KEY_HEADER, key.as_str()))
                .to_request();
            test::call_service(&app, req)
        });
        let responses = futures_util::future::join_all(requests).await;

        let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
        for response in &responses {
            *statuses.entry(response.status().as_u16()).or_default() += 1;
        }
        assert_eq!(
            statuses,
            BTreeMap::from([(200, 49), (503, 1)]),
            "50 concurrent requests around one injected panic"
        );
        let failed = responses
            .iter()
            .find(|r| r.status() == StatusCode::SERVICE_UNAVAILABLE)
            .unwrap();
        assert!(failed.headers().contains_key("retry-after"));
        assert_eq!(stats.undecided.load(Ordering::Relaxed), 1);
        assert_eq!(stats.accepted.load(Ordering::Relaxed), 49);

        // The restarted Validator keeps answering.
        let req = request("/api/echo")
            .insert_header((KEY_HEADER, key.as_str()))
            .to_request();
        assert_eq!(test::call_service(&app, req).await.status(), StatusCode::OK);
    })
    .await
}

#[actix_rt::test]
async fn guard_refuses_foreign_hosts_and_origins_before_auth() {
    bounded(async {
        let keys = Keys::create("guard").await;
        let stats = Arc::new(AuthStats::default());
        let app = app!(keys.workload.clone(), keys.validator(), stats.clone());
        let key = keys.encoded();

        let cases = [
            (
                "Host evil.example",
                request("/api/echo").insert_header((HOST, format!("evil.example:{PORT}"))),
            ),
            (
                "Host a rebinding name",
                request("/api/echo").insert_header((HOST, "127.0.0.1.nip.io")),
            ),
            (
                "Origin foreign",
                request("/api/echo").insert_header((ORIGIN, "http://evil.example")),
            ),
            (
                "Origin loopback on another port",
                request("/api/echo").insert_header((ORIGIN, "http://127.0.0.1:1")),
            ),
            (
                "Origin null",
                request("/api/echo").insert_header((ORIGIN, "null")),
            ),
            (
                "two Host headers",
                request("/api/echo").append_header((HOST, format!("localhost:{PORT}"))),
            ),
            (
                "two Origin headers",
                request("/api/echo")
                    .append_header((ORIGIN, format!("http://127.0.0.1:{PORT}")))
                    .append_header((ORIGIN, "http://evil.example")),
            ),
        ];
        for (case, req) in cases {
            // Even with the right key: the guard is the outer layer.
            let req = req.insert_header((KEY_HEADER, key.as_str())).to_request();
            let response = test::call_service(&app, req).await;
            assert_eq!(response.status(), StatusCode::FORBIDDEN, "{case}");
            assert_eq!(response.headers().get(OUTER).unwrap(), "ran", "{case}");
            let body: Value = test::read_body_json(response).await;
            assert_eq!(body["id"], Value::Null, "{case}");
            assert!(!leaks(&body.to_string(), &keys.key), "{case}");
        }

        // The public route sits behind the guard too.
        let req = request("/public/health").insert_header((HOST, "evil.example"));
        let response = test::call_service(&app, req.to_request()).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN);

        // None of those reached the key check.
        assert_eq!(stats.refused.load(Ordering::Relaxed), 0);
        assert_eq!(stats.accepted.load(Ordering::Relaxed), 0);
    })
    .await
}

#[actix_rt::test]
async fn guard_passes_loopback_hosts_own_origins_and_no_origin() {
    bounded(async {
        let keys = Keys::create("guard-pass").await;
        let app = app!(keys.workload.clone(), keys.validator(), Arc::default());
        let key = keys.encoded();

        let cases = [
            ("Host 127.0.0.1, no Origin", request("/api/echo")),
            (
                "Host localhost:PORT",
                request("/api/echo").insert_header((HOST, format!("localhost:{PORT}"))),
            ),
            (
                "Host [::1]:PORT",
                request("/api/echo").insert_header((HOST, format!("[::1]:{PORT}"))),
            ),
            (
                "own origin",
                request("/api/echo").insert_header((ORIGIN, format!("http://127.0.0.1:{PORT}"))),
            ),
            (
                "own origin by name",
                request("/api/echo").insert_header((ORIGIN, format!("http://localhost:{PORT}"))),
            ),
            (
                "own origin, IPv6",
                request("/api/echo").insert_header((ORIGIN, format!("http://[::1]:{PORT}"))),
            ),
        ];
        for (case, req) in cases {
            let req = req.insert_header((KEY_HEADER, key.as_str())).to_request();
            let response = test::call_service(&app, req).await;
            assert_eq!(response.status(), StatusCode::OK, "{case}");
        }

        // Without a key the public route passes the guard and needs none.
        let response = test::call_service(&app, request("/public/health").to_request()).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers().get(OUTER).unwrap(), "ran");
    })
    .await
}
