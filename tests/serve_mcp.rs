//! Real MCP clients (the Python `mcp` SDK, 2.x and 1.x) through `thv-actor
//! serve` to real MCP servers: `mcp-server-time` over stdio and
//! `@modelcontextprotocol/server-everything` over streamable HTTP and SSE.

mod support;

use support::peers::{
    mcp_client, mcp_client_cmd, parse_client_output, test_env, texts, Everything,
};
use support::run_bounded;
use support::serve::{Sandbox, Serve};

/// A serve with one `mcp-server-time` workload.
fn time_serve(keystore: &'static str) -> (Sandbox, Serve, String) {
    let sandbox = Sandbox::new(keystore);
    let w = sandbox.name("time");
    let server = test_env().join("py2/bin/mcp-server-time");
    assert!(
        server.exists(),
        "{} missing: run ./scripts/test",
        server.display()
    );
    let config = sandbox.config(&format!(
        "[[workloads]]\nname = \"{w}\"\ncommand = [\"{}\", \"--local-timezone\", \"UTC\"]\n",
        server.display()
    ));
    let serve = sandbox.serve(&["--config", config.to_str().unwrap()], 1);
    (sandbox, serve, w)
}

/// The `timezone` of a `get_current_time` result.
fn timezone_of(call: &serde_json::Value) -> String {
    let text = texts(call).join("");
    let parsed: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("get_current_time answered {text:?}: {e}"));
    parsed["timezone"].as_str().unwrap_or_default().to_owned()
}

fn assert_refused_without_key(venv: &str, url: &str, args: &[&str]) {
    let (status, json, stderr) = mcp_client(venv, None, &[&[url], args].concat());
    assert!(
        !status.success(),
        "{venv}: a client without the key got through: {json}"
    );
    assert_eq!(json["ok"], false, "{venv}: {json} {stderr}");
    let error = json["error"]
        .as_str()
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(
        error.contains("401") || error.contains("unauthorized"),
        "{venv}: the SDK failed for another reason: {error}"
    );
}

fn time_round_trip(venv: &str) {
    let (sandbox, serve, w) = time_serve("keyutils");
    let url = serve.url(&w);
    let key = sandbox.key(&w);

    let (status, json, stderr) = mcp_client(
        venv,
        Some(&key),
        &[
            &url,
            "--call",
            "get_current_time",
            "--args",
            r#"{"timezone": "Europe/Paris"}"#,
        ],
    );
    assert!(
        status.success(),
        "{venv}: {json}\n{stderr}\nserve:\n{}",
        serve.stderr()
    );
    assert_eq!(json["server"], "mcp-time", "{json}");
    let tools: Vec<&str> = json["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t.as_str())
        .collect();
    assert!(
        tools.contains(&"get_current_time") && tools.contains(&"convert_time"),
        "{tools:?}"
    );
    let call = &json["calls"][0];
    assert_ne!(call["isError"], true, "{call}");
    assert_eq!(timezone_of(call), "Europe/Paris", "{call}");

    assert_refused_without_key(venv, &url, &[]);
    let leaked = thv_actors::SharedKey::parse(&key).unwrap();
    assert!(!thv_actors::testing::leaks(&serve.stderr(), &leaked));
}

#[test]
fn python_sdk_2_lists_and_calls_mcp_server_time_through_serve() {
    time_round_trip("py2");
}

#[test]
fn python_sdk_1_lists_and_calls_mcp_server_time_through_serve() {
    time_round_trip("py1");
}

#[test]
fn python_sdk_2_reaches_mcp_server_time_with_secret_service_keys() {
    let (sandbox, serve, w) = time_serve("secret-service");
    let key = sandbox.key(&w);
    let (status, json, stderr) = mcp_client(
        "py2",
        Some(&key),
        &[
            &serve.url(&w),
            "--call",
            "get_current_time",
            "--args",
            r#"{"timezone": "UTC"}"#,
        ],
    );
    assert!(
        status.success(),
        "{json}\n{stderr}\nserve:\n{}",
        serve.stderr()
    );
    assert_eq!(timezone_of(&json["calls"][0]), "UTC");
}

#[test]
fn two_clients_at_once_on_one_stdio_workload_each_get_only_their_own_answers() {
    let (sandbox, serve, w) = time_serve("keyutils");
    let url = serve.url(&w);
    let key = sandbox.key(&w);
    let barrier = sandbox.path("barrier");
    std::fs::create_dir(&barrier).unwrap();

    let zones = ["Europe/Paris", "Asia/Tokyo"];
    let start = |zone: &str| {
        let args = format!(r#"{{"timezone": "{zone}"}}"#);
        let cmd = mcp_client_cmd(
            "py2",
            Some(&key),
            &[
                &url,
                "--call",
                "get_current_time",
                "--args",
                &args,
                "--repeat",
                "15",
                "--barrier",
                barrier.to_str().unwrap(),
                "--barrier-count",
                "2",
            ],
        );
        std::thread::spawn(move || run_bounded(cmd, std::time::Duration::from_secs(90)))
    };
    let clients: Vec<_> = zones.iter().map(|z| start(z)).collect();

    for (zone, client) in zones.iter().zip(clients) {
        let (status, json, stderr) = parse_client_output(client.join().unwrap());
        assert!(
            status.success(),
            "{zone}: {json}\n{stderr}\nserve:\n{}",
            serve.stderr()
        );
        let calls = json["calls"].as_array().unwrap();
        assert_eq!(calls.len(), 15, "{zone}: {json}");
        for call in calls {
            assert_eq!(
                &timezone_of(call),
                zone,
                "{zone} got another client's answer: {call}"
            );
        }
    }
}

/// A serve with one URL workload pointing at `upstream`.
fn url_serve(upstream: &str, transport: &str) -> (Sandbox, Serve, String) {
    let sandbox = Sandbox::new("keyutils");
    let w = sandbox.name("everything");
    let config = sandbox.config(&format!(
        "[[workloads]]\nname = \"{w}\"\nurl = \"{upstream}\"\ntransport = \"{transport}\"\n"
    ));
    let serve = sandbox.serve(&["--config", config.to_str().unwrap()], 1);
    (sandbox, serve, w)
}

fn everything_round_trip(venv: &str, url: &str, key: &str, transport: &str, serve: &Serve) {
    let (status, json, stderr) = mcp_client(
        venv,
        Some(key),
        &[
            url,
            "--transport",
            transport,
            "--call",
            "echo",
            "--args",
            r#"{"message": "through serve"}"#,
        ],
    );
    assert!(
        status.success(),
        "{venv} {transport}: {json}\n{stderr}\nserve:\n{}",
        serve.stderr()
    );
    let tools: Vec<&str> = json["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t.as_str())
        .collect();
    assert!(
        tools.contains(&"echo") && tools.contains(&"get-sum"),
        "{tools:?}"
    );
    assert_eq!(texts(&json["calls"][0]), ["Echo: through serve"], "{json}");
}

#[test]
fn python_sdks_reach_server_everything_over_streamable_http_through_serve() {
    let everything = Everything::start();
    let (sandbox, serve, w) = url_serve(
        &format!("http://127.0.0.1:{}/mcp", everything.port),
        "streamable-http",
    );
    let url = serve.url(&w);
    assert!(url.ends_with("/mcp"), "{url}");
    let key = sandbox.key(&w);

    everything_round_trip("py2", &url, &key, "streamable-http", &serve);
    everything_round_trip("py1", &url, &key, "streamable-http", &serve);
    assert_refused_without_key("py2", &url, &[]);
}

#[test]
fn python_sdk_reaches_server_everything_over_sse_through_serve() {
    let everything = Everything::start_sse();
    let (sandbox, serve, w) =
        url_serve(&format!("http://127.0.0.1:{}/sse", everything.port), "sse");
    let url = serve.url(&w);
    assert!(url.ends_with("/sse"), "{url}");
    assert_eq!(sandbox.list()[0]["transport"], "sse");
    let key = sandbox.key(&w);

    everything_round_trip("py2", &url, &key, "sse", &serve);
    everything_round_trip("py1", &url, &key, "sse", &serve);
    assert_refused_without_key("py2", &url, &["--transport", "sse"]);
}
