//! With every log level on, no operation of the actors writes a key in any
//! encoding.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use thv_actors::{
    CreateKey, DeleteKeys, GetKeys, KeyStore, ListKeys, RotateKey, SharedKey, Validate, Validator,
    ValidatorConfig,
};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[actix_rt::test]
async fn trace_logs_of_every_operation_hold_no_key() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .init();

    let mut keys = Vec::new();
    for backend in common::backends() {
        let store = KeyStore::start(backend).unwrap();
        let validator = Validator::start(store.clone(), ValidatorConfig::default());
        let w = common::unique_workload("leak");

        store
            .send(CreateKey {
                workload: w.clone(),
            })
            .await
            .unwrap()
            .unwrap();
        let first = store
            .send(GetKeys {
                workload: w.clone(),
            })
            .await
            .unwrap()
            .unwrap();
        keys.push(first.current.clone());
        let _ = validator
            .send(Validate {
                workload: w.clone(),
                presented: first.current.clone(),
            })
            .await;
        let _ = validator
            .send(Validate {
                workload: w.clone(),
                presented: SharedKey::generate(),
            })
            .await;
        store
            .send(RotateKey {
                workload: w.clone(),
                overlap: Duration::from_secs(30),
            })
            .await
            .unwrap()
            .unwrap();
        let second = store
            .send(GetKeys {
                workload: w.clone(),
            })
            .await
            .unwrap()
            .unwrap();
        keys.push(second.current.clone());
        store.send(ListKeys).await.unwrap().unwrap();
        store
            .send(DeleteKeys {
                workload: w.clone(),
            })
            .await
            .unwrap()
            .unwrap();
        // Failure paths log too.
        let _ = store
            .send(GetKeys {
                workload: w.clone(),
            })
            .await
            .unwrap();
        let _ = validator
            .send(Validate {
                workload: w,
                presented: first.current,
            })
            .await;
    }

    let logs = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    assert!(
        logs.contains("key created"),
        "logs were not captured:\n{logs}"
    );
    for key in &keys {
        assert!(
            !thv_actors::testing::leaks(&logs, key),
            "a key reached the logs"
        );
    }
}
