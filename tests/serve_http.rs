//! `thv-actor serve` over raw HTTP/1.1: what the shared-key check and the
//! loopback guard admit and refuse, with the real binary and real keychains.

mod support;

use support::http::{Request, Response};
use support::serve::{Sandbox, Serve};
use thv_actors::SharedKey;

/// A serve with two command workloads running the built-in demo server.
struct TwoDemos {
    sandbox: Sandbox,
    serve: Serve,
    a: String,
    b: String,
}

impl TwoDemos {
    fn start(keystore: &'static str) -> TwoDemos {
        let sandbox = Sandbox::new(keystore);
        let a = sandbox.name("http-a");
        let b = sandbox.name("http-b");
        let bin = support::bin();
        let config = sandbox.config(&format!(
            "[[workloads]]\nname = \"{a}\"\ncommand = [\"{bin}\", \"demo-server\"]\n\n\
             [[workloads]]\nname = \"{b}\"\ncommand = [\"{bin}\", \"demo-server\"]\n"
        ));
        let serve = sandbox.serve(&["--config", config.to_str().unwrap()], 2);
        TwoDemos {
            sandbox,
            serve,
            a,
            b,
        }
    }

    fn port(&self) -> u16 {
        self.serve.port(&self.a)
    }

    fn key(&self) -> String {
        self.sandbox.key(&self.a)
    }

    /// Asserts serve's log so far holds no form of `key`.
    fn assert_log_clean(&self, key: &str) {
        let key = SharedKey::parse(key).unwrap();
        assert!(
            !thv_actors::testing::leaks(&self.serve.stderr(), &key),
            "serve's log contains a key"
        );
    }
}

/// Asserts a 401 in the shape the middleware promises, whose body does not
/// contain `presented`.
fn assert_refused(response: &Response, presented: &[u8], what: &str) {
    assert_eq!(response.status, 401, "{what}: {}", response.text());
    assert_refusal_body(response, presented, what);
    let challenge = response
        .header("www-authenticate")
        .unwrap_or_else(|| panic!("{what}: 401 without WWW-Authenticate"));
    assert!(
        !challenge.to_ascii_lowercase().starts_with("bearer"),
        "{what}: a Bearer challenge starts OAuth discovery in MCP clients: {challenge}"
    );
}

fn assert_refusal_body(response: &Response, presented: &[u8], what: &str) {
    if presented.len() >= 4 {
        assert!(
            !response
                .raw
                .windows(presented.len())
                .any(|w| w == presented),
            "{what}: the answer repeats the presented value"
        );
    }
    let body = response.json();
    assert_eq!(body["jsonrpc"], "2.0", "{what}: {body}");
    assert!(body["id"].is_null(), "{what}: id must be null: {body}");
    assert!(body["error"]["code"].is_i64(), "{what}: {body}");
}

fn assert_initialized(response: &Response, what: &str) {
    assert_eq!(response.status, 200, "{what}: {}", response.text());
    let body = response.json();
    assert_eq!(body["id"], 1, "{what}: {body}");
    assert_eq!(
        body["result"]["serverInfo"]["name"], "thv-actor-demo",
        "{what}: {body}"
    );
}

#[test]
fn builtin_demo_workload_refuses_a_request_without_key_and_answers_one_with_it() {
    let sandbox = Sandbox::new("keyutils");
    // "demo" is a fixed name in the user's keyring: delete it at the end only
    // if this test made it.
    if !sandbox.run(&["key", "show", "demo"]).status.success() {
        sandbox.track("demo");
    }
    let serve = sandbox.serve(&[], 1);
    let url = serve.url("demo");
    assert!(url.ends_with("/mcp"), "{url}");
    let port = serve.port("demo");

    let refused = Request::initialize(port).send();
    assert_eq!(refused.status, 401, "{}", refused.text());
    let body = refused.json();
    assert!(body["id"].is_null(), "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("X-ToolHive-Auth"), "{message}");
    let challenge = refused.header("www-authenticate").unwrap();
    assert!(
        !challenge.to_ascii_lowercase().starts_with("bearer"),
        "{challenge}"
    );
    assert_eq!(
        refused.header("content-type"),
        Some("application/json"),
        "a JSON-RPC client must be able to read the refusal"
    );

    let key = sandbox.key("demo");
    let admitted = Request::initialize(port)
        .header("X-ToolHive-Auth", &key)
        .send();
    assert_initialized(&admitted, "the right key");
    assert!(!thv_actors::testing::leaks(
        &serve.stderr(),
        &SharedKey::parse(&key).unwrap()
    ));
}

#[test]
fn wrong_key_and_another_workloads_key_are_refused() {
    let t = TwoDemos::start("keyutils");
    let port = t.port();
    let own = t.key();
    let other = t.sandbox.key(&t.b);
    assert_ne!(own, other, "two workloads got the same key");

    let wrong = SharedKey::generate();
    let wrong = wrong.expose_encoded().to_string();
    for (what, value) in [("a wrong key", &wrong), ("another workload's key", &other)] {
        let response = Request::initialize(port)
            .header("X-ToolHive-Auth", value)
            .send();
        assert_refused(&response, value.as_bytes(), what);
    }

    // Each workload's own key works on its own listener.
    assert_initialized(
        &Request::initialize(t.serve.port(&t.b))
            .header("X-ToolHive-Auth", &other)
            .send(),
        "b's key on b",
    );
    t.assert_log_clean(&own);
    t.assert_log_clean(&other);
}

#[test]
fn malformed_keys_are_refused_without_being_echoed() {
    let t = TwoDemos::start("keyutils");
    let port = t.port();
    let key = t.key();

    // The standard alphabet: the same bytes with '-' and '_' as '+' and '/'
    // (a key with neither gets one by replacing its first character).
    let mut standard = key.replace('-', "+").replace('_', "/");
    if standard == key {
        standard.replace_range(0..1, "+");
    }
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("short", key.as_bytes()[..42].to_vec()),
        ("long", format!("{key}A").into_bytes()),
        ("padded", format!("{key}=").into_bytes()),
        ("standard alphabet", standard.into_bytes()),
        (
            "inner space",
            format!("{} {}", &key[..20], &key[20..]).into_bytes(),
        ),
        (
            "inner tab",
            format!("{}\t{}", &key[..20], &key[20..]).into_bytes(),
        ),
        ("empty", Vec::new()),
    ];
    let mut non_utf8 = key.as_bytes()[..40].to_vec();
    non_utf8.extend_from_slice(&[0xff, 0xfe, 0x80]);
    cases.push(("non-UTF-8", non_utf8));

    for (what, value) in &cases {
        let response = Request::initialize(port)
            .header("X-ToolHive-Auth", value)
            .send();
        assert_refused(&response, value, what);
        let bearer = Request::initialize(port)
            .header("Authorization", [b"Bearer ".as_slice(), value].concat())
            .send();
        assert_refused(&bearer, value, &format!("{what} as Bearer"));
    }
    t.assert_log_clean(&key);
}

#[test]
fn bearer_is_accepted_and_must_agree_with_the_own_header() {
    let t = TwoDemos::start("keyutils");
    let port = t.port();
    let key = t.key();
    let other = t.sandbox.key(&t.b);

    assert_initialized(
        &Request::initialize(port)
            .header("Authorization", format!("Bearer {key}"))
            .send(),
        "Authorization: Bearer",
    );
    assert_initialized(
        &Request::initialize(port)
            .header("X-ToolHive-Auth", &key)
            .header("Authorization", format!("Bearer {key}"))
            .send(),
        "both headers agreeing",
    );

    let disagreeing = Request::initialize(port)
        .header("X-ToolHive-Auth", &key)
        .header("Authorization", format!("Bearer {other}"))
        .send();
    assert_refused(&disagreeing, other.as_bytes(), "both headers disagreeing");

    let repeated = Request::initialize(port)
        .header("X-ToolHive-Auth", &key)
        .header("X-ToolHive-Auth", &key)
        .send();
    assert_refused(&repeated, key.as_bytes(), "X-ToolHive-Auth twice");

    let repeated_bearer = Request::initialize(port)
        .header("Authorization", format!("Bearer {key}"))
        .header("Authorization", format!("Bearer {key}"))
        .send();
    assert_refused(&repeated_bearer, key.as_bytes(), "Authorization twice");

    let repeated_mixed = Request::initialize(port)
        .header("X-ToolHive-Auth", &other)
        .header("X-ToolHive-Auth", &key)
        .send();
    assert_refused(&repeated_mixed, key.as_bytes(), "a wrong and a right key");
    t.assert_log_clean(&key);
}

#[test]
fn foreign_host_and_origin_are_forbidden_even_with_the_right_key() {
    let t = TwoDemos::start("keyutils");
    let port = t.port();
    let key = t.key();
    let with_key = || Request::initialize(port).header("X-ToolHive-Auth", &key);

    let forbidden = [
        ("Host evil.example", with_key().host("evil.example")),
        (
            "Host evil.example with our port",
            with_key().host(format!("evil.example:{port}")),
        ),
        (
            "foreign Origin",
            with_key().header("Origin", "http://evil.example"),
        ),
        ("Origin null", with_key().header("Origin", "null")),
        (
            "Origin of another loopback port",
            with_key().header("Origin", format!("http://127.0.0.1:{}", port ^ 1)),
        ),
        (
            "Host evil.example without a key",
            Request::initialize(port).host("evil.example"),
        ),
    ];
    for (what, request) in forbidden {
        let response = request.send();
        assert_eq!(response.status, 403, "{what}: {}", response.text());
        assert_refusal_body(&response, key.as_bytes(), what);
    }

    for (what, request) in [
        (
            "own origin",
            with_key().header("Origin", format!("http://127.0.0.1:{port}")),
        ),
        (
            "own origin as localhost",
            with_key().header("Origin", format!("http://localhost:{port}")),
        ),
        (
            "Host localhost",
            with_key().host(format!("localhost:{port}")),
        ),
    ] {
        assert_initialized(&request.send(), what);
    }
    t.assert_log_clean(&key);
}

#[test]
fn health_needs_no_key_and_reveals_only_liveness() {
    let t = TwoDemos::start("keyutils");
    let port = t.port();
    let key = t.key();

    let response = Request::new("GET", port, "/health").send();
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json(), serde_json::json!({"status": "ok"}));
    let raw = String::from_utf8_lossy(&response.raw).into_owned();
    for secret in [t.a.as_str(), t.b.as_str(), key.as_str(), "demo-server"] {
        assert!(!raw.contains(secret), "/health reveals {secret:?}: {raw}");
    }
    assert!(
        response.header("mcp-session-id").is_none(),
        "/health opened a session"
    );

    let rebinding = Request::new("GET", port, "/health")
        .host("evil.example")
        .send();
    assert_eq!(rebinding.status, 403, "{}", rebinding.text());
}

#[test]
fn a_key_in_the_query_string_is_not_accepted() {
    let t = TwoDemos::start("keyutils");
    let port = t.port();
    let key = t.key();

    for query in [
        "key",
        "X-ToolHive-Auth",
        "x-toolhive-auth",
        "access_token",
        "token",
    ] {
        let response = Request::new("POST", port, &format!("/mcp?{query}={key}"))
            .header("Content-Type", "application/json")
            .header("Accept", "application/json, text/event-stream")
            .body(support::http::INITIALIZE)
            .send();
        assert_refused(&response, key.as_bytes(), &format!("?{query}="));
    }
}

#[test]
fn secret_service_keys_are_checked_the_same_way() {
    let t = TwoDemos::start("secret-service");
    let port = t.port();
    let key = t.key();
    let other = t.sandbox.key(&t.b);

    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(t.sandbox.state_dir().join("serve.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["keystore"], "secret-service", "{state}");

    assert_refused(&Request::initialize(port).send(), b"", "no key");
    assert_refused(
        &Request::initialize(port)
            .header("X-ToolHive-Auth", &other)
            .send(),
        other.as_bytes(),
        "another workload's key",
    );
    assert_initialized(
        &Request::initialize(port)
            .header("X-ToolHive-Auth", &key)
            .send(),
        "the right key",
    );
    t.assert_log_clean(&key);
    t.assert_log_clean(&other);
}

/// Accepts one HTTP request on a loopback port, answers it with a JSON-RPC
/// result, and hands back the request's bytes.
fn capture_one_request() -> (u16, std::sync::mpsc::Receiver<Vec<u8>>) {
    use std::io::{Read, Write};

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let Ok((mut stream, _)) = listener.accept() else {
            return;
        };
        stream.set_read_timeout(Some(support::WAIT)).unwrap();
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        // The head, then as much body as Content-Length says.
        loop {
            let n = stream.read(&mut buf).unwrap_or(0);
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&raw).to_ascii_lowercase();
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if raw.len() >= end + 4 + length {
                    break;
                }
            }
        }
        let body = r#"{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-06-18","capabilities":{},"serverInfo":{"name":"thv-actor-demo","version":"0"}}}"#;
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = tx.send(raw);
    });
    (port, rx)
}

#[test]
fn the_key_is_not_forwarded_to_an_http_upstream() {
    let (upstream, captured) = capture_one_request();
    let sandbox = Sandbox::new("keyutils");
    let w = sandbox.name("http-fwd");
    let config = sandbox.config(&format!(
        "[[workloads]]\nname = \"{w}\"\nurl = \"http://127.0.0.1:{upstream}/mcp\"\n"
    ));
    let serve = sandbox.serve(&["--config", config.to_str().unwrap()], 1);
    let key = sandbox.key(&w);

    let response = Request::initialize(serve.port(&w))
        .header("X-ToolHive-Auth", &key)
        .header("Authorization", format!("Bearer {key}"))
        .send();
    assert_initialized(&response, "through the URL workload");

    let request = captured
        .recv_timeout(support::WAIT)
        .expect("the upstream got no request");
    let text = String::from_utf8_lossy(&request).to_ascii_lowercase();
    assert!(text.starts_with("post /mcp "), "{text}");
    assert!(
        !text.contains("x-toolhive-auth"),
        "forwarded the key header: {text}"
    );
    assert!(
        !text.contains("authorization"),
        "forwarded Authorization: {text}"
    );
    let parsed = SharedKey::parse(&key).unwrap();
    assert!(
        !thv_actors::testing::leaks(&String::from_utf8_lossy(&request), &parsed),
        "the upstream saw the key"
    );
}
