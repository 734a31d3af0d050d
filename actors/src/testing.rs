//! Helpers for tests that hunt for a key in output. Not part of the API.

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;

use crate::SharedKey;

/// Every text form a leaked key could take: base64url with and without
/// padding, standard base64 with and without padding, lower- and upper-case
/// hex, and percent-encoding of the base64 forms.
pub fn encodings(key: &SharedKey) -> Vec<String> {
    let bytes = key.expose_bytes();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut forms = vec![
        URL_SAFE_NO_PAD.encode(bytes),
        URL_SAFE.encode(bytes),
        STANDARD.encode(bytes),
        STANDARD_NO_PAD.encode(bytes),
        hex.to_uppercase(),
        hex,
    ];
    let percent: Vec<String> = forms[..4]
        .iter()
        .map(|f| {
            f.replace('+', "%2B")
                .replace('/', "%2F")
                .replace('=', "%3D")
        })
        .collect();
    forms.extend(percent);
    forms.sort();
    forms.dedup();
    forms
}

/// Whether `haystack` contains any form of `key`.
pub fn leaks(haystack: &str, key: &SharedKey) -> bool {
    encodings(key)
        .iter()
        .any(|form| haystack.contains(form.as_str()))
}
