//! Checks for the request-header side of the front door on arbitrary
//! header sets: the `LoopbackGuard` (through actix-web's test service, so
//! header parsing is actix's own) admits a request exactly when a model of
//! its rules says so, `is_loopback_host` never calls a name with URL
//! syntax in it loopback, and key parsing of every header value (and of its
//! `Bearer` token) never panics.
//!
//! Input: lines separated by `\n`. The first line is the `Host` value (an
//! empty first line means no `Host` header); every further line is
//! `name:value`. Headers actix cannot represent are skipped, as a real
//! parser would have refused the request before any middleware.

use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{test, web, App, HttpResponse};
use thv_actors::SharedKey;
use thv_server::guard::{is_loopback_host, LoopbackGuard};

const PORT: u16 = 8811;

thread_local! {
    static RUNTIME: actix_rt::SystemRunner = actix_rt::System::new();
}

/// Runs every check on `data`; panics on a violation.
pub fn run(data: &[u8]) {
    let mut lines = data.split(|b| *b == b'\n');
    let host = lines.next().unwrap_or_default();

    // Parse: the header set, as actix would hold it.
    let mut headers: Vec<(HeaderName, HeaderValue)> = Vec::new();
    if !host.is_empty() {
        if let Ok(value) = HeaderValue::from_bytes(host) {
            headers.push((HeaderName::from_static("host"), value));
        }
    }
    for line in lines.take(16) {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            headers.push((name, value));
        }
    }

    // Key parsing and the host check never panic on any value.
    for (_, value) in &headers {
        let bytes = value.as_bytes();
        let _ = SharedKey::parse_bytes(bytes);
        if bytes.len() >= 7 && bytes[..7].eq_ignore_ascii_case(b"bearer ") {
            let _ = SharedKey::parse_bytes(&bytes[7..]);
        }
        if let Ok(text) = value.to_str() {
            host_is_plausible(text);
        }
    }

    // The guard's decision matches the model.
    let expected = model_admits(&headers);
    let status = RUNTIME.with(|rt| rt.block_on(guard_status(&headers)));
    match status {
        200 => assert!(expected, "the guard admitted {headers:?}"),
        403 => assert!(!expected, "the guard refused {headers:?}"),
        other => panic!("the guard answered {other}"),
    }
}

/// A name `is_loopback_host` accepts never holds characters that would
/// make a URL mean another host (`@`, `/`, `#`, `?`, `%`, whitespace).
fn host_is_plausible(text: &str) {
    if is_loopback_host(text) {
        assert!(
            text.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".:[]".contains(&b)),
            "{text:?} counted as loopback"
        );
    }
}

/// The guard's rules, written again from its documentation.
fn model_admits(headers: &[(HeaderName, HeaderValue)]) -> bool {
    let all = |name: &str| -> Vec<&HeaderValue> {
        headers
            .iter()
            .filter(|(n, _)| n.as_str() == name)
            .map(|(_, v)| v)
            .collect()
    };

    let hosts = all("host");
    let [host] = hosts.as_slice() else {
        return false;
    };
    let Ok(host) = host.to_str() else {
        return false;
    };
    if !is_loopback_host(host) {
        return false;
    }

    let origins = all("origin");
    match origins.as_slice() {
        [] => true,
        [origin] => origin.to_str().is_ok_and(|o| {
            let o = o.trim_end_matches('/').to_ascii_lowercase();
            ["127.0.0.1", "localhost", "[::1]"]
                .iter()
                .any(|h| o == format!("http://{h}:{PORT}") || o == format!("https://{h}:{PORT}"))
        }),
        _ => false,
    }
}

async fn guard_status(headers: &[(HeaderName, HeaderValue)]) -> u16 {
    let app = test::init_service(
        App::new()
            .wrap(LoopbackGuard::new(PORT, &[]))
            .route("/mcp", web::post().to(HttpResponse::Ok)),
    )
    .await;
    let mut req = test::TestRequest::post().uri("/mcp");
    for (name, value) in headers {
        req = req.append_header((name.clone(), value.clone()));
    }
    test::call_service(&app, req.to_request())
        .await
        .status()
        .as_u16()
}
