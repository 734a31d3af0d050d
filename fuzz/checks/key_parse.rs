//! Checks for `SharedKey::parse_bytes` on arbitrary bytes: it never panics;
//! what it accepts is exactly one canonical spelling of 32 bytes; what it
//! refuses leaves no trace of the input in the error.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use thv_actors::{KeyParseError, SharedKey, ENCODED_LEN, KEY_LEN};

/// Runs every check on `data`; panics on a violation.
pub fn run(data: &[u8]) {
    match SharedKey::parse_bytes(data) {
        Ok(key) => accepted(data, &key),
        Err(err) => {
            // The error may depend on the shape of the input (its length,
            // where the first bad byte is, whether the last character is
            // canonical) and on nothing else: the same error for a shadow
            // input of that shape means no byte of the input is echoed.
            let shadow = shadow(data, &err);
            let again = SharedKey::parse_bytes(&shadow).expect_err("the shadow is refused too");
            assert_eq!(format!("{err} {err:?}"), format!("{again} {again:?}"));
        }
    }
}

fn accepted(data: &[u8], key: &SharedKey) {
    // Only the one text form: 43 characters of the base64url alphabet.
    assert_eq!(data.len(), ENCODED_LEN);
    assert!(data.iter().all(|b| is_base64url(*b)));

    // Re-encoding gives back the same bytes: no second spelling is accepted.
    let text = key.expose_encoded();
    assert_eq!(
        text.as_bytes(),
        data,
        "a non-canonical spelling was accepted"
    );

    // The bytes are what an independent decoder makes of the text.
    let decoded = URL_SAFE_NO_PAD.decode(data).expect("accepted text decodes");
    assert_eq!(decoded.len(), KEY_LEN);
    assert_eq!(&decoded[..], key.expose_bytes());

    // Parsing the re-encoded text gives the same key; Debug stays redacted.
    assert!(SharedKey::parse(&text).expect("round trip").ct_eq(key));
    assert_eq!(format!("{key:?}"), "SharedKey(<redacted>)");
}

fn is_base64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// `data` with every alphabet byte made `A` and every other byte `!`; for a
/// non-canonical input the last character is `B` (low bits set), as theirs.
fn shadow(data: &[u8], err: &KeyParseError) -> Vec<u8> {
    let mut shadow: Vec<u8> = data
        .iter()
        .map(|b| if is_base64url(*b) { b'A' } else { b'!' })
        .collect();
    if matches!(err, KeyParseError::NonCanonical) {
        *shadow.last_mut().expect("a non-canonical key is 43 bytes") = b'B';
    }
    shadow
}
