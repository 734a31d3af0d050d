//! `thv-actor client-config` end to end: the real binary printing entries
//! and merging them into client files under a private HOME.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

const CLIENTS: [(&str, &str); 3] = [
    ("claude-desktop", "mcpServers"),
    ("cursor", "mcpServers"),
    ("vscode", "servers"),
];

/// A private HOME with XDG_CONFIG_HOME inside it, as a fresh user has.
struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Home {
        Home {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn xdg(&self) -> PathBuf {
        self.dir.path().join("xdg")
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_thv-actor"))
            .args(args)
            .env("HOME", self.dir.path())
            .env("XDG_CONFIG_HOME", self.xdg())
            .stdin(Stdio::null())
            .output()
            .expect("spawn thv-actor")
    }

    /// Where each client's user file is for this HOME on Linux.
    fn config_file(&self, client: &str) -> PathBuf {
        match client {
            "claude-desktop" => self.xdg().join("Claude/claude_desktop_config.json"),
            "cursor" => self.dir.path().join(".cursor/mcp.json"),
            "vscode" => self.xdg().join("Code/User/mcp.json"),
            other => panic!("no client {other}"),
        }
    }

    fn write(&self, client: &str, workload: &str) -> Output {
        self.run(&["client-config", workload, "--client", client, "--write"])
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ok(out: &Output) {
    assert!(out.status.success(), "failed: {}", stderr(out));
}

fn program() -> String {
    fs::canonicalize(env!("CARGO_BIN_EXE_thv-actor"))
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned()
}

/// The entry this binary writes for `workload` in `client`'s format.
fn expected_entry(client: &str, workload: &str) -> Value {
    let mut entry = json!({ "command": program(), "args": ["bridge", workload] });
    if client == "vscode" {
        entry["type"] = json!("stdio");
    }
    entry
}

/// Backups made next to `file`.
fn backups(file: &Path) -> Vec<PathBuf> {
    let prefix = format!("{}.bak-", file.file_name().unwrap().to_str().unwrap());
    let Ok(entries) = fs::read_dir(file.parent().unwrap()) else {
        return Vec::new();
    };
    entries
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with(&prefix)
        })
        .collect()
}

#[test]
fn prints_each_clients_entry_with_the_absolute_program_path() {
    let home = Home::new();
    for (client, key) in CLIENTS {
        let out = home.run(&["client-config", "files", "--client", client]);
        ok(&out);

        let printed: Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
        assert_eq!(
            printed,
            json!({ key: { "files": expected_entry(client, "files") } })
        );
        let command = printed[key]["files"]["command"].as_str().unwrap();
        assert!(Path::new(command).is_absolute(), "{command}");
        assert!(
            !home.config_file(client).exists(),
            "printing wrote {client}'s file"
        );
    }
}

#[test]
fn claude_desktop_is_the_default_client() {
    let home = Home::new();
    let out = home.run(&["client-config", "files"]);
    ok(&out);
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        printed["mcpServers"]["files"],
        expected_entry("claude-desktop", "files")
    );
}

#[test]
fn write_creates_a_missing_file_and_its_folders() {
    for (client, key) in CLIENTS {
        let home = Home::new();
        let out = home.write(client, "files");
        ok(&out);

        let file = home.config_file(client);
        let written: Value = serde_json::from_str(&fs::read_to_string(&file).unwrap()).unwrap();
        assert_eq!(
            written,
            json!({ key: { "files": expected_entry(client, "files") } })
        );
        assert!(
            stderr(&out).contains(&file.display().to_string()),
            "{}",
            stderr(&out)
        );
        assert!(out.stdout.is_empty(), "--write printed on stdout");
        assert!(
            backups(&file).is_empty(),
            "backed up a file that did not exist"
        );
    }
}

#[test]
fn write_keeps_other_servers_and_keys_in_order_and_backs_up() {
    let home = Home::new();
    let file = home.config_file("claude-desktop");
    fs::create_dir_all(file.parent().unwrap()).unwrap();
    let old = r#"{
    "globalShortcut": "Ctrl+Space",
    "mcpServers": {
        "alpha": {"command": "npx", "args": ["-y", "alpha"], "env": {"TOKEN": "t"}},
        "files": {"command": "/old/thv-actor", "args": ["bridge", "files"]},
        "zeta": {"command": "uvx", "args": ["zeta"]}
    },
    "theme": {"dark": true}
}"#;
    fs::write(&file, old).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
    }

    let out = home.write("claude-desktop", "files");
    ok(&out);

    let text = fs::read_to_string(&file).unwrap();
    let written: Value = serde_json::from_str(&text).unwrap();
    let mut expected: Value = serde_json::from_str(old).unwrap();
    expected["mcpServers"]["files"] = expected_entry("claude-desktop", "files");
    assert_eq!(written, expected);
    let order = [
        "globalShortcut",
        "mcpServers",
        "alpha",
        "\"files\"",
        "zeta",
        "theme",
    ]
    .map(|k| {
        text.find(k)
            .unwrap_or_else(|| panic!("{k} missing from {text}"))
    });
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "key order changed: {text}"
    );

    let backups = backups(&file);
    assert_eq!(backups.len(), 1, "{backups:?}");
    assert_eq!(fs::read_to_string(&backups[0]).unwrap(), old);
    assert!(
        stderr(&out).contains(&backups[0].display().to_string()),
        "{}",
        stderr(&out)
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for path in [&file, &backups[0]] {
            let mode = fs::metadata(path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", path.display());
        }
    }
}

#[test]
fn a_second_write_changes_nothing() {
    for (client, _) in CLIENTS {
        let home = Home::new();
        let file = home.config_file(client);
        fs::create_dir_all(file.parent().unwrap()).unwrap();
        fs::write(&file, r#"{"other": 1}"#).unwrap();

        ok(&home.write(client, "files"));
        let first = fs::read(&file).unwrap();
        let again = home.write(client, "files");
        ok(&again);

        assert_eq!(fs::read(&file).unwrap(), first, "{client}");
        assert_eq!(
            backups(&file).len(),
            1,
            "{client}: the second write made a backup"
        );
        assert!(stderr(&again).contains("unchanged"), "{}", stderr(&again));
    }
}

#[test]
fn refuses_a_file_it_cannot_rewrite_without_loss_and_leaves_it_alone() {
    let cases = [
        (
            "line comment",
            "{\n  // my servers\n  \"servers\": {}\n}\n",
            "comments",
        ),
        (
            "block comment",
            "{ /* none yet */ \"servers\": {} }",
            "comments",
        ),
        (
            "trailing comma",
            "{\"servers\": {\"a\": {\"command\": \"x\"},\n}}",
            "trailing comma",
        ),
        ("invalid JSON", "{\"servers\": {\"a\": }", "not valid JSON"),
        (
            "repeated key",
            "{\"servers\": {\"a\": {}, \"a\": {\"command\": \"x\"}}}",
            "twice",
        ),
        ("top level array", "[]", "object"),
        (
            "servers not an object",
            "{\"servers\": [1]}",
            "not an object",
        ),
    ];
    for (case, old, reason) in cases {
        let home = Home::new();
        let file = home.config_file("vscode");
        fs::create_dir_all(file.parent().unwrap()).unwrap();
        fs::write(&file, old).unwrap();

        let out = home.write("vscode", "files");

        assert_eq!(out.status.code(), Some(1), "{case}: {}", stderr(&out));
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{case}: {err}");
        assert!(err.contains(&file.display().to_string()), "{case}: {err}");
        assert!(
            err.contains(reason) && err.contains("by hand"),
            "{case}: {err}"
        );
        assert_eq!(
            fs::read_to_string(&file).unwrap(),
            old,
            "{case}: file changed"
        );
        assert!(backups(&file).is_empty(), "{case}: made a backup");
        let to_add: Value = serde_json::from_slice(&out.stdout).expect("the entry to add");
        assert_eq!(
            to_add["servers"]["files"],
            expected_entry("vscode", "files"),
            "{case}"
        );
    }
}

#[cfg(unix)]
#[test]
fn write_goes_through_a_symlinked_file() {
    let home = Home::new();
    let real = home.dir.path().join("dotfiles/mcp.json");
    fs::create_dir_all(real.parent().unwrap()).unwrap();
    fs::write(&real, "{}").unwrap();
    let link = home.config_file("cursor");
    fs::create_dir_all(link.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(&real, &link).unwrap();

    ok(&home.write("cursor", "files"));

    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    let written: Value = serde_json::from_str(&fs::read_to_string(&real).unwrap()).unwrap();
    assert_eq!(
        written["mcpServers"]["files"],
        expected_entry("cursor", "files")
    );
}

#[test]
fn rejects_a_bad_workload_name_in_one_line() {
    let home = Home::new();
    for args in [
        &["client-config", "Not A Name!"][..],
        &["client-config", "../x", "--write"][..],
    ] {
        let out = home.run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    assert!(!home.xdg().exists() && !home.dir.path().join(".cursor").exists());
}
