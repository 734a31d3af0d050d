//! [`WorkloadName`]: the validated name every key is filed under.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::error::Error;

/// Longest workload name accepted.
pub const MAX_NAME_LEN: usize = 63;

/// A workload's name: 1 to 63 characters of `a-z`, `0-9`, `.`, `_` and `-`,
/// starting with a letter or a digit.
///
/// Names become part of keychain entry names (`workload:<name>:shared-key`),
/// file names and URLs, so anything outside that set is refused rather than
/// escaped. Cloning is cheap.
///
/// ```
/// use thv_actors::WorkloadName;
///
/// let name: WorkloadName = "mcp-server.time_2".parse().unwrap();
/// assert_eq!(name.as_str(), "mcp-server.time_2");
/// assert!("-leading-dash".parse::<WorkloadName>().is_err());
/// assert!("Upper".parse::<WorkloadName>().is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkloadName(Arc<str>);

impl WorkloadName {
    /// Checks and wraps `name`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidWorkloadName`], saying which rule the name breaks.
    pub fn new(name: &str) -> Result<Self, Error> {
        let invalid = |reason: &'static str| Error::InvalidWorkloadName {
            name: printable(name),
            reason,
        };

        if name.is_empty() {
            return Err(invalid("it is empty"));
        }
        if name.len() > MAX_NAME_LEN {
            return Err(invalid("it is longer than 63 characters"));
        }
        let first = name.as_bytes()[0];
        if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
            return Err(invalid("it must start with a-z or 0-9"));
        }
        let allowed = |b: &u8| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        };
        if !name.as_bytes().iter().all(allowed) {
            return Err(invalid("only a-z, 0-9, '.', '_' and '-' are allowed"));
        }
        Ok(WorkloadName(name.into()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for WorkloadName {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        WorkloadName::new(s)
    }
}

impl fmt::Display for WorkloadName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for WorkloadName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl serde::Serialize for WorkloadName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for WorkloadName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        WorkloadName::new(&text).map_err(serde::de::Error::custom)
    }
}

/// A bad name shown back to the user, with control characters escaped and
/// the length capped so an error line stays one short line.
fn printable(name: &str) -> String {
    let mut shown: String = name.chars().take(80).flat_map(char::escape_debug).collect();
    if name.chars().count() > 80 {
        shown.push_str("...");
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        for name in ["a", "0", "time", "mcp-server.time_2", &"a".repeat(63)] {
            assert!(WorkloadName::new(name).is_ok(), "{name} refused");
        }
    }

    #[test]
    fn refuses_names_that_would_break_an_entry_name() {
        for name in [
            "",
            &"a".repeat(64),
            "-a",
            ".a",
            "_a",
            "Time",
            "a:b",
            "a/b",
            "a b",
            "a\nb",
            "caf\u{e9}",
        ] {
            assert!(WorkloadName::new(name).is_err(), "{name:?} accepted");
        }
    }

    #[test]
    fn error_escapes_control_characters() {
        let err = WorkloadName::new("a\nb").unwrap_err().to_string();
        assert!(!err.contains('\n'), "{err}");
        assert!(err.contains("a\\nb"), "{err}");
    }
}
