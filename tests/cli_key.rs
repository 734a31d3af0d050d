//! `thv-actor key ...` end to end: the real binary on the real Secret
//! Service and the real kernel keyring.

mod support;

use std::process::Stdio;

use support::{ok, stderr, stdout, Env, KEYSTORES};
use thv_actors::SharedKey;

fn show(env: &Env, w: &str) -> SharedKey {
    let out = env.run(&["key", "show", w]);
    ok(&out);
    let text = stdout(&out);
    assert!(
        text.ends_with('\n') && text.lines().count() == 1,
        "show printed {text:?}"
    );
    SharedKey::parse(text.trim_end()).expect("show prints one key")
}

#[test]
fn create_show_rotate_delete_round_trip() {
    for keystore in KEYSTORES {
        let env = Env::new(keystore);
        let w = support::unique("cli");

        let created = env.run(&["key", "create", &w]);
        ok(&created);
        assert!(stderr(&created).contains("created a key"), "{keystore}");
        assert!(stdout(&created).is_empty(), "create printed on stdout");
        let again = env.run(&["key", "create", &w]);
        ok(&again);
        assert!(stderr(&again).contains("already has a key"), "{keystore}");

        let key = show(&env, &w);
        let rotated = env.run(&["key", "rotate", &w, "--overlap", "90s"]);
        ok(&rotated);
        assert!(
            stderr(&rotated).contains("stays valid until"),
            "{}",
            stderr(&rotated)
        );
        let new = show(&env, &w);
        assert!(
            !new.ct_eq(&key),
            "{keystore}: rotate did not change the key"
        );

        let list = env.run(&["key", "list", "--json"]);
        ok(&list);
        let rows: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
        let row = rows
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["workload"] == w.as_str())
            .unwrap();
        assert!(row["rotated_at"].is_string());
        assert_eq!(row["previous_keys"].as_array().unwrap().len(), 1);

        for out in [&created, &again, &rotated, &list] {
            let text = format!("{}{}", stdout(out), stderr(out));
            assert!(!thv_actors::testing::leaks(&text, &key));
            assert!(!thv_actors::testing::leaks(&text, &new));
        }

        ok(&env.run(&["key", "delete", &w]));
        let gone = env.run(&["key", "show", &w]);
        assert_eq!(
            gone.status.code(),
            Some(1),
            "{keystore}: show of a deleted key"
        );
        assert!(stdout(&gone).is_empty());
        assert_eq!(stderr(&gone).lines().count(), 1, "{}", stderr(&gone));
    }
}

#[test]
fn a_key_made_in_one_session_keyring_is_seen_from_another() {
    // Separate logins each get their own session keyring; keys live in the
    // per-user persistent keyring, which both reach.
    let env = Env::new("keyutils");
    let w = support::unique("session");
    ok(&env.run_in_new_session(&["key", "create", &w]));
    let seen = env.run_in_new_session(&["key", "show", &w]);
    ok(&seen);
    let from_b = SharedKey::parse(stdout(&seen).trim_end()).unwrap();
    let from_here = show(&env, &w);
    assert!(from_b.ct_eq(&from_here));

    ok(&env.run_in_new_session(&["key", "delete", &w]));
    let other = env.run_in_new_session(&["key", "show", &w]);
    assert_eq!(other.status.code(), Some(1), "{}", stderr(&other));
    assert_eq!(env.run(&["key", "show", &w]).status.code(), Some(1));
}

#[test]
fn fifty_processes_at_once_make_fifty_distinct_keys() {
    for keystore in KEYSTORES {
        let env = Env::new(keystore);
        let names: Vec<String> = (0..50)
            .map(|i| support::unique(&format!("seed{i}")))
            .collect();
        let children: Vec<_> = names
            .iter()
            .map(|w| {
                env.cmd(&["key", "create", w])
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for child in children {
            ok(&child.wait_with_output().unwrap());
        }

        let keys: Vec<SharedKey> = names.iter().map(|w| show(&env, w)).collect();
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert!(!a.ct_eq(b), "{keystore}: two workloads share a key");
            }
        }
        let list = env.run(&["key", "list", "--json"]);
        let rows: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
        for w in &names {
            assert!(
                rows.as_array()
                    .unwrap()
                    .iter()
                    .any(|r| r["workload"] == w.as_str()),
                "{w} not in the index"
            );
            ok(&env.run(&["key", "delete", w]));
        }
    }
}

#[test]
fn fifty_processes_creating_one_workload_agree_on_one_key() {
    let env = Env::new("keyutils");
    let w = support::unique("race");
    let children: Vec<_> = (0..50)
        .map(|_| {
            env.cmd(&["key", "create", &w])
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let created = children
        .into_iter()
        .map(|c| ok(&c.wait_with_output().unwrap()).clone())
        .filter(|o| stderr(o).contains("created a key"))
        .count();
    assert_eq!(created, 1, "more than one process stored a key");
    ok(&env.run(&["key", "delete", &w]));
}

#[test]
fn failures_exit_non_zero_with_one_line() {
    let env = Env::new("keyutils");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["key", "create", "Bad Name"], "invalid workload name"),
        (vec!["key", "show", "-x"], ""),
        (vec!["key", "rotate", "nope-never-made"], "has no key"),
        (vec!["key", "delete", "nope-never-made"], "has no key"),
        (
            vec!["key", "rotate", "x", "--overlap", "soon"],
            "invalid --overlap",
        ),
        (
            vec!["--keystore", "floppy", "key", "list"],
            "unknown keystore",
        ),
    ];
    for (args, want) in cases {
        let out = env.run(&args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = stderr(&out);
        assert!(err.contains(want), "{args:?}: {err}");
        if !want.is_empty() {
            assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        }
    }
}

#[test]
fn an_unreachable_secret_service_is_named_with_what_to_do() {
    let env = Env::new("secret-service");
    let out = env
        .cmd(&["key", "list"])
        .env("DBUS_SESSION_BUS_ADDRESS", "unix:path=/nonexistent/bus")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("secret-service") && err.contains("keyutils"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn every_command_has_help() {
    let env = Env::new("keyutils");
    for args in [
        vec!["--help"],
        vec!["key", "--help"],
        vec!["key", "create", "--help"],
        vec!["key", "show", "--help"],
        vec!["key", "rotate", "--help"],
        vec!["key", "delete", "--help"],
        vec!["key", "list", "--help"],
    ] {
        let out = env.run(&args);
        ok(&out);
        assert!(stdout(&out).contains("Usage"), "{args:?}");
    }
}

#[test]
fn key_list_marks_keys_of_workloads_in_no_config_and_not_running() {
    let env = Env::new("keyutils");
    let listed = support::unique("listed");
    let orphan = support::unique("orphan");
    ok(&env.run(&["key", "create", &listed]));
    ok(&env.run(&["key", "create", &orphan]));
    let config_dir = env.state_dir().join("xdg");
    std::fs::create_dir_all(config_dir.join("thv-actor")).unwrap();
    std::fs::write(
        config_dir.join("thv-actor/config.toml"),
        format!("[[workloads]]\nname = \"{listed}\"\ncommand = [\"true\"]\n"),
    )
    .unwrap();

    let out = env
        .cmd(&["key", "list", "--json"])
        .env("XDG_CONFIG_HOME", &config_dir)
        .output()
        .unwrap();
    ok(&out);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = |w: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["workload"] == w)
            .cloned()
            .unwrap()
    };
    assert_eq!(row(&listed)["orphan"], false);
    assert_eq!(row(&orphan)["orphan"], true);

    ok(&env.run(&["key", "delete", &listed]));
    ok(&env.run(&["key", "delete", &orphan]));
}
