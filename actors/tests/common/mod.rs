//! Shared set-up for the keychain tests: real backends only.

#![allow(dead_code)]

#[path = "../../../tests/support/unique.rs"]
mod unique;

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
    WorkloadName::new(&unique::unique_name("t", tag)).unwrap()
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
