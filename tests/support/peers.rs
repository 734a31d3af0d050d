//! The real MCP peers `scripts/setup` installs under `$THV_TEST_ENV`:
//! server-everything (Node) and the Python SDK's HTTP client script.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use super::WAIT;

/// `$THV_TEST_ENV` (it holds the `py2` venv), or a failure saying to run
/// ./scripts/test.
pub fn test_env() -> PathBuf {
    super::require_setup();
    let dir = std::env::var_os("THV_TEST_ENV")
        .map(PathBuf::from)
        .expect("THV_TEST_ENV is not set: run ./scripts/test");
    assert!(
        dir.join("py2/bin/python").exists(),
        "{} has no py2 venv: run ./scripts/test",
        dir.display()
    );
    dir
}

/// The Python of venv `py1` or `py2`.
pub fn python(venv: &str) -> PathBuf {
    let path = test_env().join(venv).join("bin/python");
    assert!(
        path.exists(),
        "{} missing: run ./scripts/test",
        path.display()
    );
    path
}

/// The repository's `tests/python/<script>`.
pub fn script(name: &str) -> PathBuf {
    super::repo().join("tests/python").join(name)
}

/// server-everything on a free loopback port, killed when dropped.
pub struct Everything {
    child: Child,
    pub port: u16,
}

impl Everything {
    /// In streamable HTTP mode (`/mcp`).
    pub fn start() -> Everything {
        Everything::start_mode("streamableHttp")
    }

    /// In the legacy SSE mode (`/sse`).
    pub fn start_sse() -> Everything {
        Everything::start_mode("sse")
    }

    fn start_mode(mode: &str) -> Everything {
        let entry = Everything::entry();
        assert!(
            entry.exists(),
            "{} is missing: run ./scripts/test",
            entry.display()
        );
        let port = super::free_port();
        let child = Command::new("node")
            .arg(&entry)
            .arg(mode)
            .env("PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn node (server-everything {mode}): {e}"));
        let mut everything = Everything { child, port };

        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = everything.child.try_wait().unwrap() {
                panic!("server-everything ({mode}) exited at start: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "server-everything ({mode}) did not listen on {port} within {WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        everything
    }

    /// Its entry script.
    pub fn entry() -> PathBuf {
        test_env().join("node/node_modules/@modelcontextprotocol/server-everything/dist/index.js")
    }

    /// The streamable HTTP endpoint.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/mcp", self.port)
    }
}

impl Drop for Everything {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `tests/python/mcp_client.py` with `venv`'s Python; `key` goes in
/// `THV_TEST_KEY` (sent as `X-ToolHive-Auth`). Returns the exit status, the
/// JSON it printed on stdout and its stderr.
pub fn mcp_client(
    venv: &str,
    key: Option<&str>,
    args: &[&str],
) -> (ExitStatus, serde_json::Value, String) {
    let cmd = mcp_client_cmd(venv, key, args);
    parse_client_output(super::run_bounded(cmd, Duration::from_secs(60)))
}

/// The command of [`mcp_client`], to start several at once.
pub fn mcp_client_cmd(venv: &str, key: Option<&str>, args: &[&str]) -> Command {
    let mut cmd = Command::new(python(venv));
    cmd.arg(script("mcp_client.py"))
        .args(args)
        .stdin(Stdio::null())
        .env_remove("THV_TEST_KEY");
    if let Some(key) = key {
        cmd.env("THV_TEST_KEY", key);
    }
    cmd
}

/// The exit status, the JSON on stdout (`null` if none) and stderr.
pub fn parse_client_output(out: Output) -> (ExitStatus, serde_json::Value, String) {
    let stdout = super::stdout(&out);
    let json = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or(serde_json::Value::Null);
    (out.status, json, super::stderr(&out))
}

/// The text of every `text` content item of a tool result.
pub fn texts(result: &serde_json::Value) -> Vec<String> {
    result["content"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i["text"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}
