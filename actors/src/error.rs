//! [`Error`], the one error type of this crate, and [`KeyParseError`], the
//! small one the request path uses.

use std::fmt;

use crate::backend::BackendKind;
use crate::name::WorkloadName;

/// Why a presented key was refused. Says nothing about the value itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyParseError {
    /// Not 43 characters long.
    Length {
        /// How long the presented value was.
        found: usize,
    },
    /// A byte outside the base64url alphabet (`+`, `/`, `=`, whitespace,
    /// anything non-ASCII).
    Alphabet {
        /// Where the first such byte is.
        position: usize,
    },
    /// The right alphabet and length, but a second spelling of some bytes
    /// (non-zero trailing bits).
    NonCanonical,
}

impl fmt::Display for KeyParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyParseError::Length { found } => {
                write!(f, "key must be 43 base64url characters, found {found}")
            }
            KeyParseError::Alphabet { position } => write!(
                f,
                "key has a character outside the base64url alphabet at position {position}"
            ),
            KeyParseError::NonCanonical => f.write_str("key is not in canonical base64url form"),
        }
    }
}

impl std::error::Error for KeyParseError {}

/// A boxed cause from a keychain or the operating system.
pub type Source = Box<dyn std::error::Error + Send + Sync>;

/// Everything the actors crate can fail with.
///
/// No variant carries a key, and no message shows one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The caller gave a name outside the workload-name rules.
    #[error("invalid workload name \"{name}\": {reason}")]
    InvalidWorkloadName {
        /// The name, with control characters escaped.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },

    /// The caller named a keystore backend that does not exist.
    #[error(
        "unknown keystore \"{name}\": use auto, secret-service, keyutils, macos-keychain \
         or windows-credential-manager"
    )]
    UnknownBackend {
        /// What was asked for.
        name: String,
    },

    /// The caller asked for a backend this platform does not have.
    #[error("keystore {backend} is not available on this platform")]
    BackendUnsupported {
        /// The backend's name.
        backend: &'static str,
    },

    /// The environment: the backend did not answer.
    #[error("keystore {backend} is unreachable: {source}; {hint}")]
    BackendUnavailable {
        /// Which backend.
        backend: BackendKind,
        /// What the user can do about it.
        hint: &'static str,
        /// What the backend said.
        source: Source,
    },

    /// The environment: the backend answered but refused access (locked).
    #[error("keystore {backend} refused access (is it locked?): {source}; {hint}")]
    BackendLocked {
        /// Which backend.
        backend: BackendKind,
        /// What the user can do about it.
        hint: &'static str,
        /// What the backend said.
        source: Source,
    },

    /// The backend failed in a way it did not classify.
    #[error("keystore {backend} failed: {source}")]
    Backend {
        /// Which backend.
        backend: BackendKind,
        /// What the backend said.
        source: Source,
    },

    /// Someone else (another program, or a hand edit) left an entry under
    /// our service that we cannot read. The value is never shown.
    #[error("keychain entry \"{account}\" of service thv-actor is unreadable: {reason}")]
    CorruptEntry {
        /// The entry's account name.
        account: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// The caller asked for the key of a workload that has none.
    #[error(
        "workload \"{workload}\" has no key (create one with `thv-actor key create {workload}`)"
    )]
    NoKey {
        /// The workload.
        workload: WorkloadName,
    },

    /// The caller asked to rotate to an overlap that does not fit in a timestamp.
    #[error("overlap of {seconds} seconds is too long")]
    OverlapTooLong {
        /// The overlap asked for.
        seconds: u64,
    },

    /// The environment: a file thv-actor keeps beside the keychain (the
    /// lock serialising keychain updates across processes, state files)
    /// could not be used.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },

    /// An internal bug: the actor failed while handling this message (it
    /// panicked, and has been restarted). The message may or may not have
    /// taken effect; retrying is safe for reads.
    #[error("the {actor} actor failed while handling this request and was restarted; retry")]
    ActorFailed {
        /// Which actor.
        actor: &'static str,
    },

    /// The actor's mailbox is closed or full: the system is shutting down or
    /// overloaded. Retry later.
    #[error("the {actor} actor is not answering ({reason}); retry later")]
    ActorUnavailable {
        /// Which actor.
        actor: &'static str,
        /// Closed or timed out.
        reason: &'static str,
    },
}

impl Error {
    /// Maps a failed `Addr::send` to the error its caller can act on.
    pub fn from_mailbox(actor: &'static str, err: actix::MailboxError) -> Error {
        let reason = match err {
            actix::MailboxError::Closed => "mailbox closed",
            actix::MailboxError::Timeout => "timed out",
        };
        Error::ActorUnavailable { actor, reason }
    }

    /// Whether the keychain itself could not be reached or used, as opposed
    /// to the key being absent or the request being wrong.
    pub fn is_keychain_unreachable(&self) -> bool {
        matches!(
            self,
            Error::BackendUnavailable { .. }
                | Error::BackendLocked { .. }
                | Error::Backend { .. }
                | Error::ActorFailed { .. }
                | Error::ActorUnavailable { .. }
                | Error::Io { .. }
        )
    }
}
