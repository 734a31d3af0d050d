//! No key in any output: every command and failure path, at `RUST_LOG=trace`,
//! with every place a key could end up (stdout, stderr, serve's log, the
//! state files, the config file, `/proc/<pid>/cmdline` and `environ` of
//! serve, its stdio child and a bridge) searched for every text form of
//! every key (`thv_actors::testing::encodings`).
//!
//! Two exceptions, both documented: the stdout of `key show`, and the
//! environment of a stdio child whose workload sets `inject_key_env`.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::bridge::echo_call;
use support::http::{post, INITIALIZE};
use support::serve::Serve;
use thv_actors::SharedKey;

const KEYSTORE: &str = "secret-service";

/// Everything collected, by where it came from.
#[derive(Default)]
struct Haystacks {
    found: Vec<(String, Vec<u8>)>,
}

impl Haystacks {
    fn add(&mut self, label: impl Into<String>, bytes: impl Into<Vec<u8>>) {
        self.found.push((label.into(), bytes.into()));
    }

    fn output(&mut self, label: &str, out: &Output) {
        self.add(format!("{label}: stdout"), out.stdout.clone());
        self.add(format!("{label}: stderr"), out.stderr.clone());
    }

    /// The labels of every haystack holding a form of a key.
    fn leaks(&self, keys: &[SharedKey]) -> Vec<String> {
        self.found
            .iter()
            .filter(|(_, bytes)| {
                // environ and cmdline are NUL-separated.
                let text = String::from_utf8_lossy(bytes).replace('\0', "\n");
                keys.iter().any(|k| thv_actors::testing::leaks(&text, k))
            })
            .map(|(label, _)| label.clone())
            .collect()
    }
}

/// `thv-actor <args>` at trace level with `home`'s keystore.
fn cli(home: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(support::bin());
    cmd.args(args)
        .env("HOME", home)
        .env_remove("THV_ACTOR_STATE_DIR")
        .env_remove("THV_ACTOR_CONFIG")
        .env_remove("XDG_CONFIG_HOME")
        .env("THV_ACTOR_KEYSTORE", KEYSTORE)
        .env("RUST_LOG", "trace")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_bounded(child, Duration::from_secs(60))
}

fn wait_bounded(mut child: std::process::Child, bound: Duration) -> Output {
    let deadline = Instant::now() + bound;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn key_of(out: &Output) -> SharedKey {
    assert!(out.status.success(), "key show: {}", support::stderr(out));
    SharedKey::parse(String::from_utf8_lossy(&out.stdout).trim_end())
        .expect("key show prints a key")
}

/// cmdline and environ of `pid`.
fn proc_files(pid: u32) -> (Vec<u8>, Vec<u8>) {
    let read = |f: &str| std::fs::read(format!("/proc/{pid}/{f}")).unwrap_or_default();
    (read("cmdline"), read("environ"))
}

/// The pids whose parent is `pid`.
fn children(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().map_while(Result::ok) {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // pid (comm) state ppid ...; comm may hold spaces, so split after ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            found.push(child);
        }
    }
    found
}

/// Every regular file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.map_while(Result::ok) {
        let path = entry.path();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            found.extend(files_under(&path));
        } else if kind.is_file() {
            found.push(path);
        }
    }
    found
}

/// Deletes the test's keys however the test ends.
struct Cleanup<'a> {
    home: &'a Path,
    workloads: Vec<String>,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for w in &self.workloads {
            let _ = cli(self.home, &["key", "delete", w], &[]);
        }
    }
}

#[test]
fn no_key_in_any_output_at_trace_level() {
    support::require_setup();
    let started = Instant::now();
    let home_dir = tempfile::tempdir().unwrap();
    let home = home_dir.path();
    let solo = support::unique("hyg-solo");
    let cmd_w = support::unique("hyg-cmd");
    let inj_w = support::unique("hyg-inj");
    let _cleanup = Cleanup {
        home,
        workloads: vec![solo.clone(), cmd_w.clone(), inj_w.clone()],
    };
    let mut hay = Haystacks::default();
    let mut keys = Vec::new();
    // Outputs allowed to hold exactly one key: `key show`'s stdout.
    let mut shown = Vec::new();

    // The key commands, on a workload no serve knows.
    hay.output("key create", &cli(home, &["key", "create", &solo], &[]));
    hay.output(
        "key create again",
        &cli(home, &["key", "create", &solo], &[]),
    );
    let show = cli(home, &["key", "show", &solo], &[]);
    keys.push(key_of(&show));
    hay.add("key show: stderr", show.stderr.clone());
    shown.push(show.stdout);
    hay.output("key list", &cli(home, &["key", "list"], &[]));
    hay.output(
        "key list --json",
        &cli(home, &["key", "list", "--json"], &[]),
    );
    hay.output(
        "key rotate",
        &cli(home, &["key", "rotate", &solo, "--overlap", "0s"], &[]),
    );
    let show = cli(home, &["key", "show", &solo], &[]);
    keys.push(key_of(&show));
    hay.add("key show after rotate: stderr", show.stderr.clone());
    shown.push(show.stdout);
    hay.output(
        "key rotate with a bad overlap",
        &cli(home, &["key", "rotate", &solo, "--overlap", "soon"], &[]),
    );

    // serve, with a plain stdio workload and one with inject_key_env.
    let bin = support::bin();
    let config = format!(
        "[[workloads]]\nname = \"{cmd_w}\"\ncommand = [\"{bin}\", \"demo-server\"]\n\n\
         [[workloads]]\nname = \"{inj_w}\"\ncommand = [\"{bin}\", \"demo-server\"]\ninject_key_env = true\n"
    );
    let mut serve = Serve::start(home, KEYSTORE, &config, 2, &[("RUST_LOG", "trace")]);
    let cmd_key_text = serve.key(&cmd_w);
    let inj_key_text = serve.key(&inj_w);
    let cmd_key = SharedKey::parse(&cmd_key_text).unwrap();
    let inj_key = SharedKey::parse(&inj_key_text).unwrap();

    // Requests accepted and refused; each workload's child starts.
    let port = serve.port(&cmd_w);
    let accepted = post(port, Some(&cmd_key_text), &[], INITIALIZE);
    assert_eq!(accepted.status, 200, "{}", accepted.text());
    hay.add("accepted response", accepted.text());
    let wrong = SharedKey::generate();
    let refused = post(port, Some(&wrong.expose_encoded()), &[], INITIALIZE);
    assert_eq!(refused.status, 401);
    hay.add("refused response", refused.text());
    let missing = post(port, None, &[], INITIALIZE);
    assert_eq!(missing.status, 401);
    let inj = post(serve.port(&inj_w), Some(&inj_key_text), &[], INITIALIZE);
    assert_eq!(inj.status, 200, "{}", inj.text());
    hay.add("accepted response (inject)", inj.text());

    // A bridge in an MCP client's reduced environment, at trace level.
    let bridge_err = home.join("bridge.stderr");
    let mut bridge = Command::new(bin)
        .args(["bridge", &cmd_w])
        .env_clear()
        .env("HOME", home)
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "trace")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&bridge_err).unwrap())
        .spawn()
        .unwrap();
    let mut bridge_in = bridge.stdin.take().unwrap();
    let mut bridge_out = BufReader::new(bridge.stdout.take().unwrap());
    let mut bridge_stdout = Vec::new();
    for line in [INITIALIZE.to_owned(), echo_call(2, "hygiene").to_string()] {
        writeln!(bridge_in, "{line}").unwrap();
        bridge_in.flush().unwrap();
        let mut answer = String::new();
        // Bounded: the bridge answers each request (or errors) within its
        // 30 s connect wait; the test's own bound is checked at the end.
        bridge_out.read_line(&mut answer).unwrap();
        assert!(answer.contains("result"), "bridge: {answer}");
        bridge_stdout.extend_from_slice(answer.as_bytes());
    }
    let (cmdline, environ) = proc_files(bridge.id());
    hay.add("bridge cmdline", cmdline);
    hay.add("bridge environ", environ);
    hay.add("bridge stdout", bridge_stdout);
    drop(bridge_in);
    let _ = bridge.kill();
    let _ = bridge.wait();
    hay.add("bridge stderr", std::fs::read(&bridge_err).unwrap());

    // serve and its children, while they run.
    let (cmdline, environ) = proc_files(serve.pid());
    hay.add("serve cmdline", cmdline);
    hay.add("serve environ", environ);
    let kids = children(serve.pid());
    let mut injected = 0;
    for kid in &kids {
        let (cmdline, environ) = proc_files(*kid);
        let env_text = String::from_utf8_lossy(&environ).replace('\0', "\n");
        if thv_actors::testing::leaks(&env_text, &inj_key) {
            // The one documented exception: inject_key_env hands the child
            // its own key, as TOOLHIVE_SHARED_KEY, and nothing else.
            injected += 1;
            assert!(
                env_text
                    .lines()
                    .any(|l| l == format!("TOOLHIVE_SHARED_KEY={inj_key_text}")),
                "the injected key is not TOOLHIVE_SHARED_KEY"
            );
            assert!(!thv_actors::testing::leaks(&env_text, &cmd_key));
            hay.add(format!("inject child {kid} cmdline"), cmdline);
        } else {
            hay.add(format!("child {kid} cmdline"), cmdline);
            hay.add(format!("child {kid} environ"), environ);
        }
    }
    // A stdio workload runs a child per session (and may keep one ready),
    // so count kinds, not processes.
    assert!(injected >= 1, "no child has the injected key: {kids:?}");
    assert!(
        kids.len() > injected,
        "no child without inject_key_env: {kids:?}"
    );

    // Commands beside the running serve, and their failure paths.
    hay.output("list", &cli(home, &["list"], &[]));
    hay.output("list --json", &cli(home, &["list", "--json"], &[]));
    hay.output(
        "key list (serving)",
        &cli(home, &["key", "list", "--json"], &[]),
    );
    hay.output("client-config", &cli(home, &["client-config", &cmd_w], &[]));
    hay.output(
        "key show of no key",
        &cli(home, &["key", "show", &support::unique("hyg-none")], &[]),
    );
    hay.output(
        "bridge to an unknown workload",
        &cli(
            home,
            &[
                "bridge",
                &support::unique("hyg-none"),
                "--connect-wait",
                "1s",
            ],
            &[],
        ),
    );
    hay.output(
        "key show, keystore unreachable",
        &cli(
            home,
            &["key", "show", &cmd_w],
            &[("DBUS_SESSION_BUS_ADDRESS", "unix:path=/nonexistent/bus")],
        ),
    );
    let bad = home.join("bad.toml");
    std::fs::write(
        &bad,
        format!("[[workloads]]\nname = \"{cmd_w}\"\nbogus = \"{cmd_key_text}x\"\n"),
    )
    .unwrap();
    hay.output(
        "serve with a bad config",
        &cli(home, &["serve", "--config", bad.to_str().unwrap()], &[]),
    );
    // The bad file holds a key-lookalike on purpose; the message must not
    // repeat it. Whether the file itself holds a key is checked below for
    // the real config only.

    // State files and the config file.
    let state = home.join(".local/state/thv-actor");
    let state_files = files_under(&state);
    assert!(
        state_files.iter().any(|p| p.ends_with("serve.json")),
        "no serve.json in {state_files:?}"
    );
    for path in state_files {
        hay.add(
            format!("state file {}", path.display()),
            std::fs::read(&path).unwrap(),
        );
    }
    let config_path = home.join(".config/thv-actor/config.toml");
    hay.add("config file", std::fs::read(&config_path).unwrap());

    // rm a workload while serving, then stop serve.
    hay.output("rm", &cli(home, &["rm", &inj_w], &[]));
    assert_eq!(serve.stop().and_then(|s| s.code()), Some(0), "serve exit");
    hay.output("rm again", &cli(home, &["rm", &inj_w], &[]));
    hay.add("serve stderr", serve.stderr());

    // Every key, in every form, in none of it.
    keys.push(cmd_key);
    keys.push(inj_key);
    let leaked = hay.leaks(&keys);
    assert!(leaked.is_empty(), "a key appears in: {leaked:?}");

    // key show printed its key, and only that one.
    for (i, out) in shown.iter().enumerate() {
        let text = String::from_utf8_lossy(out);
        assert!(thv_actors::testing::leaks(&text, &keys[i]));
        assert_eq!(text.trim_end(), keys[i].expose_encoded().as_str());
    }
    assert!(started.elapsed() < Duration::from_secs(240));
}
