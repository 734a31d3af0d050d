//! `thv-actor serve` from start to stop: config errors, ports, the state
//! file, `list`, `rm`, signals and child processes, with the real binary.

mod support;

use std::time::Duration;

use support::http::Request;
use support::serve::Sandbox;
use support::{alive, answers, children, eventually, WAIT};

/// A `[[workloads]]` table running the built-in demo server, plus `extra`
/// lines.
fn demo(name: &str, extra: &str) -> String {
    format!(
        "[[workloads]]\nname = \"{name}\"\ncommand = [\"{}\", \"demo-server\"]\n{extra}\n",
        support::bin()
    )
}

fn initialize(port: u16, key: Option<&str>) -> support::http::Response {
    let mut request = Request::initialize(port);
    if let Some(key) = key {
        request = request.header("X-ToolHive-Auth", key);
    }
    request.send()
}

#[test]
fn config_errors_stop_start_up_naming_the_file_the_workload_and_the_field() {
    let sandbox = Sandbox::new("keyutils");
    let a = sandbox.name("cfg-a");
    let b = sandbox.name("cfg-b");
    let bin = support::bin();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();

    let cases = [
        (
            "unknown key",
            format!("[[workloads]]\nname = \"{a}\"\ncomand = [\"{bin}\"]\n"),
            format!("workload \"{a}\""),
            "comand",
        ),
        (
            "duplicate names",
            format!("{}{}", demo(&a, ""), demo(&a, "")),
            format!("workload \"{a}\""),
            "field `name`",
        ),
        (
            "both command and url",
            format!(
                "[[workloads]]\nname = \"{a}\"\ncommand = [\"{bin}\"]\nurl = \"http://127.0.0.1:1/mcp\"\n"
            ),
            format!("workload \"{a}\""),
            "`url`",
        ),
        (
            "neither command nor url",
            format!("[[workloads]]\nname = \"{a}\"\n"),
            format!("workload \"{a}\""),
            "`command`",
        ),
        (
            "bad name",
            demo("Not A Name", ""),
            "workload \"Not A Name\"".to_owned(),
            "field `name`",
        ),
        (
            "a taken port",
            format!(
                "{}{}",
                demo(&a, ""),
                demo(&b, &format!("port = {taken_port}"))
            ),
            format!("workload {b}"),
            "field `port`",
        ),
    ];

    for (what, text, workload, field) in cases {
        let path = sandbox.config(&text);
        let mut serve = sandbox.spawn_serve(&["--config", path.to_str().unwrap()]);
        let status = serve.wait_exit();
        let stderr = serve.stderr();
        assert!(
            !status.success(),
            "{what}: serve started; stderr:\n{stderr}"
        );
        let line = stderr
            .lines()
            .find(|l| l.starts_with("thv-actor: error:"))
            .unwrap_or_else(|| panic!("{what}: no error line in:\n{stderr}"));
        assert!(
            line.contains(path.to_str().unwrap()),
            "{what}: does not name the file: {line}"
        );
        assert!(
            line.contains(&workload),
            "{what}: does not name {workload}: {line}"
        );
        assert!(
            line.contains(field),
            "{what}: does not name {field}: {line}"
        );
        assert!(
            serve.lines().is_empty(),
            "{what}: printed workload lines: {:?}",
            serve.lines()
        );
        assert!(
            !sandbox.state_dir().join("serve.json").exists(),
            "{what}: left a state file"
        );
    }

    // The workload that started before the taken port was found is stopped.
    assert_eq!(sandbox.list(), Vec::<serde_json::Value>::new());
    drop(taken);
}

#[test]
fn a_workload_without_port_gets_the_same_port_after_a_restart() {
    let sandbox = Sandbox::new("keyutils");
    let w = sandbox.name("port");
    let config = sandbox.config(&demo(&w, ""));
    let args = ["--config", config.to_str().unwrap()];

    let mut first = sandbox.serve(&args, 1);
    let port = first.port(&w);
    assert!(first.stop().expect("serve runs").success());
    assert!(
        eventually(WAIT, || !answers(port)),
        "port {port} still answers"
    );

    let second = sandbox.serve(&args, 1);
    assert_eq!(second.port(&w), port, "the port changed across a restart");
    let key = sandbox.key(&w);
    assert_eq!(initialize(port, Some(&key)).status, 200);
}

#[test]
fn a_second_serve_over_the_same_state_refuses_and_the_first_keeps_running() {
    let sandbox = Sandbox::new("keyutils");
    let w = sandbox.name("twice");
    let config = sandbox.config(&demo(&w, ""));
    let args = ["--config", config.to_str().unwrap()];
    let first = sandbox.serve(&args, 1);

    let mut second = sandbox.spawn_serve(&args);
    let status = second.wait_exit();
    let stderr = second.stderr();
    assert!(!status.success(), "a second serve started:\n{stderr}");
    assert!(
        stderr.contains("another thv-actor serve")
            && stderr.contains(&first.pid().to_string())
            && stderr.contains(sandbox.state_dir().to_str().unwrap()),
        "unclear message:\n{stderr}"
    );

    let key = sandbox.key(&w);
    assert_eq!(initialize(first.port(&w), Some(&key)).status, 200);
    let list = sandbox.list();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["pid"], first.pid());
}

#[test]
fn stale_state_of_a_killed_serve_is_replaced_by_the_next() {
    let sandbox = Sandbox::new("keyutils");
    let w = sandbox.name("stale");
    let config = sandbox.config(&demo(&w, ""));
    let args = ["--config", config.to_str().unwrap()];
    let state = sandbox.state_dir().join("serve.json");

    let mut first = sandbox.serve(&args, 1);
    let old_pid = first.pid();
    first.kill();
    assert!(state.exists(), "SIGKILL left no state file to be stale");
    assert_eq!(
        sandbox.list(),
        Vec::<serde_json::Value>::new(),
        "list shows a dead serve"
    );

    let second = sandbox.serve(&args, 1);
    let list = sandbox.list();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["pid"], second.pid());
    assert_ne!(second.pid(), old_pid);
    let key = sandbox.key(&w);
    assert_eq!(initialize(second.port(&w), Some(&key)).status, 200);
}

#[test]
fn list_json_shows_each_workload_and_an_empty_array_without_serve() {
    let sandbox = Sandbox::new("keyutils");
    assert_eq!(sandbox.list(), Vec::<serde_json::Value>::new());
    let empty = sandbox.run(&["list", "--json"]);
    assert_eq!(support::stdout(&empty).trim(), "[]");

    let a = sandbox.name("list-a");
    let b = sandbox.name("list-b");
    let config = sandbox.config(&format!(
        "{}{}",
        demo(&a, ""),
        demo(&b, "shared_key_auth = false")
    ));
    let mut serve = sandbox.serve(&["--config", config.to_str().unwrap()], 2);

    let list = sandbox.list();
    assert_eq!(list.len(), 2, "{list:?}");
    for (row, name, auth) in [(&list[0], &a, true), (&list[1], &b, false)] {
        let mut keys: Vec<&str> = row
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "name",
                "pid",
                "shared_key_auth",
                "transport",
                "upstream",
                "url"
            ],
            "{row}"
        );
        assert_eq!(row["name"], name.as_str());
        assert_eq!(row["url"], serve.url(name).as_str());
        assert_eq!(row["transport"], "streamable-http");
        assert_eq!(row["upstream"], "stdio");
        assert_eq!(row["shared_key_auth"], auth);
        assert_eq!(row["pid"], serve.pid());
    }

    assert!(serve.stop().expect("serve runs").success());
    assert_eq!(sandbox.list(), Vec::<serde_json::Value>::new());
}

#[test]
fn rm_stops_the_workload_in_the_running_serve_and_deletes_its_keys() {
    let sandbox = Sandbox::new("keyutils");
    let a = sandbox.name("rm-a");
    let b = sandbox.name("rm-b");
    let config = sandbox.config(&format!("{}{}", demo(&a, ""), demo(&b, "")));
    let serve = sandbox.serve(&["--config", config.to_str().unwrap()], 2);
    let port_a = serve.port(&a);
    let key_b = sandbox.key(&b);
    sandbox.key(&a);

    let out = sandbox.run(&["rm", &a]);
    support::ok(&out);

    assert!(
        eventually(WAIT, || !answers(port_a)),
        "the removed workload's port still answers"
    );
    let names: Vec<String> = sandbox
        .list()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, vec![b.clone()]);
    let show = sandbox.run(&["key", "show", &a]);
    assert_eq!(
        show.status.code(),
        Some(1),
        "the removed workload kept its key"
    );
    assert!(support::stdout(&show).is_empty());

    // The other workload is untouched.
    assert_eq!(initialize(serve.port(&b), Some(&key_b)).status, 200);

    // Its processes are gone too; the other workload's still run.
    let pids_a = serve.logged_pids(&a);
    let pids_b = serve.logged_pids(&b);
    assert!(
        !pids_a.is_empty() && !pids_b.is_empty(),
        "{}",
        serve.stderr()
    );
    assert!(
        eventually(WAIT, || pids_a.iter().all(|p| !alive(*p))),
        "processes of the removed workload still run: {pids_a:?}"
    );
    assert!(pids_b.iter().any(|p| alive(*p)), "{pids_b:?}");
}

#[test]
fn shared_key_auth_off_is_loudly_logged_and_admits_requests_without_key() {
    let sandbox = Sandbox::new("keyutils");
    let w = sandbox.name("open");
    let config = sandbox.config(&demo(&w, "shared_key_auth = false"));
    let serve = sandbox.serve(&["--config", config.to_str().unwrap()], 1);

    let stderr = serve.stderr();
    let warning = stderr
        .lines()
        .find(|l| l.contains("SHARED KEY AUTH IS OFF"))
        .unwrap_or_else(|| panic!("no warning in:\n{stderr}"));
    assert!(
        warning.contains("WARN") && warning.contains(&w),
        "{warning}"
    );

    let response = initialize(serve.port(&w), None);
    assert_eq!(response.status, 200, "{}", response.text());
    // The guard still runs without the key check.
    let rebinding = Request::initialize(serve.port(&w))
        .host("evil.example")
        .send();
    assert_eq!(rebinding.status, 403);
}

#[test]
fn starting_a_workload_creates_its_key() {
    let sandbox = Sandbox::new("keyutils");
    let w = sandbox.name("fresh");
    assert_eq!(sandbox.run(&["key", "show", &w]).status.code(), Some(1));

    let config = sandbox.config(&demo(&w, ""));
    let serve = sandbox.serve(&["--config", config.to_str().unwrap()], 1);
    let key = sandbox.key(&w);
    assert_eq!(initialize(serve.port(&w), Some(&key)).status, 200);
}

#[test]
fn sigterm_exits_zero_and_removes_the_state_and_the_child_processes() {
    let sandbox = Sandbox::new("keyutils");
    let a = sandbox.name("term-a");
    let b = sandbox.name("term-b");
    let config = sandbox.config(&format!("{}{}", demo(&a, ""), demo(&b, "")));
    let mut serve = sandbox.serve(&["--config", config.to_str().unwrap()], 2);
    let ports = [serve.port(&a), serve.port(&b)];
    let state = sandbox.state_dir().join("serve.json");
    assert!(state.exists());

    // A session gets a process of its own: start one, so that more than
    // the first processes must be stopped.
    let key = sandbox.key(&a);
    assert_eq!(initialize(ports[0], Some(&key)).status, 200);
    let mut kids = children(serve.pid());
    kids.extend(serve.logged_pids(&a));
    kids.extend(serve.logged_pids(&b));
    kids.sort();
    kids.dedup();
    assert!(kids.len() >= 2, "expected demo-server children: {kids:?}");

    let status = serve.stop().expect("serve runs");
    assert_eq!(status.code(), Some(0), "stderr:\n{}", serve.stderr());
    assert!(!state.exists(), "serve.json left behind");
    assert!(
        !sandbox.state_dir().join("control.sock").exists(),
        "control.sock left behind"
    );
    assert!(
        eventually(WAIT, || kids.iter().all(|p| !alive(*p))),
        "children still alive: {kids:?}"
    );
    for port in ports {
        assert!(!answers(port), "port {port} still answers");
    }
}

#[test]
fn sigterm_right_after_the_ready_lines_is_handled() {
    let sandbox = Sandbox::new("keyutils");
    let w = sandbox.name("early");
    let config = sandbox.config(&demo(&w, ""));
    for round in 0..5 {
        let mut serve = sandbox.serve(&["--config", config.to_str().unwrap()], 1);
        // What a supervisor (systemd, a test) may do once serve says it is ready.
        serve.signal(libc::SIGTERM);
        let status = serve.wait_exit();
        assert_eq!(status.code(), Some(0), "round {round}: {status:?}");
        assert!(
            !sandbox.state_dir().join("serve.json").exists(),
            "round {round}: serve.json left behind"
        );
    }
}

#[test]
fn sigint_also_stops_serve_cleanly() {
    let sandbox = Sandbox::new("keyutils");
    let w = sandbox.name("int");
    let config = sandbox.config(&demo(&w, ""));
    let mut serve = sandbox.serve(&["--config", config.to_str().unwrap()], 1);
    serve.signal(libc::SIGINT);
    assert_eq!(serve.wait_exit().code(), Some(0));
    assert!(!sandbox.state_dir().join("serve.json").exists());
}

#[test]
fn inject_key_env_gives_only_that_child_the_key() {
    let sandbox = Sandbox::new("keyutils");
    let with = sandbox.name("inject");
    let without = sandbox.name("plain");
    let bin = support::bin();
    let with_file = sandbox.path("with.txt");
    let without_file = sandbox.path("without.txt");
    let workload = |name: &str, file: &std::path::Path, inject: bool| {
        format!(
            "[[workloads]]\nname = \"{name}\"\ncommand = [\"sh\", \"-c\", \
             'echo \"$TOOLHIVE_SHARED_KEY\" > {}; exec {bin} demo-server']\n\
             inject_key_env = {inject}\n",
            file.display()
        )
    };
    let config = sandbox.config(&format!(
        "{}{}",
        workload(&with, &with_file, true),
        workload(&without, &without_file, false)
    ));
    let serve = sandbox.serve(&["--config", config.to_str().unwrap()], 2);

    let read = |path: &std::path::Path| {
        let mut text = String::new();
        assert!(
            eventually(WAIT, || {
                text = std::fs::read_to_string(path).unwrap_or_default();
                text.ends_with('\n')
            }),
            "{} was not written",
            path.display()
        );
        text.trim_end().to_owned()
    };
    let key = sandbox.key(&with);
    assert_eq!(read(&with_file), key, "the child got another value");
    assert_eq!(
        read(&without_file),
        "",
        "a child without inject_key_env got a key"
    );

    // The child still serves through exec.
    assert_eq!(initialize(serve.port(&with), Some(&key)).status, 200);
    let leaked = thv_actors::SharedKey::parse(&key).unwrap();
    assert!(!thv_actors::testing::leaks(&serve.stderr(), &leaked));
}

#[test]
fn a_rotated_key_reaches_inject_key_env_processes_started_after_it() {
    let sandbox = Sandbox::new("keyutils");
    let w = sandbox.name("reinject");
    let bin = support::bin();
    let file = sandbox.path("key.txt");
    // Every process of the workload writes the key it was started with.
    let config = sandbox.config(&format!(
        "[[workloads]]\nname = \"{w}\"\ncommand = [\"sh\", \"-c\", \
         'echo \"$TOOLHIVE_SHARED_KEY\" > {}; exec {bin} demo-server']\n\
         inject_key_env = true\n",
        file.display()
    ));
    let serve = sandbox.serve(&["--config", config.to_str().unwrap()], 1);
    let first = sandbox.key(&w);
    let written = || {
        std::fs::read_to_string(&file)
            .unwrap_or_default()
            .trim_end()
            .to_owned()
    };
    assert!(
        eventually(WAIT, || written() == first),
        "the first process got another value"
    );

    // The rotation retires the warm spare; its replacement gets the new key.
    let rotated = sandbox.run(&["key", "rotate", &w, "--overlap", "60s"]);
    assert!(rotated.status.success());
    let second = sandbox.key(&w);
    assert_ne!(first, second);
    assert!(
        eventually(WAIT, || written() == second),
        "no new process got the rotated key; it holds {}",
        if written() == first {
            "the old key"
        } else {
            "something else"
        }
    );
    assert_eq!(initialize(serve.port(&w), Some(&second)).status, 200);
}

#[test]
fn a_config_at_the_default_path_is_picked_up() {
    let sandbox = Sandbox::new("keyutils");
    let w = sandbox.name("default");
    let dir = sandbox.home().join(".config/thv-actor");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.toml"), demo(&w, "")).unwrap();

    let serve = sandbox.serve(&[], 1);
    let lines = serve.lines();
    assert!(
        lines[0].starts_with(&format!("{w} ")),
        "serve did not use the default config: {lines:?}"
    );
    let names: Vec<_> = sandbox.list().iter().map(|r| r["name"].clone()).collect();
    assert_eq!(names, [serde_json::json!(w)]);
}

#[test]
fn serve_name_with_a_command_or_a_url_serves_one_workload() {
    // `--name x -- <cmd>`: a stdio workload from the command line.
    let with_command = Sandbox::new("keyutils");
    let x = with_command.name("cli-cmd");
    let serve_x = with_command.serve(&["--name", &x, "--", support::bin(), "demo-server"], 1);
    let key_x = with_command.key(&x);
    let response = initialize(serve_x.port(&x), Some(&key_x));
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(with_command.list()[0]["upstream"], "stdio");

    // An upstream without a key check for the URL workload to reach.
    let upstream = Sandbox::new("keyutils");
    let open = upstream.name("cli-open");
    let config = upstream.config(&demo(&open, "shared_key_auth = false"));
    let serve_open = upstream.serve(&["--config", config.to_str().unwrap()], 1);

    // `--name y --url URL`: an HTTP workload from the command line.
    let with_url = Sandbox::new("keyutils");
    let y = with_url.name("cli-url");
    let serve_y = with_url.serve(&["--name", &y, "--url", &serve_open.url(&open)], 1);
    let port_y = serve_y.port(&y);
    assert_eq!(
        initialize(port_y, None).status,
        401,
        "the URL workload needs its key"
    );
    let key_y = with_url.key(&y);
    let response = initialize(port_y, Some(&key_y));
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        response.json()["result"]["serverInfo"]["name"],
        "thv-actor-demo"
    );
    let row = &with_url.list()[0];
    assert_eq!(row["upstream"], "streamable-http", "{row}");
    assert_eq!(row["transport"], "streamable-http", "{row}");

    // Both ways together are refused with a hint.
    let both = with_url.run(&[
        "serve",
        "--name",
        "z",
        "--url",
        "http://127.0.0.1:1/mcp",
        "--",
        "x",
    ]);
    assert!(!both.status.success());
    assert!(
        support::stderr(&both).contains("--url"),
        "{}",
        support::stderr(&both)
    );
}

#[test]
fn sigterm_is_not_held_up_by_a_keychain_scan() {
    let sandbox = Sandbox::new("secret-service");
    // Other workloads' keys in the same keychain, made in parallel.
    let others: Vec<String> = (0..40).map(|_| sandbox.name("crowd")).collect();
    std::thread::scope(|scope| {
        for chunk in others.chunks(8) {
            let sandbox = &sandbox;
            scope.spawn(move || {
                for name in chunk {
                    support::ok(&sandbox.run(&["key", "create", name]));
                }
            });
        }
    });

    let w = sandbox.name("scan");
    let config = sandbox.config(&demo(&w, ""));
    let mut serve = sandbox.serve(&["--config", config.to_str().unwrap()], 1);
    let started = std::time::Instant::now();
    let status = serve.stop().expect("serve runs");
    let took = started.elapsed();
    assert_eq!(status.code(), Some(0));
    // terminate() pauses 300 ms first; a responsive loop exits in well under 1 s more.
    assert!(
        took < Duration::from_millis(1500),
        "SIGTERM took {took:?} to act"
    );
}
