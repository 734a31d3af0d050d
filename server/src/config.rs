//! The serve configuration file: what each workload is and how it is
//! exposed.
//!
//! ```toml
//! [[workloads]]
//! name = "time"
//! command = ["mcp-server-time", "--local-timezone", "UTC"]
//! env = { TZ = "UTC" }
//!
//! [[workloads]]
//! name = "everything"
//! url = "http://127.0.0.1:3001/mcp"
//! transport = "streamable-http"
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use thv_actors::WorkloadName;

/// Default overlap of a scheduled rotation.
pub const DEFAULT_ROTATION_OVERLAP: Duration = Duration::from_secs(600);

/// What a workload runs or reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// A stdio MCP server serve spawns.
    Command {
        /// Program and arguments.
        argv: Vec<String>,
        /// Extra environment.
        env: BTreeMap<String, String>,
    },
    /// An MCP server over HTTP.
    Url {
        /// Where it is.
        url: String,
        /// How it speaks.
        transport: Transport,
        /// Headers added toward it.
        headers: BTreeMap<String, String>,
    },
}

/// An HTTP MCP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// Streamable HTTP (one endpoint, POST/GET/DELETE).
    StreamableHttp,
    /// The legacy HTTP+SSE transport.
    Sse,
}

impl Transport {
    /// The config and `list --json` name.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::StreamableHttp => "streamable-http",
            Transport::Sse => "sse",
        }
    }
}

/// One workload, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// Its name, which also names its key.
    pub name: WorkloadName,
    /// What it runs or reaches.
    pub upstream: Upstream,
    /// The loopback port to listen on; `None` picks one and remembers it.
    pub port: Option<u16>,
    /// Whether requests need the key. Off is loudly logged.
    pub shared_key_auth: bool,
    /// Whether a command workload's process gets the key as
    /// `TOOLHIVE_SHARED_KEY`.
    pub inject_key_env: bool,
    /// Rotate the key every this many days; 0 never.
    pub key_rotation_days: u32,
    /// How long a scheduled rotation keeps the previous key valid.
    pub rotation_overlap: Duration,
    /// Command workloads: end a session idle this long; `None` never (and
    /// always for `url` workloads, whose sessions are the upstream's).
    pub session_idle_timeout: Option<Duration>,
    /// Origins allowed beyond the listener's own.
    pub allowed_origins: Vec<String>,
    /// Where to listen: loopback TCP (`port`) or a Unix socket.
    pub listen: Listen,
    /// Whether the kernel is asked who each connecting peer is.
    pub peer_check: bool,
    /// The uids admitted by the peer check; empty means serve's own uid.
    pub allowed_uids: Vec<u32>,
}

/// Where a workload's listener is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// Loopback TCP, on `port` or a remembered or free one.
    Tcp,
    /// A Unix socket at this path, mode 0600.
    Unix(PathBuf),
}

/// The whole file, checked.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Config {
    /// The workloads, in file order.
    pub workloads: Vec<Workload>,
}

/// A configuration the user must fix. The message names the file, the
/// workload and the field.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {message}", path.display(), workload.as_ref().map(|w| format!(": workload {w}")).unwrap_or_default())]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// The workload, by name or by position when it has no usable name.
    pub workload: Option<String>,
    /// What is wrong, naming the field.
    pub message: String,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    workloads: Vec<toml::Value>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkload {
    name: String,
    command: Option<Vec<String>>,
    url: Option<String>,
    transport: Option<Transport>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    port: Option<u16>,
    #[serde(default = "yes")]
    shared_key_auth: bool,
    #[serde(default)]
    inject_key_env: bool,
    #[serde(default)]
    key_rotation_days: u32,
    rotation_overlap: Option<String>,
    session_idle_timeout: Option<String>,
    #[serde(default)]
    allowed_origins: Vec<String>,
    listen: Option<String>,
    #[serde(default = "yes")]
    peer_check: bool,
    #[serde(default)]
    allowed_uids: Vec<u32>,
}

fn yes() -> bool {
    true
}

impl Config {
    /// Reads and checks the file at `path`.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for an unreadable file, bad TOML, an unknown key, a
    /// bad or duplicate name, both or neither of `command` and `url`,
    /// fields that do not fit the kind of workload, or duplicate ports.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.to_owned(),
            workload: None,
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(&text, path)
    }

    /// Checks `text` as the contents of `path`.
    ///
    /// # Errors
    ///
    /// As [`Config::load`].
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let file_error = |workload: Option<String>, message: String| ConfigError {
            path: path.to_owned(),
            workload,
            message,
        };

        let raw: RawFile =
            toml::from_str(text).map_err(|e| file_error(None, one_line(e.message())))?;

        let mut config = Config::default();
        let mut names = BTreeSet::new();
        let mut ports = BTreeMap::new();
        for (index, value) in raw.workloads.into_iter().enumerate() {
            // Name the workload in errors even when the rest of it is bad.
            let label = value
                .get("name")
                .and_then(toml::Value::as_str)
                .map(|n| format!("\"{}\"", n.escape_debug()))
                .unwrap_or_else(|| format!("#{}", index + 1));
            let err = |message: String| file_error(Some(label.clone()), message);

            let raw: RawWorkload = value
                .try_into()
                .map_err(|e: toml::de::Error| err(one_line(e.message())))?;
            let workload = check(raw).map_err(err)?;
            if !names.insert(workload.name.clone()) {
                return Err(err(
                    "field `name`: another workload has the same name".into()
                ));
            }
            if let Some(port) = workload.port {
                if let Some(other) = ports.insert(port, workload.name.clone()) {
                    return Err(err(format!(
                        "field `port`: {port} is also the port of workload {other}"
                    )));
                }
            }
            config.workloads.push(workload);
        }
        Ok(config)
    }
}

fn check(raw: RawWorkload) -> Result<Workload, String> {
    let name = WorkloadName::new(&raw.name).map_err(|e| format!("field `name`: {e}"))?;

    let upstream = match (raw.command, raw.url) {
        (Some(_), Some(_)) => return Err("give `command` or `url`, not both".into()),
        (None, None) => {
            return Err("give `command` (a stdio server) or `url` (an HTTP server)".into())
        }
        (Some(argv), None) => {
            if argv.is_empty() || argv[0].is_empty() {
                return Err("field `command`: must name a program".into());
            }
            if raw.transport.is_some() {
                return Err("field `transport`: only for `url` workloads".into());
            }
            if !raw.headers.is_empty() {
                return Err("field `headers`: only for `url` workloads".into());
            }
            Upstream::Command { argv, env: raw.env }
        }
        (None, Some(url)) => {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err("field `url`: must start with http:// or https://".into());
            }
            if !raw.env.is_empty() {
                return Err("field `env`: only for `command` workloads".into());
            }
            if raw.inject_key_env {
                return Err("field `inject_key_env`: only for `command` workloads".into());
            }
            if raw.session_idle_timeout.is_some() {
                return Err(
                    "field `session_idle_timeout`: only for `command` workloads \
                            (an upstream server keeps its own sessions)"
                        .into(),
                );
            }
            Upstream::Url {
                url,
                transport: raw.transport.unwrap_or(Transport::StreamableHttp),
                headers: raw.headers,
            }
        }
    };

    if raw.port == Some(0) {
        return Err("field `port`: 0 is not a port; leave it out to get a free one".into());
    }
    let rotation_overlap = match raw.rotation_overlap {
        Some(text) => humantime::parse_duration(&text)
            .map_err(|e| format!("field `rotation_overlap`: \"{}\": {e}", text.escape_debug()))?,
        None => DEFAULT_ROTATION_OVERLAP,
    };
    // A `url` workload naming one was refused above.
    let session_idle_timeout = match raw.session_idle_timeout {
        None => default_session_idle_timeout(&upstream),
        Some(text) => {
            let timeout = humantime::parse_duration(&text).map_err(|e| {
                format!(
                    "field `session_idle_timeout`: \"{}\": {e} (\"0s\" keeps idle sessions)",
                    text.escape_debug()
                )
            })?;
            Some(timeout).filter(|t| !t.is_zero())
        }
    };
    for origin in &raw.allowed_origins {
        if origin == "null" || !(origin.starts_with("http://") || origin.starts_with("https://")) {
            return Err(format!(
                "field `allowed_origins`: \"{}\" is not an http(s) origin",
                origin.escape_debug()
            ));
        }
    }

    let listen = match raw.listen.as_deref() {
        None => Listen::Tcp,
        Some(text) => {
            let path = text
                .strip_prefix("unix:")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute());
            let Some(path) = path else {
                return Err(format!(
                    "field `listen`: \"{}\" is not unix:/absolute/path (TCP listeners use `port`)",
                    text.escape_debug()
                ));
            };
            if raw.port.is_some() {
                return Err("field `listen`: a Unix socket has no `port`".into());
            }
            Listen::Unix(path)
        }
    };
    if !raw.peer_check && !raw.allowed_uids.is_empty() {
        return Err("field `allowed_uids`: has no effect with peer_check = false".into());
    }

    Ok(Workload {
        name,
        upstream,
        listen,
        peer_check: raw.peer_check,
        allowed_uids: raw.allowed_uids,
        port: raw.port,
        shared_key_auth: raw.shared_key_auth,
        inject_key_env: raw.inject_key_env,
        key_rotation_days: raw.key_rotation_days,
        rotation_overlap,
        session_idle_timeout,
        allowed_origins: raw.allowed_origins,
    })
}

/// The `session_idle_timeout` of a workload whose config names none:
/// [`crate::stdio::DEFAULT_SESSION_IDLE_TIMEOUT`] for a `command` workload,
/// none for a `url` workload (the upstream keeps its own sessions).
pub fn default_session_idle_timeout(upstream: &Upstream) -> Option<Duration> {
    match upstream {
        Upstream::Command { .. } => Some(crate::stdio::DEFAULT_SESSION_IDLE_TIMEOUT),
        Upstream::Url { .. } => None,
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The default config path: `$XDG_CONFIG_HOME/thv-actor/config.toml`, else
/// `~/.config/thv-actor/config.toml`.
pub fn default_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| thv_actors::home_dir().ok().map(|h| h.join(".config")))?;
    Some(base.join("thv-actor").join("config.toml"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("/etc/x.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn reads_both_kinds_of_workload() {
        let config = parse(
            r#"
            [[workloads]]
            name = "time"
            command = ["mcp-server-time", "--local-timezone", "UTC"]
            env = { TZ = "UTC" }
            port = 8811
            inject_key_env = true
            key_rotation_days = 30
            rotation_overlap = "1h"

            [[workloads]]
            name = "everything"
            url = "http://127.0.0.1:3001/sse"
            transport = "sse"
            headers = { "X-Api" = "v" }
            allowed_origins = ["http://localhost:6274"]
            "#,
        )
        .unwrap();
        assert_eq!(config.workloads.len(), 2);
        let time = &config.workloads[0];
        assert_eq!(time.port, Some(8811));
        assert!(time.shared_key_auth && time.inject_key_env);
        assert_eq!(time.rotation_overlap, Duration::from_secs(3600));
        assert_eq!(
            time.session_idle_timeout,
            Some(crate::stdio::DEFAULT_SESSION_IDLE_TIMEOUT)
        );
        assert_eq!(config.workloads[1].session_idle_timeout, None);
        assert!(matches!(
            &config.workloads[1].upstream,
            Upstream::Url {
                transport: Transport::Sse,
                ..
            }
        ));
    }

    #[test]
    fn session_idle_timeout_is_a_duration_and_zero_keeps_sessions() {
        let timeout = |value: &str| {
            parse(&format!(
                "[[workloads]]\nname = \"a\"\ncommand = [\"x\"]\nsession_idle_timeout = \"{value}\"\n"
            ))
            .map(|c| c.workloads[0].session_idle_timeout)
        };
        assert_eq!(timeout("90s"), Ok(Some(Duration::from_secs(90))));
        assert_eq!(timeout("2h"), Ok(Some(Duration::from_secs(7200))));
        assert_eq!(timeout("0s"), Ok(None));
        let err = timeout("soon").unwrap_err();
        assert!(
            err.contains("field `session_idle_timeout`") && err.contains("\"soon\""),
            "{err}"
        );
    }

    #[test]
    fn errors_name_the_file_the_workload_and_the_field() {
        let cases = [
            ("[[workloads]]\nname = \"a\"\ncomand = [\"x\"]\n", "workload \"a\"", "comand"),
            ("[[workloads]]\nname = \"a\"\n", "workload \"a\"", "`command`"),
            ("[[workloads]]\nname = \"a\"\ncommand = [\"x\"]\nurl = \"http://h/\"\n", "workload \"a\"", "not both"),
            ("[[workloads]]\nname = \"Bad\"\ncommand = [\"x\"]\n", "workload \"Bad\"", "field `name`"),
            ("[[workloads]]\ncommand = [\"x\"]\n", "workload #1", "name"),
            (
                "[[workloads]]\nname = \"a\"\ncommand = [\"x\"]\n[[workloads]]\nname = \"a\"\ncommand = [\"y\"]\n",
                "workload \"a\"",
                "same name",
            ),
            (
                "[[workloads]]\nname = \"a\"\ncommand = [\"x\"]\nport = 9\n[[workloads]]\nname = \"b\"\ncommand = [\"y\"]\nport = 9\n",
                "workload \"b\"",
                "field `port`",
            ),
            ("[[workloads]]\nname = \"a\"\nurl = \"ftp://h/\"\n", "workload \"a\"", "field `url`"),
            ("[[workloads]]\nname = \"a\"\ncommand = [\"x\"]\nrotation_overlap = \"soon\"\n", "workload \"a\"", "rotation_overlap"),
            ("[[workloads]]\nname = \"a\"\nurl = \"http://h/\"\nsession_idle_timeout = \"1m\"\n", "workload \"a\"", "field `session_idle_timeout`: only for `command`"),
            ("[[workloads]]\nname = \"a\"\ncommand = [\"x\"]\nallowed_origins = [\"null\"]\n", "workload \"a\"", "allowed_origins"),
            ("workload = 1\n", "/etc/x.toml", "workload"),
            ("[[workloads]]\nname = \"a\"\ncommand = [\"x\"]\nlisten = \"tcp:1\"\n", "workload \"a\"", "field `listen`"),
            ("[[workloads]]\nname = \"a\"\ncommand = [\"x\"]\nlisten = \"unix:/r/s\"\nport = 3\n", "workload \"a\"", "no `port`"),
            ("[[workloads]]\nname = \"a\"\ncommand = [\"x\"]\npeer_check = false\nallowed_uids = [1]\n", "workload \"a\"", "allowed_uids"),
        ];
        for (text, who, what) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.starts_with("/etc/x.toml"), "{err}");
            assert!(!err.is_empty());
            assert!(err.contains(who) && err.contains(what), "{text:?} -> {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }
}
