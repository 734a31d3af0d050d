//! `thv-actor service install|uninstall` end to end on Linux: the real
//! binary writing and removing the systemd user unit under a private HOME.
//!
//! Every run is cut off from any user manager (XDG_RUNTIME_DIR points at an
//! empty folder and the session bus at nothing), so a test can never touch
//! a service of the person running it. The path where systemctl is reached
//! is therefore not exercised here.

#![cfg(target_os = "linux")]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const START: &str =
    "systemctl --user daemon-reload && systemctl --user enable --now thv-actor.service";

struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Home {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("runtime")).unwrap();
        Home { dir }
    }

    fn unit(&self) -> PathBuf {
        self.dir.path().join("xdg/systemd/user/thv-actor.service")
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_program(Path::new(env!("CARGO_BIN_EXE_thv-actor")), args)
    }

    fn run_program(&self, program: &Path, args: &[&str]) -> Output {
        Command::new(program)
            .args(args)
            .env("HOME", self.dir.path())
            .env("XDG_CONFIG_HOME", self.dir.path().join("xdg"))
            .env("XDG_RUNTIME_DIR", self.dir.path().join("runtime"))
            .env(
                "DBUS_SESSION_BUS_ADDRESS",
                "unix:path=/nonexistent/thv-actor-test-bus",
            )
            .env_remove("THV_ACTOR_CONFIG")
            .stdin(Stdio::null())
            .output()
            .expect("spawn thv-actor")
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ok(out: &Output) {
    assert_eq!(out.status.code(), Some(0), "failed: {}", stderr(out));
}

fn program() -> String {
    let exe = fs::canonicalize(env!("CARGO_BIN_EXE_thv-actor")).unwrap();
    exe.to_str().unwrap().to_owned()
}

fn line_of<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} line in {text}"))
}

#[test]
fn install_no_start_writes_the_unit_and_says_how_to_start_it() {
    let home = Home::new();
    let out = home.run(&["service", "install", "--no-start"]);
    ok(&out);

    let text = fs::read_to_string(home.unit()).expect("the unit file");
    assert_eq!(
        line_of(&text, "ExecStart="),
        format!("ExecStart={} serve", program())
    );
    assert_eq!(line_of(&text, "Restart="), "Restart=on-failure");
    assert_eq!(line_of(&text, "WantedBy="), "WantedBy=default.target");
    assert!(stderr(&out).contains(START), "{}", stderr(&out));
}

#[test]
fn install_passes_an_absolute_config_quoted_for_systemd() {
    let home = Home::new();
    let dir = home.dir.path().join("my conf 100%");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("config.toml"), "").unwrap();

    // A relative path, from the folder above the config.
    let out = Command::new(env!("CARGO_BIN_EXE_thv-actor"))
        .current_dir(home.dir.path())
        .args([
            "service",
            "install",
            "--no-start",
            "--config",
            "my conf 100%/config.toml",
        ])
        .env("HOME", home.dir.path())
        .env("XDG_CONFIG_HOME", home.dir.path().join("xdg"))
        .output()
        .unwrap();
    ok(&out);

    let text = fs::read_to_string(home.unit()).unwrap();
    let config = fs::canonicalize(dir.join("config.toml")).unwrap();
    let quoted = format!("\"{}\"", config.to_str().unwrap().replace('%', "%%"));
    assert_eq!(
        line_of(&text, "ExecStart="),
        format!("ExecStart={} serve --config {quoted}", program())
    );
}

#[test]
fn install_refuses_a_missing_config() {
    let home = Home::new();
    let out = home.run(&[
        "service",
        "install",
        "--no-start",
        "--config",
        "/nonexistent/c.toml",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("/nonexistent/c.toml"));
    assert!(!home.unit().exists());
}

#[test]
fn install_without_a_user_manager_writes_the_unit_and_exits_0() {
    let home = Home::new();
    let out = home.run(&["service", "install"]);
    ok(&out);

    assert!(home.unit().exists());
    let err = stderr(&out);
    assert!(
        err.contains("not available") && err.contains(START),
        "{err}"
    );
}

#[test]
fn install_twice_updates_the_unit() {
    let home = Home::new();
    ok(&home.run(&["service", "install", "--no-start"]));
    fs::write(home.unit(), "stale").unwrap();

    let out = home.run(&["service", "install", "--no-start"]);
    ok(&out);
    assert!(stderr(&out).contains("updated"), "{}", stderr(&out));
    assert!(fs::read_to_string(home.unit())
        .unwrap()
        .contains("Restart=on-failure"));
}

#[test]
fn uninstall_removes_the_unit_and_its_enable_link() {
    let home = Home::new();
    ok(&home.run(&["service", "install", "--no-start"]));
    // What `systemctl --user enable` would have made.
    let wants = home
        .dir
        .path()
        .join("xdg/systemd/user/default.target.wants");
    fs::create_dir(&wants).unwrap();
    std::os::unix::fs::symlink(home.unit(), wants.join("thv-actor.service")).unwrap();

    let out = home.run(&["service", "uninstall"]);
    ok(&out);

    assert!(!home.unit().exists());
    assert!(fs::symlink_metadata(wants.join("thv-actor.service")).is_err());
    let err = stderr(&out);
    assert!(
        err.contains("systemctl --user stop thv-actor.service"),
        "{err}"
    );
}

#[test]
fn uninstall_with_nothing_installed_exits_0() {
    let home = Home::new();
    let out = home.run(&["service", "uninstall"]);
    ok(&out);
    assert!(
        stderr(&out).contains("nothing to remove"),
        "{}",
        stderr(&out)
    );
}

/// The binary under test at a new path in `dir` (a hard link: the test
/// binary is large), as if it had been installed there.
fn program_in(dir: &Path) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    let exe = dir.join("thv-actor");
    fs::hard_link(env!("CARGO_BIN_EXE_thv-actor"), &exe)
        .or_else(|_| fs::copy(env!("CARGO_BIN_EXE_thv-actor"), &exe).map(drop))
        .unwrap();
    exe
}

#[test]
fn systemd_accepts_the_unit_for_awkward_paths() {
    // Beside the binary, so that a hard link works.
    let home = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let home = Home { dir: home };
    fs::create_dir(home.dir.path().join("runtime")).unwrap();
    let dir = home.dir.path().join("my tools 100% $HOME;x");
    let exe = program_in(&dir);
    fs::write(dir.join("c.toml"), "").unwrap();
    let config = dir.join("c.toml");

    let out = home.run_program(
        &exe,
        &[
            "service",
            "install",
            "--no-start",
            "--config",
            config.to_str().unwrap(),
        ],
    );
    ok(&out);

    // systemd's own parser, offline: it checks ExecStart and that the
    // executable it reads back exists.
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(home.unit())
        .output()
        .expect("systemd-analyze (part of systemd) runs");
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "{}\n{}",
        fs::read_to_string(home.unit()).unwrap(),
        stderr(&verify)
    );
}

#[test]
fn install_refuses_a_program_path_systemd_cannot_run() {
    let home = Home::new();
    let exe = program_in(&home.dir.path().join("it's here"));

    let out = home.run_program(&exe, &["service", "install", "--no-start"]);

    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("systemd cannot run"),
        "{}",
        stderr(&out)
    );
    assert!(!home.unit().exists());
}
