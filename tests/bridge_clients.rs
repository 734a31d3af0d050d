//! `thv-actor bridge` launched by real MCP SDK clients over stdio: the
//! Python SDK 2.3.0 and 1.x and the TypeScript SDK, against a real
//! `thv-actor serve` that hosts real stdio servers (the built-in demo,
//! mcp-server-time) and proxies a real HTTP server (server-everything).
//!
//! The clients launch the bridge with their SDK's default environment
//! (HOME, LOGNAME, PATH, SHELL, TERM, USER), so each test also proves the
//! bridge finds serve, its keystore and the key from that alone.

mod support;

use serde_json::{json, Value};
use support::bridge::{node_client, python_client};
use support::peers::{test_env, Everything};
use support::serve::{demo_workload, stdio_workload, url_workload, Sandbox, Serve};

/// What every client does against the demo server.
fn demo_plan() -> Value {
    json!({
        "calls": [
            {"tool": "echo", "args": {"message": "hello through the bridge"}},
            {"tool": "progress", "args": {"steps": 3}, "progress": true},
        ],
        "reads": ["demo://readme"],
        "prompts": [{"name": "greeting", "args": {"name": "Ada"}}],
    })
}

/// The progress values a call's callback saw (the SDKs give floats or ints).
fn progress(call: &Value) -> Vec<f64> {
    call["progress"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_f64().unwrap())
        .collect()
}

/// The SDK's transport met nothing it could not parse or route.
fn assert_no_transport_errors(report: &Value) {
    let notifications = report["notifications"].as_array().unwrap();
    assert!(
        !notifications
            .iter()
            .any(|n| n.as_str().unwrap().starts_with("exception")),
        "{report}"
    );
}

fn assert_demo_report(report: &Value, sdk: &str) {
    assert_no_transport_errors(report);
    assert!(report["sdk"].as_str().unwrap().starts_with(sdk), "{report}");
    assert_eq!(report["server"], "thv-actor-demo", "{report}");
    assert_eq!(report["tools"], json!(["echo", "progress"]), "{report}");
    assert_eq!(report["resources"], json!(["demo://readme"]), "{report}");
    assert_eq!(report["prompts"], json!(["greeting"]), "{report}");

    let calls = report["calls"].as_array().unwrap();
    assert_eq!(calls[0]["text"], "hello through the bridge", "{report}");
    assert_eq!(calls[0]["is_error"], false);
    assert_eq!(calls[1]["text"], "done", "{report}");
    // Progress notifications reached the client's progress callback, in order.
    assert_eq!(progress(&calls[1]), [1.0, 2.0, 3.0], "{report}");

    let readme = report["reads"][0].as_str().unwrap();
    assert!(readme.contains("demo MCP server"), "{readme}");
    let greeting = report["prompt_results"][0].as_str().unwrap();
    assert!(greeting.contains("Ada"), "{greeting}");
}

fn assert_time_report(report: &Value) {
    assert_eq!(report["server"], "mcp-time", "{report}");
    let tools = report["tools"].as_array().unwrap();
    assert!(tools.contains(&json!("get_current_time")), "{report}");
    let call = &report["calls"][0];
    assert_eq!(call["is_error"], false, "{report}");
    let time: Value = serde_json::from_str(call["text"].as_str().unwrap()).unwrap();
    assert_eq!(time["timezone"], "UTC", "{time}");
    assert!(
        time["datetime"].as_str().unwrap().starts_with("20"),
        "{time}"
    );
}

fn time_plan() -> Value {
    json!({"calls": [{"tool": "get_current_time", "args": {"timezone": "UTC"}}]})
}

/// A serve hosting the demo and mcp-server-time as stdio workloads.
fn stdio_serve(home: &Sandbox) -> (Serve, String, String) {
    let demo = home.name("demo");
    let time = home.name("time");
    let time_bin = test_env().join("py2/bin/mcp-server-time");
    let config = home.config(
        &[
            demo_workload(&demo),
            stdio_workload(
                &time,
                &[time_bin.to_str().unwrap(), "--local-timezone", "UTC"],
            ),
        ]
        .join("\n"),
    );
    let serve = home.serve_config(&config, &[&demo, &time]);
    (serve, demo, time)
}

fn python_against_stdio_servers(venv: &str, sdk: &str) {
    let home = Sandbox::in_home("keyutils");
    let (serve, demo, time) = stdio_serve(&home);

    let report = python_client(&home, venv, &demo, &demo_plan());
    assert_demo_report(&report, sdk);
    let report = python_client(&home, venv, &time, &time_plan());
    assert_time_report(&report);

    // Both sessions were ended by the bridge at the client's exit.
    assert!(
        serve.wait_log("session ended by the client", support::WAIT),
        "{}",
        serve.stderr()
    );
}

#[test]
fn python_sdk_2_uses_stdio_servers_through_the_bridge() {
    python_against_stdio_servers("py2", "2.3.0");
}

#[test]
fn python_sdk_1_uses_stdio_servers_through_the_bridge() {
    python_against_stdio_servers("py1", "1.");
}

/// Everything the Python client does against server-everything: tools,
/// progress on a request's stream, logging on the workload's own stream,
/// a sampling request answered by the client, resources and prompts.
fn everything_plan() -> Value {
    json!({
        "calls": [
            {"tool": "echo", "args": {"message": "hello over http"}},
            {"tool": "trigger-long-running-operation", "args": {"duration": 1, "steps": 3},
             "progress": true},
            {"tool": "trigger-sampling-request", "args": {"prompt": "say hi", "maxTokens": 16}},
            {"tool": "toggle-simulated-logging", "args": {}},
        ],
        "read_first": true,
        "prompts": [{"name": "simple-prompt"}],
        "wait_logs": 12,
    })
}

fn python_against_server_everything(venv: &str, sdk: &str) {
    let everything = Everything::start();
    let home = Sandbox::in_home("keyutils");
    let name = home.name("everything");
    let config = home.config(&[url_workload(&name, &everything.url())].join("\n"));
    let serve = home.serve_config(&config, &[&name]);

    let report = python_client(&home, venv, &name, &everything_plan());
    assert_no_transport_errors(&report);

    assert!(report["sdk"].as_str().unwrap().starts_with(sdk), "{report}");
    assert!(
        report["server"].as_str().unwrap().contains("everything"),
        "{report}"
    );
    let tools = report["tools"].as_array().unwrap();
    for tool in [
        "echo",
        "trigger-long-running-operation",
        "trigger-sampling-request",
    ] {
        assert!(tools.contains(&json!(tool)), "{tool} missing: {report}");
    }

    let calls = report["calls"].as_array().unwrap();
    assert!(
        calls[0]["text"]
            .as_str()
            .unwrap()
            .contains("hello over http"),
        "{report}"
    );
    // Progress came back on the POST's event stream, to the callback.
    assert_eq!(progress(&calls[1]), [1.0, 2.0, 3.0], "{report}");
    assert!(
        calls[1]["text"].as_str().unwrap().contains("completed"),
        "{report}"
    );
    // The server's sampling request reached the client's callback, and the
    // client's answer reached the server (it quotes it in the tool result).
    assert_eq!(
        report["sampling_requests"].as_array().unwrap().len(),
        1,
        "{report}"
    );
    assert!(
        report["sampling_requests"][0]
            .as_str()
            .unwrap()
            .contains("say hi"),
        "{report}"
    );
    assert!(
        calls[2]["text"]
            .as_str()
            .unwrap()
            .contains("sampled by the python test client"),
        "{report}"
    );
    // A logging notification not tied to any request arrived.
    assert!(
        !report["logs"].as_array().unwrap().is_empty(),
        "no logging notification arrived: {report}"
    );

    assert!(
        !report["resources"].as_array().unwrap().is_empty(),
        "{report}"
    );
    assert!(report["reads"][0].is_string(), "{report}");
    assert!(
        report["prompts"]
            .as_array()
            .unwrap()
            .contains(&json!("simple-prompt")),
        "{report}"
    );
    assert!(
        report["prompt_results"][0]
            .as_str()
            .unwrap()
            .contains("simple prompt"),
        "{report}"
    );
    drop(serve);
}

#[test]
fn python_sdk_2_uses_server_everything_over_http_through_the_bridge() {
    python_against_server_everything("py2", "2.3.0");
}

#[test]
fn python_sdk_1_uses_server_everything_over_http_through_the_bridge() {
    python_against_server_everything("py1", "1.");
}

#[test]
fn typescript_sdk_calls_tools_through_the_bridge() {
    let everything = Everything::start();
    let home = Sandbox::in_home("keyutils");
    let demo = home.name("demo");
    let http = home.name("everything");
    let config =
        home.config(&[demo_workload(&demo), url_workload(&http, &everything.url())].join("\n"));
    let _serve = home.serve_config(&config, &[&demo, &http]);

    let report = node_client(&home, &demo, "echo", &json!({"message": "from typescript"}));
    assert_eq!(report["server"], "thv-actor-demo", "{report}");
    assert_eq!(report["tools"], json!(["echo", "progress"]), "{report}");
    assert_eq!(report["text"], "from typescript", "{report}");
    assert_eq!(report["is_error"], false);

    let report = node_client(&home, &http, "get-sum", &json!({"a": 2, "b": 40}));
    assert!(
        report["tools"]
            .as_array()
            .unwrap()
            .contains(&json!("get-sum")),
        "{report}"
    );
    assert!(report["text"].as_str().unwrap().contains("42"), "{report}");
}

/// serve on the Secret Service; the bridge gets no DBUS_SESSION_BUS_ADDRESS
/// (the Python SDK does not pass it) and must find the bus on its own,
/// from serve's state file or the standard per-user address.
#[test]
fn python_sdk_reaches_a_secret_service_workload_without_a_bus_address() {
    assert!(
        std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some(),
        "no session bus: run ./scripts/test"
    );
    let home = Sandbox::in_home("secret-service");
    let demo = home.name("demo-ss");
    let config = home.config(&[demo_workload(&demo)].join("\n"));
    let serve = home.serve_config(&config, &[&demo]);
    assert!(
        serve.stderr().contains("secret-service"),
        "{}",
        serve.stderr()
    );

    let plan = json!({"calls": [{"tool": "echo", "args": {"message": "via secret service"}}]});
    let report = python_client(&home, "py2", &demo, &plan);
    assert_eq!(report["calls"][0]["text"], "via secret service", "{report}");
    assert_eq!(report["calls"][0]["is_error"], false, "{report}");
}
