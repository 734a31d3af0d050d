//! Shared set-up for the keychain tests: real backends only.

#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};

use thv_actors::{Backend, BackendChoice, BackendKind, WorkloadName};

/// Both Linux backends. The Secret Service must be running (scripts/test
/// starts gnome-keyring in a D-Bus session); a missing one fails the test
/// rather than skipping it.
pub fn backends() -> Vec<Backend> {
    [BackendKind::SecretService, BackendKind::Keyutils]
        .into_iter()
        .map(open)
        .collect()
}

/// Opens `kind`, or fails with what to run.
pub fn open(kind: BackendKind) -> Backend {
    thv_actors::prepare_session_bus(None);
    Backend::open(BackendChoice::Named(kind)).unwrap_or_else(|err| {
        panic!(
            "keystore {kind} is needed by this test and is not reachable ({err}); \
             run the suite with ./scripts/test, which starts it"
        )
    })
}

/// A workload name no other test (or earlier run) uses.
pub fn unique_workload(tag: &str) -> WorkloadName {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    WorkloadName::new(&format!("t-{tag}-{}-{n}-{nanos}", std::process::id())).unwrap()
}

/// Creates `workload`'s key when it has none and returns the current key:
/// the set-up of every test that needs a key to present.
pub async fn create_key(
    store: &actix::Addr<thv_actors::KeyStore>,
    workload: &WorkloadName,
) -> thv_actors::SharedKey {
    store
        .send(thv_actors::CreateKey {
            workload: workload.clone(),
        })
        .await
        .expect("keystore mailbox open")
        .unwrap();
    store
        .send(thv_actors::GetKeys {
            workload: workload.clone(),
        })
        .await
        .expect("keystore mailbox open")
        .unwrap()
        .current
}
