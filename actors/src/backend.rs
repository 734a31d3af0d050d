//! [`Backend`]: the keychain a KeyStore talks to, chosen once at start.

use std::fmt;
use std::str::FromStr;

use zeroize::Zeroizing;

use crate::error::Error;

/// The keychain service name every entry is filed under.
pub const SERVICE: &str = "thv-actor";

/// A keychain implementation thv-actor can store keys in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum BackendKind {
    /// The freedesktop Secret Service on the D-Bus session bus
    /// (gnome-keyring, KWallet, KeePassXC).
    SecretService,
    /// The Linux kernel key retention service, in the user's persistent
    /// keyring.
    Keyutils,
    /// The macOS login keychain.
    MacosKeychain,
    /// The Windows Credential Manager.
    WindowsCredentialManager,
}

impl BackendKind {
    /// The name used by `--keystore` and `THV_ACTOR_KEYSTORE`.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::SecretService => "secret-service",
            BackendKind::Keyutils => "keyutils",
            BackendKind::MacosKeychain => "macos-keychain",
            BackendKind::WindowsCredentialManager => "windows-credential-manager",
        }
    }

    /// What to tell a user whose backend cannot be reached.
    pub(crate) fn hint(self) -> &'static str {
        match self {
            BackendKind::SecretService => {
                "start a Secret Service (gnome-keyring-daemon) in your D-Bus session, \
                 or choose --keystore keyutils"
            }
            BackendKind::Keyutils => {
                "the kernel key retention service with persistent keyrings is needed \
                 (CONFIG_PERSISTENT_KEYRINGS); or choose --keystore secret-service"
            }
            BackendKind::MacosKeychain => "unlock the login keychain",
            BackendKind::WindowsCredentialManager => "check the Credential Manager service",
        }
    }

    /// What to tell a user whose backend refused access.
    pub(crate) fn unlock_hint(self) -> &'static str {
        match self {
            BackendKind::SecretService => {
                "unlock the default (login) collection, for example by logging in to the desktop \
                 or with `gnome-keyring-daemon --unlock`"
            }
            BackendKind::Keyutils => "the key's permissions do not let this process read it",
            BackendKind::MacosKeychain => "unlock the login keychain",
            BackendKind::WindowsCredentialManager => "log in as the user who owns the key",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the user asked for: one backend, or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// Secret Service when it answers on the session bus, else the kernel
    /// keyring (Linux); the native store elsewhere.
    #[default]
    Auto,
    /// Exactly this backend; an error if it cannot be reached.
    Named(BackendKind),
}

impl FromStr for BackendChoice {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let kind = match s {
            "auto" => return Ok(BackendChoice::Auto),
            "secret-service" => BackendKind::SecretService,
            "keyutils" => BackendKind::Keyutils,
            "macos-keychain" => BackendKind::MacosKeychain,
            "windows-credential-manager" => BackendKind::WindowsCredentialManager,
            other => {
                return Err(Error::UnknownBackend {
                    name: other.chars().take(64).collect(),
                })
            }
        };
        Ok(BackendChoice::Named(kind))
    }
}

/// The standard per-user session bus address, `unix:path=/run/user/<uid>/bus`,
/// if that socket exists.
pub fn standard_session_bus() -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;

        // SAFETY: getuid cannot fail and has no preconditions.
        let uid = unsafe { libc::getuid() };
        let path = format!("/run/user/{uid}/bus");
        let meta = std::fs::metadata(&path).ok()?;
        meta.file_type()
            .is_socket()
            .then(|| format!("unix:path={path}"))
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Makes the session bus findable by a process that was started without
/// `DBUS_SESSION_BUS_ADDRESS` (as MCP clients start the bridge): when the
/// variable is unset and `address` (or else the standard per-user socket) is
/// known, sets it.
///
/// Call this first thing in `main`, before any thread starts: it changes the
/// process environment. Returns the address in effect, if any.
pub fn prepare_session_bus(address: Option<&str>) -> Option<String> {
    if let Some(existing) = std::env::var_os("DBUS_SESSION_BUS_ADDRESS") {
        return Some(existing.to_string_lossy().into_owned());
    }
    let address = address.map(str::to_owned).or_else(standard_session_bus)?;
    std::env::set_var("DBUS_SESSION_BUS_ADDRESS", &address);
    Some(address)
}

/// An open keychain: reads, writes and deletes text entries of the
/// `thv-actor` service. Every call blocks (a Secret Service call is a D-Bus
/// round trip), which is why only the KeyStore actor's own thread holds one.
///
/// # Security
///
/// Values pass through as [`Zeroizing`] strings. Errors from the keychain
/// are kept as sources, except that a value the keychain could not decode is
/// dropped unseen, because it could be a key.
#[derive(Clone)]
pub struct Backend {
    kind: BackendKind,
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backend").field("kind", &self.kind).finish()
    }
}

impl Backend {
    /// Opens the chosen backend and checks that it answers.
    ///
    /// `auto` on Linux asks the Secret Service on the session bus first (see
    /// [`prepare_session_bus`]) and takes the kernel keyring when nothing
    /// answers there; a Secret Service that answers but is locked is an
    /// error, not a reason to fall back. The choice is logged.
    ///
    /// # Errors
    ///
    /// [`Error::BackendUnavailable`] or [`Error::BackendLocked`], naming the
    /// backend and what to do; [`Error::BackendUnsupported`] for a backend
    /// this platform does not have.
    pub fn open(choice: BackendChoice) -> Result<Backend, Error> {
        match choice {
            BackendChoice::Named(kind) => {
                let backend = Backend::for_kind(kind)?;
                backend.probe()?;
                tracing::debug!(keystore = %kind, "keystore opened");
                Ok(backend)
            }
            BackendChoice::Auto => Backend::open_auto(),
        }
    }

    #[cfg(target_os = "linux")]
    fn open_auto() -> Result<Backend, Error> {
        let secret_service = Backend::for_kind(BackendKind::SecretService)?;
        match secret_service.probe() {
            Ok(()) => {
                tracing::info!(
                    keystore = "secret-service",
                    "keystore chosen: the Secret Service answered"
                );
                return Ok(secret_service);
            }
            Err(err @ Error::BackendLocked { .. }) => return Err(err),
            Err(err) => {
                tracing::info!(
                    keystore = "keyutils",
                    reason = %err,
                    "keystore chosen: the kernel keyring, because the Secret Service did not answer"
                );
            }
        }
        let keyutils = Backend::for_kind(BackendKind::Keyutils)?;
        keyutils.probe()?;
        Ok(keyutils)
    }

    #[cfg(target_os = "macos")]
    fn open_auto() -> Result<Backend, Error> {
        Backend::open(BackendChoice::Named(BackendKind::MacosKeychain))
    }

    #[cfg(target_os = "windows")]
    fn open_auto() -> Result<Backend, Error> {
        Backend::open(BackendChoice::Named(BackendKind::WindowsCredentialManager))
    }

    #[cfg(not(any(target_os = "linux", target_os = "macos", target_os = "windows")))]
    fn open_auto() -> Result<Backend, Error> {
        Err(Error::BackendUnsupported { backend: "auto" })
    }

    fn for_kind(kind: BackendKind) -> Result<Backend, Error> {
        let supported = match kind {
            BackendKind::SecretService | BackendKind::Keyutils => cfg!(target_os = "linux"),
            BackendKind::MacosKeychain => cfg!(target_os = "macos"),
            BackendKind::WindowsCredentialManager => cfg!(target_os = "windows"),
        };
        if !supported {
            return Err(Error::BackendUnsupported {
                backend: kind.as_str(),
            });
        }
        Ok(Backend { kind })
    }

    /// Which backend this is.
    pub fn kind(&self) -> BackendKind {
        self.kind
    }

    /// Checks that the backend answers: reads an entry that need not exist.
    fn probe(&self) -> Result<(), Error> {
        #[cfg(target_os = "linux")]
        if self.kind == BackendKind::Keyutils {
            self.refresh()?;
        }
        self.get("probe").map(drop)
    }

    /// Keeps the backend's own storage alive. For the kernel keyring this
    /// resets the persistent keyring's expiry timer (a few days unused by
    /// default, `/proc/sys/kernel/keys/persistent_keyring_expiry`); for the
    /// others it does nothing.
    ///
    /// # Errors
    ///
    /// [`Error::BackendUnavailable`] when the kernel has no persistent
    /// keyring to give.
    pub fn refresh(&self) -> Result<(), Error> {
        #[cfg(target_os = "linux")]
        if self.kind == BackendKind::Keyutils {
            use linux_keyutils::{KeyRing, KeyRingIdentifier};

            // Linking the persistent keyring into our session keyring is
            // what lets a search from this process find keys that another
            // process, in another session keyring, stored.
            KeyRing::get_persistent(KeyRingIdentifier::Session).map_err(|err| {
                Error::BackendUnavailable {
                    backend: self.kind,
                    hint: self.kind.hint(),
                    source: Box::new(std::io::Error::other(format!(
                        "no persistent keyring: {err:?}"
                    ))),
                }
            })?;
        }
        Ok(())
    }

    /// Reads the entry with `account`, `None` when it does not exist.
    ///
    /// # Errors
    ///
    /// The backend's failure, mapped as in [`Backend::open`];
    /// [`Error::CorruptEntry`] for a value that is not UTF-8.
    pub fn get(&self, account: &str) -> Result<Option<Zeroizing<String>>, Error> {
        match self.entry(account)?.get_password() {
            Ok(value) => Ok(Some(Zeroizing::new(value))),
            Err(keyring::Error::NoEntry) => Ok(None),
            Err(err) => Err(self.map_error(err, account)),
        }
    }

    /// Creates or replaces the entry with `account`.
    ///
    /// # Errors
    ///
    /// The backend's failure.
    pub fn set(&self, account: &str, value: &str) -> Result<(), Error> {
        self.entry(account)?
            .set_password(value)
            .map_err(|err| self.map_error(err, account))
    }

    /// Deletes the entry with `account`; `false` when there was none.
    ///
    /// # Errors
    ///
    /// The backend's failure.
    pub fn delete(&self, account: &str) -> Result<bool, Error> {
        match self.entry(account)?.delete_credential() {
            Ok(()) => Ok(true),
            Err(keyring::Error::NoEntry) => Ok(false),
            Err(err) => Err(self.map_error(err, account)),
        }
    }

    fn entry(&self, account: &str) -> Result<keyring::Entry, Error> {
        let built = match self.kind {
            #[cfg(target_os = "linux")]
            BackendKind::SecretService => {
                keyring::secret_service::SsCredential::new_with_target(None, SERVICE, account)
                    .map(|c| keyring::Entry::new_with_credential(Box::new(c)))
            }
            #[cfg(target_os = "linux")]
            BackendKind::Keyutils => {
                // Reach the persistent keyring before the keyring crate
                // looks up our session keyring: the lookup joins a session
                // keyring when the thread has none, and the crate must
                // search the one the persistent keyring is linked into.
                self.refresh()?;
                let description = format!("{SERVICE}:{account}");
                keyring::keyutils::KeyutilsCredential::new_with_target(
                    Some(&description),
                    SERVICE,
                    account,
                )
                .map(|c| keyring::Entry::new_with_credential(Box::new(c)))
            }
            _ => keyring::Entry::new(SERVICE, account),
        };
        built.map_err(|err| self.map_error(err, account))
    }

    fn map_error(&self, err: keyring::Error, account: &str) -> Error {
        let backend = self.kind;
        match err {
            keyring::Error::NoStorageAccess(source) => Error::BackendLocked {
                backend,
                hint: backend.unlock_hint(),
                source,
            },
            keyring::Error::PlatformFailure(source) => Error::BackendUnavailable {
                backend,
                hint: backend.hint(),
                source,
            },
            // The undecodable bytes could be a key: drop them unseen.
            keyring::Error::BadEncoding(_) => Error::CorruptEntry {
                account: account.to_owned(),
                reason: "the value is not UTF-8",
            },
            keyring::Error::Ambiguous(_) => Error::CorruptEntry {
                account: account.to_owned(),
                reason: "more than one keychain item matches",
            },
            other => Error::Backend {
                backend,
                source: Box::new(std::io::Error::other(other.to_string())),
            },
        }
    }
}
