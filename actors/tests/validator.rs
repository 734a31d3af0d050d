//! The Validator actor over a real keychain.

mod common;

use std::time::Duration;

use thv_actors::{
    CreateKey, DeleteKeys, GetKeys, KeyStore, RotateKey, SharedKey, Validate, Validator,
    ValidatorConfig, Verdict,
};

fn config(refresh_ms: u64) -> ValidatorConfig {
    ValidatorConfig {
        refresh: Duration::from_millis(refresh_ms),
        ..ValidatorConfig::default()
    }
}

#[actix_rt::test]
async fn accepts_the_current_key_and_refuses_others() {
    for backend in common::backends() {
        let kind = backend.kind();
        let store = KeyStore::start(backend).unwrap();
        let validator = Validator::start(store.clone(), config(60_000));
        let w = common::unique_workload("validate");
        let other = common::unique_workload("validate-other");
        store
            .send(CreateKey {
                workload: w.clone(),
            })
            .await
            .unwrap()
            .unwrap();
        store
            .send(CreateKey {
                workload: other.clone(),
            })
            .await
            .unwrap()
            .unwrap();
        let key = store
            .send(GetKeys {
                workload: w.clone(),
            })
            .await
            .unwrap()
            .unwrap()
            .current;
        let other_key = store
            .send(GetKeys {
                workload: other.clone(),
            })
            .await
            .unwrap()
            .unwrap()
            .current;

        let ask = |presented: SharedKey| {
            validator.send(Validate {
                workload: w.clone(),
                presented,
            })
        };
        assert_eq!(
            ask(key.clone()).await.unwrap().unwrap(),
            Verdict::Accepted,
            "{kind}"
        );
        assert_eq!(
            ask(SharedKey::generate()).await.unwrap().unwrap(),
            Verdict::WrongKey
        );
        assert_eq!(
            ask(other_key).await.unwrap().unwrap(),
            Verdict::WrongKey,
            "{kind}: another workload's key was accepted"
        );

        store
            .send(DeleteKeys { workload: w })
            .await
            .unwrap()
            .unwrap();
        store
            .send(DeleteKeys { workload: other })
            .await
            .unwrap()
            .unwrap();
    }
}

#[actix_rt::test]
async fn a_rotated_or_deleted_key_stops_validating_after_the_refresh_interval() {
    let backend = common::open(thv_actors::BackendKind::Keyutils);
    let store = KeyStore::start(backend).unwrap();
    let validator = Validator::start(store.clone(), config(200));
    let w = common::unique_workload("refresh");
    let old = common::create_key(&store, &w).await;
    let ask = |presented: SharedKey| {
        validator.send(Validate {
            workload: w.clone(),
            presented,
        })
    };
    assert_eq!(ask(old.clone()).await.unwrap().unwrap(), Verdict::Accepted);

    // Rotated with no overlap behind the Validator's back (as another
    // process would): refused once the cache is older than the interval.
    store
        .send(RotateKey {
            workload: w.clone(),
            overlap: Duration::ZERO,
        })
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ask(old).await.unwrap().unwrap(), Verdict::WrongKey);

    store
        .send(DeleteKeys {
            workload: w.clone(),
        })
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        ask(SharedKey::generate()).await.unwrap().unwrap(),
        Verdict::NoKey
    );
}

#[actix_rt::test]
async fn concurrent_misses_share_one_keychain_read() {
    let backend = common::open(thv_actors::BackendKind::Keyutils);
    let store = KeyStore::start(backend).unwrap();
    let validator = Validator::start(store.clone(), config(60_000));
    let w = common::unique_workload("coalesce");
    let key = common::create_key(&store, &w).await;

    let asks: Vec<_> = (0..50)
        .map(|i| {
            let presented = if i % 2 == 0 {
                key.clone()
            } else {
                SharedKey::generate()
            };
            validator.send(Validate {
                workload: w.clone(),
                presented,
            })
        })
        .collect();
    let verdicts = futures_util::future::join_all(asks).await;
    for (i, v) in verdicts.into_iter().enumerate() {
        let want = if i % 2 == 0 {
            Verdict::Accepted
        } else {
            Verdict::WrongKey
        };
        assert_eq!(v.unwrap().unwrap(), want, "request {i}");
    }
    store
        .send(DeleteKeys { workload: w })
        .await
        .unwrap()
        .unwrap();
}

#[cfg(feature = "fault-injection")]
#[actix_rt::test]
async fn a_panicking_validation_fails_that_request_and_the_actor_comes_back() {
    use thv_actors::{Error, InjectValidatorPanic, RestartTracker};

    let backend = common::open(thv_actors::BackendKind::Keyutils);
    let store = KeyStore::start(backend).unwrap();
    let restarts = RestartTracker::new();
    let validator = Validator::start_tracked(store.clone(), config(60_000), restarts.clone());
    let w = common::unique_workload("vpanic");
    let key = common::create_key(&store, &w).await;

    validator.send(InjectValidatorPanic).await.unwrap();
    let in_flight: Vec<_> = (0..50)
        .map(|_| {
            validator.send(Validate {
                workload: w.clone(),
                presented: key.clone(),
            })
        })
        .collect();
    let answers = futures_util::future::join_all(in_flight).await;

    // Exactly the one that met the fault failed, with an error to act on;
    // the 49 queued behind it were answered by the restarted actor.
    let failed = answers
        .iter()
        .filter(|a| matches!(a, Ok(Err(Error::ActorFailed { .. }))))
        .count();
    let accepted = answers
        .iter()
        .filter(|a| matches!(a, Ok(Ok(Verdict::Accepted))))
        .count();
    assert_eq!((failed, accepted), (1, 49));
    assert_eq!(restarts.count(), 1);

    store
        .send(DeleteKeys { workload: w })
        .await
        .unwrap()
        .unwrap();
}
