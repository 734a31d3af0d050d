//! Key material and the actors that own it: [`SharedKey`], [`WorkloadName`],
//! the KeyStore actor (every keychain call) and the Validator actor (the cache
//! the request path asks). No HTTP here.

mod backend;
mod error;
mod key;
mod keystore;
mod name;
mod paths;
pub mod records;
mod supervise;
#[doc(hidden)]
pub mod testing;
mod validator;

pub use backend::{
    prepare_session_bus, standard_session_bus, Backend, BackendChoice, BackendKind, SERVICE,
};
pub use error::{Error, KeyParseError};
pub use key::{SharedKey, ENCODED_LEN, KEY_LEN};
#[cfg(feature = "fault-injection")]
pub use keystore::InjectBackendPanic;
pub use keystore::{
    CreateKey, DeleteKeys, GetKeyInfo, GetKeys, KeyStore, ListKeys, PruneKeys, RefreshBackend,
    RotateKey, WhichBackend,
};
pub use name::{WorkloadName, MAX_NAME_LEN};
pub use paths::{create_private_dir, home_dir, keystore_lock_dir, state_dir, STATE_DIR_ENV};
pub use records::{KeyInfo, KeySet, PreviousKey, Rotated};
pub use supervise::RestartTracker;
#[cfg(feature = "fault-injection")]
pub use validator::InjectValidatorPanic;
pub use validator::{
    Invalidate, Preload, Validate, Validator, ValidatorConfig, Validators, Verdict,
    DEFAULT_MAX_STALE, DEFAULT_REFRESH,
};
