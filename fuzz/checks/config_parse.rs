//! Checks for `Config::parse` on arbitrary text: it never panics, an error
//! names the file, and an accepted file keeps the promises `Config` makes
//! (valid, unique names; unique ports; exactly one kind of upstream).

use std::collections::BTreeSet;
use std::path::Path;

use thv_server::config::{Config, Upstream};

/// Runs every check on `data` (as UTF-8, lossily); panics on a violation.
pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let path = Path::new("fuzz/config.toml");

    let config = match Config::parse(&text, path) {
        Ok(config) => config,
        Err(err) => {
            let shown = err.to_string();
            assert!(
                shown.starts_with("fuzz/config.toml"),
                "error without the file: {shown}"
            );
            assert!(!shown.contains('\n'), "a multi-line error: {shown}");
            return;
        }
    };

    let mut names = BTreeSet::new();
    let mut ports = BTreeSet::new();
    for workload in &config.workloads {
        let name = workload.name.to_string();
        assert!(
            name.parse::<thv_actors::WorkloadName>().is_ok(),
            "an invalid name was accepted"
        );
        assert!(names.insert(name), "a duplicate name was accepted");
        if let Some(port) = workload.port {
            assert!(ports.insert(port), "a duplicate port was accepted");
        }
        match &workload.upstream {
            Upstream::Command { argv, .. } => assert!(!argv.is_empty(), "an empty command"),
            Upstream::Url { url, .. } => assert!(!url.is_empty(), "an empty url"),
        }
    }
}
