//! `thv-actor client-config`: the entry an MCP client needs to launch the
//! bridge for one workload, printed or merged into the client's own file.
//!
//! The entry holds only the path of this program and `bridge <workload>`;
//! the key stays in the keychain, which is the point of the bridge. This
//! module never reads a key.
//!
//! # Limitations
//!
//! - A merged file is written back pretty-printed with two-space indents; its
//!   original layout is kept only in the backup.
//! - A number that does not fit an `f64` or `u64` would be written back
//!   rounded. MCP client files hold none in practice.
//! - Project-level files (`.cursor/mcp.json` or `.vscode/mcp.json` in a
//!   repository) are not written; print the entry and add it there by hand.

use std::collections::HashSet;
use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{json, Map, Value};
use thv_actors::WorkloadName;

use crate::cli::{ClientConfigArgs, ClientKind};
use crate::CliError;

/// Prints the client's entry for the workload on stdout, or with `--write`
/// merges it into the client's user-level file.
///
/// # Errors
///
/// A bad workload name; no path for this program; with `--write`, a file
/// that cannot be read, parsed without loss, backed up or replaced. A file
/// that is refused is left byte for byte as it was.
pub fn run(args: ClientConfigArgs) -> Result<ExitCode, CliError> {
    let workload = WorkloadName::new(&args.workload)?;
    let exe = program_path()?;
    let entry = server_entry(args.client, &exe, &workload);

    if !args.write {
        println!("{}", pretty(&snippet(args.client, &workload, &entry)));
        return Ok(ExitCode::SUCCESS);
    }

    let path = user_config_path(args.client)?;
    merge_into_file(&path, args.client, &workload, entry)?;
    Ok(ExitCode::SUCCESS)
}

/// The absolute, symlink-free path of the running binary: what the client
/// will launch, whatever the current directory or PATH is then.
pub(crate) fn program_path() -> Result<String, CliError> {
    let exe = std::env::current_exe()
        .and_then(fs::canonicalize)
        .map_err(|e| CliError::new(format!("cannot find the path of this program: {e}")))?;
    exe.into_os_string()
        .into_string()
        .map_err(|p| CliError::new(format!("the path of this program is not UTF-8: {p:?}")))
}

/// One server entry in the client's format.
fn server_entry(client: ClientKind, exe: &str, workload: &WorkloadName) -> Value {
    let args = json!(["bridge", workload.as_str()]);
    match client {
        ClientKind::ClaudeDesktop | ClientKind::Cursor => json!({ "command": exe, "args": args }),
        ClientKind::Vscode => json!({ "type": "stdio", "command": exe, "args": args }),
    }
}

/// The key of the object that holds the servers in the client's file.
fn servers_key(client: ClientKind) -> &'static str {
    match client {
        ClientKind::ClaudeDesktop | ClientKind::Cursor => "mcpServers",
        ClientKind::Vscode => "servers",
    }
}

/// A whole file's worth: the entry under the servers key.
fn snippet(client: ClientKind, workload: &WorkloadName, entry: &Value) -> Value {
    json!({ servers_key(client): { workload.as_str(): entry } })
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).expect("a JSON value always serializes")
}

struct ClientName(ClientKind);

impl fmt::Display for ClientName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            ClientKind::ClaudeDesktop => "Claude Desktop",
            ClientKind::Cursor => "Cursor",
            ClientKind::Vscode => "VS Code",
        })
    }
}

/// The client's user-level file at its standard place on this platform.
fn user_config_path(client: ClientKind) -> Result<PathBuf, CliError> {
    let home = thv_actors::home_dir()?;
    Ok(match client {
        ClientKind::ClaudeDesktop => app_data_dir(&home)?
            .join("Claude")
            .join("claude_desktop_config.json"),
        ClientKind::Cursor => home.join(".cursor").join("mcp.json"),
        ClientKind::Vscode => app_data_dir(&home)?
            .join("Code")
            .join("User")
            .join("mcp.json"),
    })
}

/// Where Electron apps (Claude Desktop, VS Code) keep per-user data:
/// `~/Library/Application Support` on macOS, `%APPDATA%` on Windows, and
/// `$XDG_CONFIG_HOME` (when absolute) or `~/.config` elsewhere.
fn app_data_dir(home: &Path) -> Result<PathBuf, CliError> {
    if cfg!(target_os = "macos") {
        return Ok(home.join("Library").join("Application Support"));
    }
    if cfg!(windows) {
        return std::env::var_os("APPDATA")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .ok_or_else(|| {
                CliError::new("cannot find the client's config folder: APPDATA is unset")
            });
    }
    Ok(std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|dir| dir.is_absolute())
        .unwrap_or_else(|| home.join(".config")))
}

/// Puts `entry` under the servers key of the file at `path`, replacing only
/// this workload's entry, after backing the old file up.
fn merge_into_file(
    path: &Path,
    client: ClientKind,
    workload: &WorkloadName,
    entry: Value,
) -> Result<(), CliError> {
    // Write through a symlink (a dotfiles checkout, say) rather than over it.
    let path = fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let old = read_if_present(&path)?;

    // Parse, and refuse anything that would not survive a rewrite.
    let mut doc = match old.as_deref() {
        None => Map::new(),
        Some(text) => parse_losslessly(text, servers_key(client))
            .map_err(|why| refuse(&path, &why, client, workload, &entry))?,
    };

    let servers = doc
        .entry(servers_key(client))
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .expect("parse_losslessly checked that the servers value is an object");
    if servers.get(workload.as_str()) == Some(&entry) {
        eprintln!(
            "{} already has this entry for workload {workload}; left unchanged",
            path.display()
        );
        return Ok(());
    }
    // Replaces in place when present, so the order of the entries stays.
    servers.insert(workload.to_string(), entry);
    let text = pretty(&Value::Object(doc)) + "\n";

    // Keep the old bytes before anything replaces them.
    match &old {
        Some(old) => {
            let backup = back_up(&path, old)?;
            eprintln!("backed up {} to {}", path.display(), backup.display());
        }
        None => create_parent(&path)?,
    }

    write_atomically(&path, &text)?;
    eprintln!(
        "wrote workload {workload} to {} for {}; restart it to load the entry",
        path.display(),
        ClientName(client)
    );
    Ok(())
}

fn read_if_present(path: &Path) -> Result<Option<String>, CliError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CliError::new(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

/// Parses a client file as strict JSON whose top level and servers value
/// are objects; whitespace alone reads as an empty object.
///
/// # Errors
///
/// Why the file cannot be rewritten without loss, as a phrase: comments or
/// trailing commas (which VS Code accepts), a repeated key (a parse would
/// keep only the last), or anything else that is not JSON of that shape.
fn parse_losslessly(text: &str, servers_key: &str) -> Result<Map<String, Value>, String> {
    if text.trim().is_empty() {
        return Ok(Map::new());
    }

    // TODO: refuse numbers an f64 would round too (needs serde_json's
    // arbitrary_precision, which would change numbers for the whole workspace)
    let doc: Value = match serde_json::from_str(text) {
        Ok(doc) => doc,
        Err(e) => {
            return Err(jsonc_feature(text)
                .map_or_else(|| format!("is not valid JSON ({e})"), str::to_owned))
        }
    };
    serde_json::from_str::<NoRepeatedKeys>(text).map_err(|e| format!("has {e}"))?;

    let Value::Object(doc) = doc else {
        return Err("does not hold a JSON object".to_owned());
    };
    match doc.get(servers_key) {
        None | Some(Value::Object(_)) => Ok(doc),
        Some(_) => Err(format!("has a \"{servers_key}\" that is not an object")),
    }
}

/// Names the JSONC extension a text uses outside its strings, if any.
fn jsonc_feature(text: &str) -> Option<&'static str> {
    let mut chars = text.chars().peekable();
    let mut in_string = false;
    while let Some(c) = chars.next() {
        if in_string {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match (c, chars.peek()) {
            ('"', _) => in_string = true,
            ('/', Some('/' | '*')) => return Some("has comments"),
            (',', _) => {
                let next = chars.clone().find(|c| !c.is_whitespace());
                if matches!(next, Some('}' | ']')) {
                    return Some("has a trailing comma");
                }
            }
            _ => {}
        }
    }
    None
}

/// Reads any JSON value and fails at an object key seen twice, which a
/// `serde_json::Value` would silently collapse to its last value.
struct NoRepeatedKeys;

impl<'de> Deserialize<'de> for NoRepeatedKeys {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NoRepeatedKeys)
    }
}

impl<'de> Visitor<'de> for NoRepeatedKeys {
    type Value = NoRepeatedKeys;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_str<E>(self, _: &str) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_unit<E>(self) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<NoRepeatedKeys>()?.is_some() {}
        Ok(self)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self, A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            map.next_value::<NoRepeatedKeys>()?;
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format!(
                    "the key \"{key}\" twice in one object"
                )));
            }
        }
        Ok(self)
    }
}

/// Prints the snippet to add by hand, and the one-line error that says so.
fn refuse(
    path: &Path,
    why: &str,
    client: ClientKind,
    workload: &WorkloadName,
    entry: &Value,
) -> CliError {
    println!("{}", pretty(&snippet(client, workload, entry)));
    CliError::new(format!(
        "{} {why}, so it is not rewritten (that would lose part of it); \
         edit it by hand: add the entry printed on stdout",
        path.display()
    ))
}

/// Copies the old bytes to `<file>.bak-<unix seconds>` (with `-<n>` added
/// when that exists), with the file's permissions.
fn back_up(path: &Path, old: &str) -> Result<PathBuf, CliError> {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let fail = |target: &Path, e: std::io::Error| {
        CliError::new(format!(
            "cannot back {} up to {}: {e}",
            path.display(),
            target.display()
        ))
    };

    for n in 0..100 {
        let suffix = if n == 0 {
            format!("bak-{secs}")
        } else {
            format!("bak-{secs}-{n}")
        };
        let target = with_suffix(path, &suffix);
        let mut file = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&target)
        {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(fail(&target, e)),
        };
        copy_permissions(path, &file).map_err(|e| fail(&target, e))?;
        file.write_all(old.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| fail(&target, e))?;
        return Ok(target);
    }
    Err(CliError::new(format!(
        "cannot back {} up: too many backups from this second",
        path.display()
    )))
}

/// `dir/name.suffix` for `dir/name`.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".");
    name.push(suffix);
    path.with_file_name(name)
}

fn create_parent(path: &Path) -> Result<(), CliError> {
    let Some(dir) = path.parent() else {
        return Ok(());
    };
    fs::create_dir_all(dir)
        .map_err(|e| CliError::new(format!("cannot create directory {}: {e}", dir.display())))
}

/// Gives `file` the permissions of `path`, when `path` exists.
fn copy_permissions(path: &Path, file: &fs::File) -> std::io::Result<()> {
    match fs::metadata(path) {
        Ok(meta) => file.set_permissions(meta.permissions()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Replaces `path` with `text` through a temporary file beside it and a
/// rename, so a crash leaves either the old file or the new one.
pub(crate) fn write_atomically(path: &Path, text: &str) -> Result<(), CliError> {
    let tmp = with_suffix(path, &format!("tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        copy_permissions(path, &file)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        CliError::new(format!("cannot write {}: {e}", path.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "mcpServers";

    #[test]
    fn names_comments_and_trailing_commas_outside_strings() {
        assert_eq!(jsonc_feature("{\"a\": 1 // note\n}"), Some("has comments"));
        assert_eq!(jsonc_feature("{/* x */}"), Some("has comments"));
        assert_eq!(
            jsonc_feature("{\"a\": [1, 2,\n ]}"),
            Some("has a trailing comma")
        );
        assert_eq!(jsonc_feature("{\"a\": 1,\n}"), Some("has a trailing comma"));
        assert_eq!(
            jsonc_feature(r#"{"url": "http://x/*", "q": "a\",}"}"#),
            None
        );
        assert_eq!(jsonc_feature("{\"a\": 1 \"b\"}"), None);
    }

    #[test]
    fn refuses_repeated_keys_at_any_depth() {
        let err = parse_losslessly(r#"{"mcpServers": {"a": {}, "a": {}}}"#, KEY).unwrap_err();
        assert!(err.contains("\"a\" twice"), "{err}");
        assert!(parse_losslessly(r#"{"x": [{"a": 1}, {"a": 2}]}"#, KEY).is_ok());
    }

    #[test]
    fn refuses_a_shape_it_cannot_merge_into() {
        assert!(parse_losslessly("[]", KEY).unwrap_err().contains("object"));
        assert!(parse_losslessly(r#"{"mcpServers": []}"#, KEY)
            .unwrap_err()
            .contains("not an object"));
        assert!(parse_losslessly("{", KEY)
            .unwrap_err()
            .starts_with("is not valid JSON"));
        assert!(parse_losslessly(" \n", KEY).unwrap().is_empty());
    }
}
