//! [`SharedKey`]: 32 bytes that authenticate one workload.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::KeyParseError;

/// Length of a key in bytes (256 bits).
pub const KEY_LEN: usize = 32;

/// Length of a key's one text form: base64url without padding.
pub const ENCODED_LEN: usize = 43;

/// A workload's shared key.
///
/// Generated with ChaCha20 seeded from the operating system's entropy source,
/// and written as base64url without padding (43 characters), both on the wire
/// and in the keychain. [`SharedKey::parse`] accepts that form and nothing
/// else.
///
/// # Security
///
/// - `Debug` prints `SharedKey(<redacted>)`; there is no `Display`, so a key
///   cannot reach a log line or an error message by accident.
/// - The bytes are wiped when the value is dropped. Copies the caller takes
///   with [`SharedKey::expose_encoded`] are wiped too, when they drop.
/// - [`SharedKey::ct_eq`] compares in constant time. The length of a
///   presented value is public: parsing rejects any other length before a
///   comparison is made.
///
/// ```
/// use thv_actors::SharedKey;
///
/// let key = SharedKey::generate();
/// let text = key.expose_encoded();
/// assert_eq!(text.len(), 43);
/// assert!(SharedKey::parse(&text).unwrap().ct_eq(&key));
/// assert_eq!(format!("{key:?}"), "SharedKey(<redacted>)");
/// ```
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SharedKey([u8; KEY_LEN]);

impl SharedKey {
    /// Draws a new key from a ChaCha20 generator freshly seeded by the OS.
    ///
    /// A generator is seeded per call, so no generator state outlives the key
    /// it produced, and two processes started at the same moment cannot share
    /// a stream.
    ///
    /// # Panics
    ///
    /// If the operating system cannot provide entropy (`getrandom` fails),
    /// which leaves no safe way to make a key.
    pub fn generate() -> Self {
        let mut rng = ChaCha20Rng::from_os_rng();
        let mut bytes = [0u8; KEY_LEN];
        rng.fill_bytes(&mut bytes);
        SharedKey(bytes)
    }

    /// Parses a key from its text form.
    ///
    /// # Errors
    ///
    /// [`KeyParseError`] when `text` is not exactly 43 characters of the
    /// base64url alphabet that decode to 32 bytes: standard-alphabet `+` and
    /// `/`, `=` padding, whitespace anywhere and non-canonical trailing bits
    /// are all refused. The error never contains the text.
    pub fn parse(text: &str) -> Result<Self, KeyParseError> {
        Self::parse_bytes(text.as_bytes())
    }

    /// Parses a key from raw header bytes, which need not be UTF-8.
    ///
    /// # Errors
    ///
    /// As [`SharedKey::parse`].
    pub fn parse_bytes(text: &[u8]) -> Result<Self, KeyParseError> {
        if text.len() != ENCODED_LEN {
            return Err(KeyParseError::Length { found: text.len() });
        }
        if let Some(position) = text.iter().position(|b| !is_base64url(*b)) {
            return Err(KeyParseError::Alphabet { position });
        }

        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        match URL_SAFE_NO_PAD.decode_slice(text, &mut bytes[..]) {
            Ok(KEY_LEN) => Ok(SharedKey(*bytes)),
            // The alphabet and length are right, so only non-zero trailing
            // bits (a second spelling of the same bytes) can get here.
            _ => Err(KeyParseError::NonCanonical),
        }
    }

    /// The key's text form, for the header a bridge sends and for the
    /// keychain. The returned string is wiped when dropped.
    pub fn expose_encoded(&self) -> Zeroizing<String> {
        Zeroizing::new(URL_SAFE_NO_PAD.encode(self.0))
    }

    /// The raw bytes, for tests that look for every encoding of a key in
    /// output. Not for comparisons: use [`SharedKey::ct_eq`].
    pub fn expose_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Compares two keys in constant time.
    pub fn ct_eq(&self, other: &SharedKey) -> bool {
        self.0.ct_eq(&other.0).into()
    }

    /// Whether `self` equals any of `candidates`, in time that depends only
    /// on how many candidates there are, never on which one matched or where
    /// they differ.
    pub fn ct_eq_any<'a>(&self, candidates: impl IntoIterator<Item = &'a SharedKey>) -> bool {
        let mut matched = subtle::Choice::from(0);
        for candidate in candidates {
            matched |= self.0.ct_eq(&candidate.0);
        }
        matched.into()
    }
}

impl fmt::Debug for SharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedKey(<redacted>)")
    }
}

fn is_base64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_round_trips_through_its_text_form() {
        let key = SharedKey::generate();
        let text = key.expose_encoded();
        assert_eq!(text.len(), ENCODED_LEN);
        assert!(SharedKey::parse(&text).unwrap().ct_eq(&key));
    }

    #[test]
    fn rejects_every_other_form() {
        let key = SharedKey::generate();
        let good = key.expose_encoded().to_string();
        let standard = base64::engine::general_purpose::STANDARD.encode(key.expose_bytes());

        let cases: Vec<(String, &str)> = vec![
            (String::new(), "empty"),
            (good[..42].to_string(), "one short"),
            (format!("{good}A"), "one long"),
            (format!("{good}="), "padding"),
            (standard.clone(), "standard alphabet with padding"),
            (format!(" {}", &good[1..]), "leading space"),
            (format!("{}\t", &good[..42]), "trailing tab"),
            (format!("{}+{}", &good[..10], &good[11..]), "plus sign"),
            (format!("{}/{}", &good[..10], &good[11..]), "slash"),
            (format!("{}\u{e9}", &good[..41]), "non-ascii"),
        ];
        for (text, what) in cases {
            assert!(SharedKey::parse(&text).is_err(), "{what} was accepted");
        }
    }

    #[test]
    fn rejects_non_canonical_trailing_bits() {
        // 43 characters carry 258 bits; the last character's low two bits
        // must be zero. 'B' sets one of them.
        let good = SharedKey::generate().expose_encoded().to_string();
        let mut text = good[..42].to_string();
        text.push('B');
        assert!(matches!(
            SharedKey::parse(&text),
            Err(KeyParseError::NonCanonical)
        ));
    }

    #[test]
    fn rejects_non_utf8_bytes() {
        let mut bytes = [b'A'; ENCODED_LEN];
        bytes[5] = 0xff;
        assert!(matches!(
            SharedKey::parse_bytes(&bytes),
            Err(KeyParseError::Alphabet { position: 5 })
        ));
    }

    #[test]
    fn debug_shows_no_encoding_of_the_key() {
        let key = SharedKey::generate();
        let debug = format!("{key:?} {:#?} {:?}", key, Some(&key));
        for form in crate::testing::encodings(&key) {
            assert!(!debug.contains(&form), "debug output leaked the key");
        }
    }

    #[test]
    fn parse_errors_do_not_echo_the_input() {
        let key = SharedKey::generate();
        let mut text = key.expose_encoded().to_string();
        text.push('x');
        let err = SharedKey::parse(&text).unwrap_err();
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains(&text[..20]));
    }

    #[test]
    fn compares_against_several_candidates() {
        let a = SharedKey::generate();
        let b = SharedKey::generate();
        let c = SharedKey::generate();
        assert!(a.ct_eq_any([&b, &a]));
        assert!(!a.ct_eq_any([&b, &c]));
        assert!(!a.ct_eq_any([]));
    }
}
