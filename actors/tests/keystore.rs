//! The KeyStore actor against the real Secret Service and the real kernel
//! keyring.

mod common;

use std::time::Duration;

use actix::Addr;
use thv_actors::{
    CreateKey, DeleteKeys, Error, GetKeys, KeyStore, ListKeys, RotateKey, WorkloadName,
};

async fn ask<M>(store: &Addr<KeyStore>, msg: M) -> M::Result
where
    M: actix::Message + Send + 'static,
    M::Result: Send,
    KeyStore: actix::Handler<M>,
{
    store.send(msg).await.expect("keystore mailbox open")
}

fn start(backend: thv_actors::Backend) -> Addr<KeyStore> {
    KeyStore::start(backend).unwrap()
}

#[actix_rt::test]
async fn create_is_idempotent_and_get_returns_the_same_key() {
    for backend in common::backends() {
        let kind = backend.kind();
        let store = start(backend);
        let w = common::unique_workload("create");

        assert!(
            ask(
                &store,
                CreateKey {
                    workload: w.clone()
                }
            )
            .await
            .unwrap(),
            "{kind}"
        );
        assert!(
            !ask(
                &store,
                CreateKey {
                    workload: w.clone()
                }
            )
            .await
            .unwrap(),
            "{kind}"
        );

        let a = ask(
            &store,
            GetKeys {
                workload: w.clone(),
            },
        )
        .await
        .unwrap();
        let b = ask(
            &store,
            GetKeys {
                workload: w.clone(),
            },
        )
        .await
        .unwrap();
        assert!(a.current.ct_eq(&b.current), "{kind}: get changed the key");
        assert!(a.previous.is_empty());

        assert!(ask(&store, DeleteKeys { workload: w }).await.unwrap());
    }
}

#[actix_rt::test]
async fn rotation_keeps_every_unexpired_key_and_zero_overlap_revokes() {
    for backend in common::backends() {
        let kind = backend.kind();
        let store = start(backend);
        let w = common::unique_workload("rotate");
        let first = common::create_key(&store, &w).await;

        let overlap = Duration::from_secs(600);
        let r1 = ask(
            &store,
            RotateKey {
                workload: w.clone(),
                overlap,
            },
        )
        .await
        .unwrap();
        assert!(r1.previous_valid_until.is_some());
        let second = ask(
            &store,
            GetKeys {
                workload: w.clone(),
            },
        )
        .await
        .unwrap();
        assert!(
            !second.current.ct_eq(&first),
            "{kind}: rotation kept the key"
        );
        assert_eq!(second.previous.len(), 1);
        assert!(second.previous[0].key.ct_eq(&first));
        let now = std::time::SystemTime::now();
        assert!(
            second.accepts(&first, now),
            "{kind}: old key refused inside overlap"
        );

        // A second rotation inside the overlap keeps both older keys.
        ask(
            &store,
            RotateKey {
                workload: w.clone(),
                overlap,
            },
        )
        .await
        .unwrap();
        let third = ask(
            &store,
            GetKeys {
                workload: w.clone(),
            },
        )
        .await
        .unwrap();
        assert_eq!(third.previous.len(), 2, "{kind}");
        assert!(third.accepts(&first, now) && third.accepts(&second.current, now));

        // Zero overlap: nothing new is kept, so only the newest key and the
        // still-unexpired older ones validate; the one just replaced does not.
        let before = third.current.clone();
        let r = ask(
            &store,
            RotateKey {
                workload: w.clone(),
                overlap: Duration::ZERO,
            },
        )
        .await
        .unwrap();
        assert_eq!(r.previous_valid_until, None);
        let fourth = ask(
            &store,
            GetKeys {
                workload: w.clone(),
            },
        )
        .await
        .unwrap();
        assert!(
            !fourth.accepts(&before, now),
            "{kind}: 0s overlap kept the old key"
        );
        assert_eq!(fourth.previous.len(), 2);

        ask(&store, DeleteKeys { workload: w }).await.unwrap();
    }
}

#[actix_rt::test]
async fn previous_keys_expire_and_are_deleted_from_the_keychain() {
    for backend in common::backends() {
        let kind = backend.kind();
        let store = start(backend);
        let w = common::unique_workload("expire");
        let old = common::create_key(&store, &w).await;
        ask(
            &store,
            RotateKey {
                workload: w.clone(),
                overlap: Duration::from_secs(1),
            },
        )
        .await
        .unwrap();

        // Expiry is kept in whole seconds; wait past the next boundary.
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let keys = ask(
            &store,
            GetKeys {
                workload: w.clone(),
            },
        )
        .await
        .unwrap();
        assert!(keys.previous.is_empty(), "{kind}: expired key still listed");
        assert!(!keys.accepts(&old, std::time::SystemTime::now()));
        let listed = ask(&store, ListKeys).await.unwrap();
        let info = listed.iter().find(|i| i.workload == w).unwrap();
        assert!(info.previous_expiries.is_empty(), "{kind}");

        ask(&store, DeleteKeys { workload: w }).await.unwrap();
    }
}

#[actix_rt::test]
async fn delete_removes_every_entry_and_list_forgets_the_workload() {
    for backend in common::backends() {
        let kind = backend.kind();
        let store = start(backend);
        let w = common::unique_workload("delete");
        ask(
            &store,
            CreateKey {
                workload: w.clone(),
            },
        )
        .await
        .unwrap();
        ask(
            &store,
            RotateKey {
                workload: w.clone(),
                overlap: Duration::from_secs(60),
            },
        )
        .await
        .unwrap();
        let listed = ask(&store, ListKeys).await.unwrap();
        let info = listed.iter().find(|i| i.workload == w).expect("listed");
        assert!(
            info.rotated_at.is_some() && info.previous_expiries.len() == 1,
            "{kind}"
        );

        assert!(ask(
            &store,
            DeleteKeys {
                workload: w.clone()
            }
        )
        .await
        .unwrap());
        assert!(matches!(
            ask(
                &store,
                GetKeys {
                    workload: w.clone()
                }
            )
            .await,
            Err(Error::NoKey { .. })
        ));
        assert!(!ask(&store, ListKeys)
            .await
            .unwrap()
            .iter()
            .any(|i| i.workload == w));
        assert!(
            !ask(&store, DeleteKeys { workload: w }).await.unwrap(),
            "{kind}"
        );
    }
}

#[actix_rt::test]
async fn rotating_a_workload_without_a_key_is_an_error() {
    for backend in common::backends() {
        let store = start(backend);
        let w: WorkloadName = common::unique_workload("nokey");
        let err = ask(
            &store,
            RotateKey {
                workload: w,
                overlap: Duration::ZERO,
            },
        )
        .await
        .unwrap_err();
        assert!(matches!(err, Error::NoKey { .. }), "{err}");
    }
}

#[actix_rt::test]
async fn two_workloads_never_share_a_key() {
    let backend = common::open(thv_actors::BackendKind::Keyutils);
    let store = start(backend);
    let mut seen = Vec::new();
    for _ in 0..20 {
        let w = common::unique_workload("distinct");
        let key = common::create_key(&store, &w).await;
        assert!(!seen.iter().any(|k: &thv_actors::SharedKey| k.ct_eq(&key)));
        seen.push(key);
        ask(&store, DeleteKeys { workload: w }).await.unwrap();
    }
}

#[cfg(feature = "fault-injection")]
#[actix_rt::test]
async fn a_panicking_backend_call_restarts_the_actor_and_errors_the_caller() {
    use thv_actors::{InjectBackendPanic, RestartTracker};

    for backend in common::backends() {
        let kind = backend.kind();
        let restarts = RestartTracker::new();
        let store = KeyStore::start_tracked(backend, restarts.clone()).unwrap();
        let w = common::unique_workload("panic");
        ask(
            &store,
            CreateKey {
                workload: w.clone(),
            },
        )
        .await
        .unwrap();

        store.send(InjectBackendPanic).await.unwrap();
        // Queue a second message behind the one that will panic: it must be
        // answered by the restarted actor.
        let failing = store.send(GetKeys {
            workload: w.clone(),
        });
        let queued = store.send(GetKeys {
            workload: w.clone(),
        });
        let failed = tokio::time::timeout(Duration::from_secs(5), failing)
            .await
            .expect("caller got an answer, not a hang")
            .unwrap();
        assert!(
            matches!(failed, Err(Error::ActorFailed { actor: "keystore" })),
            "{kind}"
        );
        let after = tokio::time::timeout(Duration::from_secs(5), queued)
            .await
            .expect("queued message answered")
            .unwrap();
        assert!(after.is_ok(), "{kind}: restarted actor failed");
        assert_eq!(restarts.count(), 1, "{kind}");

        ask(&store, DeleteKeys { workload: w }).await.unwrap();
    }
}
