//! The built-in demo MCP server: newline-delimited JSON-RPC on stdin and
//! stdout, run as `thv-actor demo-server`.
//!
//! It exists so that serve, the bridge and the end-to-end tests have an MCP
//! server that starts in milliseconds and needs nothing installed. It offers
//! two tools (`echo`, `progress`), one resource (`demo://readme`), one prompt
//! (`greeting`) and `logging/setLevel`.
//!
//! Both protocol eras are spoken:
//!
//! - the `initialize` handshake (revisions 2024-11-05 to 2025-11-25): the
//!   client's requested version is answered when it is one of those, the
//!   newest of them otherwise;
//! - the stateless 2026-07-28 revision: `server/discover`, and requests whose
//!   `params._meta` carries `io.modelcontextprotocol/protocolVersion` get the
//!   fields that revision requires on results (`resultType`, and `ttlMs` /
//!   `cacheScope` on lists and reads).
//!
//! # Limitations
//!
//! - It never sends requests to the client (no sampling, elicitation or
//!   roots), and it does not check that `initialize` came first.
//! - Requests are handled one at a time, in order; `progress` sleeps briefly
//!   between its notifications, so it holds up what follows it.
//! - Batches (JSON arrays) are answered with -32600.

use std::io::{self, BufRead, Write};
use std::time::Duration;

use serde_json::{json, Map, Value};

/// Revisions reached through the `initialize` handshake, oldest first.
pub const HANDSHAKE_VERSIONS: [&str; 4] = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];

/// Stateless revisions, reached without a handshake.
pub const STATELESS_VERSIONS: [&str; 1] = ["2026-07-28"];

/// The `_meta` key that marks a 2026-07-28 request envelope.
pub const PROTOCOL_VERSION_META_KEY: &str = "io.modelcontextprotocol/protocolVersion";

const METHOD_NOT_FOUND: i64 = -32601;
const INVALID_PARAMS: i64 = -32602;
const INVALID_REQUEST: i64 = -32600;
const PARSE_ERROR: i64 = -32700;

/// How many `notifications/progress` the `progress` tool sends by default.
const PROGRESS_STEPS: u64 = 3;
/// The pause between two progress notifications.
const PROGRESS_PAUSE: Duration = Duration::from_millis(20);

const README: &str = "This is the thv-actor demo MCP server. It echoes text, reports \
progress, serves this resource and one prompt.";

/// Serves stdin and stdout until stdin ends.
///
/// # Errors
///
/// An I/O error reading stdin or writing stdout (for example, the client
/// closed stdout).
pub fn run() -> io::Result<()> {
    let stdin = io::stdin();
    let stdout = io::stdout();
    serve(stdin.lock(), stdout.lock())
}

/// Serves one line-delimited JSON-RPC stream until `input` ends.
///
/// Every reply is one line followed by a flush, so a reader on the other
/// end of a pipe sees it at once.
///
/// # Errors
///
/// An I/O error from `input` or `output`.
pub fn serve(input: impl BufRead, mut output: impl Write) -> io::Result<()> {
    for line in input.lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }

        let message = match serde_json::from_str::<Value>(&line) {
            Ok(message) => message,
            Err(_) => {
                send(
                    &mut output,
                    &error(&Value::Null, PARSE_ERROR, "parse error"),
                )?;
                continue;
            }
        };

        handle(&message, &mut output)?;
    }
    Ok(())
}

/// Answers one message, writing whatever it produces to `output`.
fn handle(message: &Value, output: &mut impl Write) -> io::Result<()> {
    let Some(object) = message.as_object() else {
        return send(
            output,
            &error(&Value::Null, INVALID_REQUEST, "expected a JSON object"),
        );
    };

    // Responses from the client and notifications get no reply.
    let Some(method) = object.get("method").and_then(Value::as_str) else {
        return Ok(());
    };
    let Some(id) = object.get("id") else {
        return Ok(());
    };

    let params = object.get("params").cloned().unwrap_or_else(|| json!({}));
    let stateless = params
        .get("_meta")
        .and_then(|meta| meta.get(PROTOCOL_VERSION_META_KEY))
        .is_some();

    let reply = match method {
        "initialize" => Ok(initialize(&params)),
        "server/discover" => Ok(discover()),
        "ping" => Ok(json!({})),
        "logging/setLevel" => Ok(json!({})),
        "tools/list" => Ok(tools()),
        "tools/call" => call_tool(&params, output),
        "resources/list" => Ok(resources()),
        "resources/read" => read_resource(&params),
        "prompts/list" => Ok(prompts()),
        "prompts/get" => get_prompt(&params),
        _ => Err((METHOD_NOT_FOUND, format!("method not found: {method}"))),
    };

    match reply {
        Ok(mut result) => {
            if stateless {
                add_stateless_fields(method, &mut result);
            }
            send(
                output,
                &json!({ "jsonrpc": "2.0", "id": id, "result": result }),
            )
        }
        Err((code, text)) => send(output, &error(id, code, &text)),
    }
}

fn initialize(params: &Value) -> Value {
    let requested = params.get("protocolVersion").and_then(Value::as_str);
    let newest = HANDSHAKE_VERSIONS[HANDSHAKE_VERSIONS.len() - 1];
    let version = requested
        .filter(|v| HANDSHAKE_VERSIONS.contains(v))
        .unwrap_or(newest);

    json!({
        "protocolVersion": version,
        "capabilities": capabilities(),
        "serverInfo": server_info(),
        "instructions": "A demo server: call `echo` with a message.",
    })
}

fn discover() -> Value {
    json!({
        "supportedVersions": STATELESS_VERSIONS,
        "capabilities": capabilities(),
        "instructions": "A demo server: call `echo` with a message.",
        "_meta": { "io.modelcontextprotocol/serverInfo": server_info() },
    })
}

fn capabilities() -> Value {
    json!({
        "tools": { "listChanged": false },
        "resources": { "listChanged": false, "subscribe": false },
        "prompts": { "listChanged": false },
        "logging": {},
    })
}

fn server_info() -> Value {
    json!({ "name": "thv-actor-demo", "version": env!("CARGO_PKG_VERSION") })
}

/// The 2026-07-28 revision wants every result to say it is complete, and
/// list and read results to carry caching hints.
fn add_stateless_fields(method: &str, result: &mut Value) {
    let Some(fields) = result.as_object_mut() else {
        return;
    };
    fields.insert("resultType".into(), json!("complete"));
    let cacheable = matches!(
        method,
        "server/discover" | "tools/list" | "resources/list" | "resources/read" | "prompts/list"
    );
    if cacheable {
        fields.insert("ttlMs".into(), json!(0));
        fields.insert("cacheScope".into(), json!("private"));
    }
}

fn tools() -> Value {
    json!({ "tools": [
        {
            "name": "echo",
            "description": "Returns the message it is given.",
            "inputSchema": {
                "type": "object",
                "properties": { "message": { "type": "string", "description": "text to echo" } },
                "required": ["message"],
            },
        },
        {
            "name": "progress",
            "description": "Reports progress a few times, then answers `done`.",
            "inputSchema": {
                "type": "object",
                "properties": { "steps": { "type": "integer", "minimum": 1, "maximum": 20 } },
            },
        },
    ]})
}

type Reply = Result<Value, (i64, String)>;

fn call_tool(params: &Value, output: &mut impl Write) -> Reply {
    let name = params.get("name").and_then(Value::as_str);
    let arguments = params
        .get("arguments")
        .cloned()
        .unwrap_or_else(|| json!({}));

    match name {
        Some("echo") => Ok(match arguments.get("message").and_then(Value::as_str) {
            Some(message) => text_result(message, false),
            None => text_result("argument `message` (a string) is required", true),
        }),
        Some("progress") => {
            let steps = arguments
                .get("steps")
                .and_then(Value::as_u64)
                .unwrap_or(PROGRESS_STEPS)
                .clamp(1, 20);
            let token = params
                .get("_meta")
                .and_then(|meta| meta.get("progressToken"));
            if let Some(token) = token {
                report_progress(token, steps, output).map_err(|e| (-32603, e.to_string()))?;
            }
            Ok(text_result("done", false))
        }
        Some(other) => Err((INVALID_PARAMS, format!("unknown tool: {other}"))),
        None => Err((INVALID_PARAMS, "params.name (a string) is required".into())),
    }
}

fn report_progress(token: &Value, steps: u64, output: &mut impl Write) -> io::Result<()> {
    for step in 1..=steps {
        let notification = json!({
            "jsonrpc": "2.0",
            "method": "notifications/progress",
            "params": {
                "progressToken": token,
                "progress": step,
                "total": steps,
                "message": format!("step {step} of {steps}"),
            },
        });
        send(output, &notification)?;
        std::thread::sleep(PROGRESS_PAUSE);
    }
    Ok(())
}

fn text_result(text: &str, is_error: bool) -> Value {
    json!({ "content": [{ "type": "text", "text": text }], "isError": is_error })
}

fn resources() -> Value {
    json!({ "resources": [{
        "uri": "demo://readme",
        "name": "readme",
        "description": "What this server is.",
        "mimeType": "text/plain",
    }]})
}

fn read_resource(params: &Value) -> Reply {
    match params.get("uri").and_then(Value::as_str) {
        Some("demo://readme") => Ok(json!({ "contents": [{
            "uri": "demo://readme",
            "mimeType": "text/plain",
            "text": README,
        }]})),
        Some(other) => Err((-32002, format!("resource not found: {other}"))),
        None => Err((INVALID_PARAMS, "params.uri (a string) is required".into())),
    }
}

fn prompts() -> Value {
    json!({ "prompts": [{
        "name": "greeting",
        "description": "Greets someone by name.",
        "arguments": [{ "name": "name", "description": "who to greet", "required": true }],
    }]})
}

fn get_prompt(params: &Value) -> Reply {
    if params.get("name").and_then(Value::as_str) != Some("greeting") {
        return Err((INVALID_PARAMS, "unknown prompt".into()));
    }
    let Some(name) = params.pointer("/arguments/name").and_then(Value::as_str) else {
        return Err((INVALID_PARAMS, "argument `name` is required".into()));
    };

    Ok(json!({
        "description": "A greeting",
        "messages": [{
            "role": "user",
            "content": { "type": "text", "text": format!("Please greet {name} warmly.") },
        }],
    }))
}

fn error(id: &Value, code: i64, message: &str) -> Value {
    let mut error = Map::new();
    error.insert("code".into(), json!(code));
    error.insert("message".into(), json!(message));
    json!({ "jsonrpc": "2.0", "id": id, "error": error })
}

fn send(output: &mut impl Write, message: &Value) -> io::Result<()> {
    serde_json::to_writer(&mut *output, message)?;
    output.write_all(b"\n")?;
    output.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `lines` to [`serve`] and returns every line it wrote, parsed.
    fn exchange(lines: &[&str]) -> Vec<Value> {
        let input = lines.join("\n");
        let mut output = Vec::new();
        serve(input.as_bytes(), &mut output).unwrap();
        String::from_utf8(output)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    fn request(id: u64, method: &str, params: Value) -> String {
        json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }).to_string()
    }

    #[test]
    fn initialize_answers_a_supported_requested_version() {
        let replies = exchange(&[&request(
            1,
            "initialize",
            json!({ "protocolVersion": "2025-03-26" }),
        )]);

        assert_eq!(replies[0]["id"], 1);
        assert_eq!(replies[0]["result"]["protocolVersion"], "2025-03-26");
        assert_eq!(replies[0]["result"]["serverInfo"]["name"], "thv-actor-demo");
    }

    #[test]
    fn initialize_answers_the_newest_for_an_unknown_version() {
        let replies = exchange(&[&request(
            1,
            "initialize",
            json!({ "protocolVersion": "1999-01-01" }),
        )]);

        assert_eq!(replies[0]["result"]["protocolVersion"], "2025-11-25");
    }

    #[test]
    fn notifications_and_client_responses_get_no_reply() {
        let replies = exchange(&[
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            r#"{"jsonrpc":"2.0","id":7,"result":{}}"#,
            &request(2, "ping", json!({})),
        ]);

        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0]["id"], 2);
        assert_eq!(replies[0]["result"], json!({}));
    }

    #[test]
    fn echo_returns_the_message_as_text() {
        let params = json!({ "name": "echo", "arguments": { "message": "hello there" } });
        let replies = exchange(&[&request(3, "tools/call", params)]);

        let result = &replies[0]["result"];
        assert_eq!(result["isError"], false);
        assert_eq!(result["content"][0]["type"], "text");
        assert_eq!(result["content"][0]["text"], "hello there");
    }

    #[test]
    fn echo_without_a_message_is_a_tool_error() {
        let params = json!({ "name": "echo", "arguments": { "message": 5 } });
        let replies = exchange(&[&request(3, "tools/call", params)]);

        assert_eq!(replies[0]["result"]["isError"], true);
    }

    #[test]
    fn unknown_tool_is_invalid_params() {
        let params = json!({ "name": "nope", "arguments": {} });
        let replies = exchange(&[&request(3, "tools/call", params)]);

        assert_eq!(replies[0]["error"]["code"], INVALID_PARAMS);
    }

    #[test]
    fn progress_tool_reports_before_answering_when_asked() {
        let params = json!({ "name": "progress", "arguments": { "steps": 2 },
                             "_meta": { "progressToken": "tok" } });
        let replies = exchange(&[&request(4, "tools/call", params)]);

        assert_eq!(replies.len(), 3);
        assert_eq!(replies[0]["method"], "notifications/progress");
        assert_eq!(replies[0]["params"]["progressToken"], "tok");
        assert_eq!(replies[1]["params"]["progress"], 2);
        assert_eq!(replies[2]["id"], 4);
        assert_eq!(replies[2]["result"]["content"][0]["text"], "done");
    }

    #[test]
    fn progress_tool_without_a_token_only_answers() {
        let params = json!({ "name": "progress", "arguments": {} });
        let replies = exchange(&[&request(4, "tools/call", params)]);

        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0]["id"], 4);
    }

    #[test]
    fn serves_the_readme_resource_and_the_greeting_prompt() {
        let replies = exchange(&[
            &request(1, "resources/list", json!({})),
            &request(2, "resources/read", json!({ "uri": "demo://readme" })),
            &request(3, "prompts/list", json!({})),
            &request(
                4,
                "prompts/get",
                json!({ "name": "greeting", "arguments": { "name": "Ada" } }),
            ),
            &request(
                5,
                "prompts/get",
                json!({ "name": "greeting", "arguments": {} }),
            ),
        ]);

        assert_eq!(replies[0]["result"]["resources"][0]["uri"], "demo://readme");
        assert!(replies[1]["result"]["contents"][0]["text"]
            .as_str()
            .unwrap()
            .contains("demo"));
        assert_eq!(
            replies[2]["result"]["prompts"][0]["arguments"][0]["name"],
            "name"
        );
        let text = replies[3]["result"]["messages"][0]["content"]["text"]
            .as_str()
            .unwrap();
        assert!(text.contains("Ada"));
        assert_eq!(replies[4]["error"]["code"], INVALID_PARAMS);
    }

    #[test]
    fn unknown_method_is_method_not_found() {
        let replies = exchange(&[&request(9, "nothing/here", json!({}))]);

        assert_eq!(replies[0]["id"], 9);
        assert_eq!(replies[0]["error"]["code"], METHOD_NOT_FOUND);
    }

    #[test]
    fn invalid_json_gets_a_parse_error_with_a_null_id() {
        let replies = exchange(&["{not json", &request(1, "ping", json!({}))]);

        assert_eq!(replies[0]["id"], Value::Null);
        assert_eq!(replies[0]["error"]["code"], PARSE_ERROR);
        assert_eq!(replies[1]["id"], 1);
    }

    #[test]
    fn stateless_requests_get_the_2026_result_fields() {
        let meta = json!({ PROTOCOL_VERSION_META_KEY: "2026-07-28" });
        let replies = exchange(&[
            &request(1, "server/discover", json!({ "_meta": meta })),
            &request(2, "tools/list", json!({ "_meta": meta })),
            &request(3, "tools/list", json!({})),
        ]);

        assert_eq!(
            replies[0]["result"]["supportedVersions"],
            json!(["2026-07-28"])
        );
        assert_eq!(replies[0]["result"]["resultType"], "complete");
        assert_eq!(replies[1]["result"]["ttlMs"], 0);
        assert_eq!(replies[1]["result"]["cacheScope"], "private");
        assert!(replies[2]["result"].get("resultType").is_none());
    }
}
