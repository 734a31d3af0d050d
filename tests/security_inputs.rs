//! Hostile requests against a running `thv-actor serve`: every one gets the
//! status it should, an answer that does not repeat what was presented, and
//! none of them reaches the workload.
//!
//! The workloads are `url` upstreams pointing at a counting HTTP server in
//! this test; its counter must move by exactly one for each request that
//! carried a valid key, and by zero for everything else.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::http::{raw, Response, INITIALIZE};
use support::serve::Serve;
use thv_actors::SharedKey;

const KEYSTORE: &str = "secret-service";

/// An HTTP/1.1 server that answers every request with 200 and a JSON-RPC
/// result, and counts the requests it read.
struct CountingUpstream {
    port: u16,
    seen: Arc<AtomicUsize>,
}

impl CountingUpstream {
    fn start() -> CountingUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let counter = counter.clone();
                std::thread::spawn(move || answer_all(stream, &counter));
            }
        });
        CountingUpstream { port, seen }
    }

    fn count(&self) -> usize {
        self.seen.load(Ordering::SeqCst)
    }
}

/// Reads requests off one keep-alive connection until it closes (or 30 s of
/// silence), answering each.
fn answer_all(stream: TcpStream, counter: &AtomicUsize) {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        // Head: request line and headers.
        let mut length = 0usize;
        let mut chunked = false;
        let mut first = true;
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line == "\r\n" && !first {
                break;
            }
            first = false;
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
            if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            }
        }

        // Body: by length or by chunks.
        if chunked {
            loop {
                let mut size = String::new();
                if reader.read_line(&mut size).unwrap_or(0) == 0 {
                    return;
                }
                let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
                let mut chunk = vec![0; size + 2];
                if reader.read_exact(&mut chunk).is_err() {
                    return;
                }
                if size == 0 {
                    break;
                }
            }
        } else {
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
        }

        counter.fetch_add(1, Ordering::SeqCst);
        let body = r#"{"jsonrpc":"2.0","id":1,"result":{"counted":true}}"#;
        let reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if writer.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

/// What a case expects back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A valid request: 200 and the upstream counts it.
    Reaches,
    /// Refused with this status; the upstream never sees it.
    Refused(u16),
}

/// One hostile (or, for contrast, valid) request.
struct Case {
    what: &'static str,
    port: u16,
    head: Vec<u8>,
    body: Vec<u8>,
    /// A value the answer must not repeat (besides every key).
    presented: Vec<u8>,
    expect: Expect,
}

fn post_head(port: u16, target: &str, headers: &[&[u8]]) -> Vec<u8> {
    let mut head = format!(
        "POST {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream"
    )
    .into_bytes();
    for h in headers {
        head.extend_from_slice(b"\r\n");
        head.extend_from_slice(h);
    }
    head
}

fn header(name: &str, value: &str) -> Vec<u8> {
    format!("{name}: {value}").into_bytes()
}

/// A serve with two `url` workloads in front of one counting upstream;
/// `a`'s key has been rotated and its previous key has expired.
struct Fixture {
    upstream: CountingUpstream,
    serve: Serve,
    a: String,
    b: String,
    /// `a`'s current key.
    key: String,
    /// `a`'s key before the rotation, expired.
    old: String,
    /// `b`'s key.
    key_b: String,
    _home: tempfile::TempDir,
}

impl Fixture {
    fn start(tag: &str) -> Fixture {
        support::require_setup();
        let home = tempfile::tempdir().unwrap();
        let upstream = CountingUpstream::start();
        let a = support::unique(&format!("{tag}-a"));
        let b = support::unique(&format!("{tag}-b"));
        let config = format!(
            "[[workloads]]\nname = \"{a}\"\nurl = \"http://127.0.0.1:{up}/mcp\"\n\n\
             [[workloads]]\nname = \"{b}\"\nurl = \"http://127.0.0.1:{up}/mcp\"\n",
            up = upstream.port
        );
        let serve = Serve::start(home.path(), KEYSTORE, &config, 2, &[]);

        // a's key is rotated with a 1 s overlap and the old one left to
        // expire, so that a case can present a key that used to be valid.
        let old = serve.key(&a);
        let rotated = serve.cli(&["key", "rotate", &a, "--overlap", "1s"]);
        let fixture_key = serve.key(&a);
        let key_b = serve.key(&b);
        let fixture = Fixture {
            upstream,
            serve,
            a,
            b,
            key: fixture_key,
            old,
            key_b,
            _home: home,
        };
        assert!(rotated.status.success(), "{}", support::stderr(&rotated));
        assert_ne!(fixture.key, fixture.old);
        std::thread::sleep(Duration::from_millis(2500));
        fixture
    }

    fn port(&self) -> u16 {
        self.serve.port(&self.a)
    }

    fn keys(&self) -> Vec<SharedKey> {
        [&self.key, &self.old, &self.key_b]
            .iter()
            .map(|k| SharedKey::parse(k).unwrap())
            .collect()
    }

    /// Lines of serve's log holding any form of a key, redacted.
    fn leaked_log_lines(&self) -> Vec<String> {
        let keys = self.keys();
        self.serve
            .stderr()
            .lines()
            .filter(|line| keys.iter().any(|k| thv_actors::testing::leaks(line, k)))
            .map(|line| redact(line, &keys))
            .collect()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for w in [&self.a, &self.b] {
            let _ = self.serve.cli(&["key", "delete", w]);
        }
    }
}

#[test]
fn hostile_inputs_are_refused_and_never_reach_the_workload() {
    let started = Instant::now();
    let fx = Fixture::start("secin");
    let port = fx.port();
    let cases = table(port, fx.serve.port(&fx.b), &fx.key, &fx.old, &fx.key_b);
    assert!(cases.len() >= 40, "only {} cases", cases.len());
    let keys = fx.keys();

    let mut failures = Vec::new();
    let mut valid = 0;
    let baseline = fx.upstream.count();
    for case in &cases {
        let before = fx.upstream.count();
        let response = raw(case.port, &case.head, &case.body);
        let reached = fx.upstream.count() - before;
        let shown = shown(&response);
        eprintln!("{:>3} reached={reached}  {}", response.status, case.what);

        let status_ok = match case.expect {
            Expect::Reaches => response.status == 200 && reached == 1,
            Expect::Refused(status) => response.status == status && reached == 0,
        };
        if case.expect == Expect::Reaches {
            valid += 1;
        }
        if !status_ok {
            failures.push(format!(
                "{}: expected {:?}, got {} (reached the workload {reached} times): {}",
                case.what,
                case.expect,
                response.status,
                response.text()
            ));
        }
        if case.expect != Expect::Reaches && (200..300).contains(&response.status) {
            failures.push(format!("{}: 2xx without a valid key", case.what));
        }
        if keys.iter().any(|k| thv_actors::testing::leaks(&shown, k)) {
            failures.push(format!("{}: the answer contains a key", case.what));
        }
        if case.presented.len() >= 4 && contains(shown.as_bytes(), &case.presented) {
            failures.push(format!(
                "{}: the answer repeats the presented value",
                case.what
            ));
        }
    }

    assert_eq!(
        fx.upstream.count() - baseline,
        valid,
        "the workload saw other requests than the valid ones"
    );
    let leaked = fx.leaked_log_lines();
    assert!(
        leaked.is_empty(),
        "serve's log contains a key (shown redacted):\n{}",
        leaked.join("\n")
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(started.elapsed() < Duration::from_secs(120));
}

/// A client that puts the key into the path (`/mcp;X-ToolHive-Auth=<key>`,
/// `/mcp/<key>`) is refused, but the refusal's audit line logs `path`, and
/// with it the key.
#[test]
fn key_sent_in_the_path_stays_out_of_the_log() {
    let fx = Fixture::start("secpath");
    let port = fx.port();
    for target in [
        format!("/mcp;X-ToolHive-Auth={}", fx.key),
        format!("/mcp/{}", fx.key),
    ] {
        let response = raw(port, &post_head(port, &target, &[]), INITIALIZE.as_bytes());
        assert_eq!(response.status, 401, "{target}");
    }
    assert_eq!(fx.upstream.count(), 0);

    let leaked = fx.leaked_log_lines();
    assert!(
        leaked.is_empty(),
        "serve's log contains a key (shown redacted):\n{}",
        leaked.join("\n")
    );
}

/// `POST http://evil.example/mcp` with `Host: 127.0.0.1:<port>`: in
/// absolute form the target's authority is the request's host and the
/// `Host` header is to be ignored (RFC 9112 3.2.2), so the guard should see
/// `evil.example` and refuse. It reads the header instead and lets the
/// request through to the workload (with the right key).
#[test]
fn absolute_form_target_to_another_host_is_refused() {
    let fx = Fixture::start("secabs");
    let port = fx.port();
    let head = format!(
        "POST http://evil.example/mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nX-ToolHive-Auth: {}",
        fx.key
    );
    let response = raw(port, head.as_bytes(), INITIALIZE.as_bytes());
    assert_eq!(response.status, 403, "{}", response.text());
    assert_eq!(fx.upstream.count(), 0, "the request reached the workload");
}

/// The whole answer as text: status line, headers, body.
fn shown(response: &Response) -> String {
    let mut text = String::new();
    for (n, v) in &response.headers {
        text.push_str(&format!("{n}: {v}\n"));
    }
    text.push_str(&response.text());
    text
}

/// `line` with every form of every key replaced by `<KEY>`.
fn redact(line: &str, keys: &[SharedKey]) -> String {
    let mut line = line.to_owned();
    for key in keys {
        for form in thv_actors::testing::encodings(key) {
            line = line.replace(&form, "<KEY>");
        }
    }
    line
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The cases, in the order they run. Statuses are what serve answers on
/// this stack (actix-web 4 over httparse); the comments say which layer
/// refuses.
fn table(port: u16, port_b: u16, key: &str, old: &str, key_b: &str) -> Vec<Case> {
    use Expect::{Reaches, Refused};

    let body = INITIALIZE.as_bytes().to_vec();
    let mut cases = Vec::new();
    let mut add = |what: &'static str, head: Vec<u8>, presented: &[u8], expect: Expect| {
        cases.push(Case {
            what,
            port,
            head,
            body: body.clone(),
            presented: presented.to_vec(),
            expect,
        });
    };
    let with = |h: &[u8]| post_head(port, "/mcp", &[h]);
    let good = header("X-ToolHive-Auth", key);

    // Contrast: the valid forms, which must reach the workload.
    add("valid key in X-ToolHive-Auth", with(&good), b"", Reaches);
    add(
        "valid key as Authorization: Bearer",
        with(&header("Authorization", &format!("Bearer {key}"))),
        b"",
        Reaches,
    );
    add(
        "valid key with scheme spelled `bearer`",
        with(&header("Authorization", &format!("bearer {key}"))),
        b"",
        Reaches,
    );
    // Header names are case-insensitive in HTTP: these are the same header,
    // and the right key in them is accepted.
    add(
        "lowercase x-toolhive-auth, right key (same header: accepted)",
        with(&header("x-toolhive-auth", key)),
        b"",
        Reaches,
    );
    add(
        "MiXeD-case X-tOOLhIVE-aUTH, right key (same header: accepted)",
        with(&header("X-tOOLhIVE-aUTH", key)),
        b"",
        Reaches,
    );
    add(
        "both header forms agreeing",
        post_head(
            port,
            "/mcp",
            &[&good, &header("Authorization", &format!("Bearer {key}"))],
        ),
        b"",
        Reaches,
    );
    // Optional whitespace around a field value is not part of the value
    // (RFC 9110 5.5): the HTTP layer strips it, so this is the key.
    add(
        "surrounding spaces and tabs (OWS, stripped by HTTP: accepted)",
        with(format!("X-ToolHive-Auth: \t {key} \t").as_bytes()),
        b"",
        Reaches,
    );

    // Credential problems: 401.
    add(
        "no key header",
        post_head(port, "/mcp", &[]),
        b"",
        Refused(401),
    );
    add("empty value", with(b"X-ToolHive-Auth: "), b"", Refused(401));
    add(
        "one character short",
        with(&header("X-ToolHive-Auth", &key[..42])),
        &key.as_bytes()[..42],
        Refused(401),
    );
    let long = format!("{key}A");
    add(
        "one character long",
        with(&header("X-ToolHive-Auth", &long)),
        long.as_bytes(),
        Refused(401),
    );
    let plus = format!("+{}", &key[1..]);
    add(
        "standard alphabet `+`",
        with(&header("X-ToolHive-Auth", &plus)),
        plus.as_bytes(),
        Refused(401),
    );
    let slash = format!("{}/", &key[..42]);
    add(
        "standard alphabet `/`",
        with(&header("X-ToolHive-Auth", &slash)),
        slash.as_bytes(),
        Refused(401),
    );
    let padded = format!("{key}=");
    add(
        "padding `=`",
        with(&header("X-ToolHive-Auth", &padded)),
        padded.as_bytes(),
        Refused(401),
    );
    let spaced = format!(" {}", &key[1..]);
    add(
        "leading space in place of the first character",
        with(format!("X-ToolHive-Auth:{spaced}").as_bytes()),
        spaced.trim().as_bytes(),
        Refused(401),
    );
    let inner_tab = format!("{}\t{}", &key[..20], &key[21..]);
    add(
        "tab inside the key",
        with(format!("X-ToolHive-Auth: {inner_tab}").as_bytes()),
        inner_tab.as_bytes(),
        Refused(401),
    );
    let inner_space = format!("{} {}", &key[..20], &key[21..]);
    add(
        "space inside the key",
        with(&header("X-ToolHive-Auth", &inner_space)),
        inner_space.as_bytes(),
        Refused(401),
    );
    let upper = key.to_ascii_uppercase();
    add(
        "the key upper-cased",
        with(&header("X-ToolHive-Auth", &upper)),
        upper.as_bytes(),
        Refused(401),
    );
    let non_canonical = non_canonical(key);
    add(
        "same bytes, non-canonical last character",
        with(&header("X-ToolHive-Auth", &non_canonical)),
        non_canonical.as_bytes(),
        Refused(401),
    );
    add(
        "valid key of another workload",
        with(&header("X-ToolHive-Auth", key_b)),
        b"",
        Refused(401),
    );
    add(
        "previous key after its 1 s overlap ended",
        with(&header("X-ToolHive-Auth", old)),
        b"",
        Refused(401),
    );
    let bad = SharedKey::generate().expose_encoded().to_string();
    let bad_h = header("X-ToolHive-Auth", &bad);
    add(
        "repeated header: good then bad",
        post_head(port, "/mcp", &[&good, &bad_h]),
        b"",
        Refused(401),
    );
    add(
        "repeated header: bad then good",
        post_head(port, "/mcp", &[&bad_h, &good]),
        b"",
        Refused(401),
    );
    add(
        "repeated header: good twice",
        post_head(port, "/mcp", &[&good, &good]),
        b"",
        Refused(401),
    );
    add(
        "one header, two keys comma-joined",
        with(&header("X-ToolHive-Auth", &format!("{key}, {key}"))),
        b"",
        Refused(401),
    );
    add(
        "good X-ToolHive-Auth, Bearer with another key",
        post_head(
            port,
            "/mcp",
            &[&good, &header("Authorization", &format!("Bearer {bad}"))],
        ),
        b"",
        Refused(401),
    );
    add(
        "good Bearer, X-ToolHive-Auth with another key",
        post_head(
            port,
            "/mcp",
            &[&bad_h, &header("Authorization", &format!("Bearer {key}"))],
        ),
        b"",
        Refused(401),
    );
    add(
        "two Authorization: Bearer headers, both good",
        post_head(
            port,
            "/mcp",
            &[
                &header("Authorization", &format!("Bearer {key}")),
                &header("Authorization", &format!("Bearer {key}")),
            ],
        ),
        b"",
        Refused(401),
    );
    add(
        "Bearer with a wrong key",
        with(&header("Authorization", &format!("Bearer {bad}"))),
        b"",
        Refused(401),
    );
    add(
        "Bearer with two spaces",
        with(&header("Authorization", &format!("Bearer  {key}"))),
        b"",
        Refused(401),
    );
    add(
        "Bearer without a token",
        with(b"Authorization: Bearer"),
        b"",
        Refused(401),
    );
    let basic = base64_standard(format!("user:{key}").as_bytes());
    add(
        "Basic scheme carrying the key as password",
        with(&header("Authorization", &format!("Basic {basic}"))),
        basic.as_bytes(),
        Refused(401),
    );
    add(
        "Authorization: the bare key, no scheme",
        with(&header("Authorization", key)),
        b"",
        Refused(401),
    );
    add(
        "the key in a Cookie",
        with(&header("Cookie", &format!("X-ToolHive-Auth={key}"))),
        b"",
        Refused(401),
    );
    let huge = "A".repeat(64 * 1024);
    add(
        "64 KiB header value (accepted by HTTP, malformed key: 401)",
        with(&header("X-ToolHive-Auth", &huge)),
        &huge.as_bytes()[..64],
        Refused(401),
    );
    let mut non_utf8 = b"X-ToolHive-Auth: ".to_vec();
    let mut raw_value = key.as_bytes().to_vec();
    raw_value[10] = 0xff;
    raw_value[11] = 0xfe;
    non_utf8.extend_from_slice(&raw_value);
    add(
        "non-UTF-8 bytes in the value",
        with(&non_utf8),
        &raw_value,
        Refused(401),
    );
    let mut nul = b"X-ToolHive-Auth: ".to_vec();
    nul.extend_from_slice(&key.as_bytes()[..20]);
    nul.push(0);
    nul.extend_from_slice(&key.as_bytes()[21..]);
    add(
        "NUL inside the value (HTTP layer: 400)",
        with(&nul),
        b"",
        Refused(400),
    );
    let mut ctl = b"X-ToolHive-Auth: ".to_vec();
    ctl.extend_from_slice(&key.as_bytes()[..42]);
    ctl.push(0x01);
    add(
        "control character 0x01 in the value (HTTP layer: 400)",
        with(&ctl),
        b"",
        Refused(400),
    );
    add(
        "obs-fold continuation line (HTTP layer: 400)",
        with(format!("X-ToolHive-Auth:\r\n {key}").as_bytes()),
        b"",
        Refused(400),
    );
    add(
        "whitespace before the colon (HTTP layer: 400)",
        with(format!("X-ToolHive-Auth : {key}").as_bytes()),
        b"",
        Refused(400),
    );
    add(
        "key in the query string ?key=",
        post_head(port, &format!("/mcp?key={key}"), &[]),
        b"",
        Refused(401),
    );
    add(
        "key in the query string ?X-ToolHive-Auth=",
        post_head(port, &format!("/mcp?X-ToolHive-Auth={key}"), &[]),
        b"",
        Refused(401),
    );
    cases.push(Case {
        what: "key in the JSON body",
        port,
        head: post_head(port, "/mcp", &[]),
        body: format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"initialize","X-ToolHive-Auth":"{key}","params":{{"key":"{key}"}}}}"#
        )
        .into_bytes(),
        presented: Vec::new(),
        expect: Refused(401),
    });
    cases.push(Case {
        what: "a's key at b's port",
        port: port_b,
        head: post_head(port_b, "/mcp", &[&good]),
        body: body.clone(),
        presented: Vec::new(),
        expect: Refused(401),
    });

    // Guard problems: 403, even with the right key.
    let host = |h: &str| {
        let mut head = format!("POST /mcp HTTP/1.1\r\nHost: {h}\r\nContent-Type: application/json")
            .into_bytes();
        head.extend_from_slice(b"\r\n");
        head.extend_from_slice(&good);
        head
    };
    let mut add_guard = |what: &'static str, head: Vec<u8>, expect: Expect| {
        cases.push(Case {
            what,
            port,
            head,
            body: body.clone(),
            presented: Vec::new(),
            expect,
        });
    };
    add_guard(
        "Host evil.example, right key",
        host("evil.example"),
        Refused(403),
    );
    add_guard(
        "Host 127.0.0.1.nip.io, right key",
        host(&format!("127.0.0.1.nip.io:{port}")),
        Refused(403),
    );
    add_guard(
        "Host localhost.evil.example, right key",
        host("localhost.evil.example"),
        Refused(403),
    );
    add_guard(
        "Host 0.0.0.0, right key",
        host(&format!("0.0.0.0:{port}")),
        Refused(403),
    );
    add_guard("empty Host, right key", host(""), Refused(403));
    add_guard(
        "two Host headers (loopback, evil), right key (HTTP layer: 400)",
        post_head(port, "/mcp", &[b"Host: evil.example", &good]),
        Refused(400),
    );
    let origin = |o: &str| post_head(port, "/mcp", &[&good, &header("Origin", o)]);
    add_guard(
        "foreign Origin http://evil.example, right key",
        origin("http://evil.example"),
        Refused(403),
    );
    add_guard("Origin null, right key", origin("null"), Refused(403));
    add_guard(
        "Origin of the right host, wrong port, right key",
        origin(&format!("http://127.0.0.1:{}", port.wrapping_add(1))),
        Refused(403),
    );
    add_guard(
        "https Origin of another host, right key",
        origin(&format!("https://evil.example:{port}")),
        Refused(403),
    );
    add_guard(
        "two Origin headers (own, evil), right key",
        post_head(
            port,
            "/mcp",
            &[
                &good,
                &header("Origin", &format!("http://127.0.0.1:{port}")),
                b"Origin: http://evil.example",
            ],
        ),
        Refused(403),
    );
    let mut http10 = b"POST /mcp HTTP/1.0\r\nContent-Type: application/json\r\n".to_vec();
    http10.extend_from_slice(&good);
    add_guard("HTTP/1.0 without Host, right key", http10, Refused(403));
    let mut absolute =
        format!("POST http://evil.example/mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n").into_bytes();
    absolute.extend_from_slice(&good);
    add_guard(
        "absolute-form target to another host, loopback Host, right key",
        absolute,
        Refused(403),
    );
    add_guard(
        "absolute-form target to another host, no key (guard first)",
        format!("POST http://evil.example/mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}").into_bytes(),
        Refused(403),
    );

    // Paths, methods and sizes, without a key.
    let nokey = |method: &str, target: &str| {
        format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}").into_bytes()
    };
    add_guard(
        "path traversal /../mcp",
        nokey("POST", "/../mcp"),
        Refused(401),
    );
    add_guard(
        "path traversal /%2e%2e/mcp",
        nokey("POST", "/%2e%2e/mcp"),
        Refused(401),
    );
    add_guard(
        "encoded slash /%2fmcp",
        nokey("POST", "/%2fmcp"),
        Refused(401),
    );
    add_guard("double slash //mcp", nokey("POST", "//mcp"), Refused(401));
    add_guard("unknown path /admin", nokey("POST", "/admin"), Refused(401));
    add_guard(
        "very long URL, 100 KiB (HTTP layer: 400)",
        nokey("POST", &format!("/mcp?{}", "a".repeat(100 * 1024))),
        Refused(400),
    );
    add_guard(
        "OPTIONS without key",
        nokey("OPTIONS", "/mcp"),
        Refused(401),
    );
    add_guard("TRACE without key", nokey("TRACE", "/mcp"), Refused(401));
    add_guard("GET /mcp without key", nokey("GET", "/mcp"), Refused(401));
    add_guard(
        "DELETE /mcp without key",
        nokey("DELETE", "/mcp"),
        Refused(401),
    );
    add_guard(
        "Transfer-Encoding and Content-Length together (HTTP layer: 400)",
        format!("POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nTransfer-Encoding: chunked")
            .into_bytes(),
        Refused(400),
    );
    add_guard(
        "X-Forwarded-For / X-Real-IP claiming loopback, no key",
        format!(
            "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Forwarded-For: 127.0.0.1\r\nX-Real-IP: 127.0.0.1"
        )
        .into_bytes(),
        Refused(401),
    );
    cases
}

/// `key` with its last character changed so that the unused low bits are
/// set: the same 32 bytes, a second spelling.
fn non_canonical(key: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let last = key.as_bytes()[42];
    let index = ALPHABET.iter().position(|&c| c == last).unwrap();
    let spelled = ALPHABET[index | 1] as char;
    format!("{}{spelled}", &key[..42])
}

fn base64_standard(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `Host: [::1].evil.example`: `is_loopback_host` keeps only what lies up
/// to the first `]` and drops the rest without looking at it, so any text
/// after a bracketed loopback address passes the guard. Browsers only
/// bracket IPv6 literals, so a rebinding page cannot send this; a local
/// client can, and with the key it reaches the workload. Found by the
/// `auth_headers` fuzz target (input `[::1]:8811s://[::1]127.1/`).
#[test]
fn host_with_text_after_the_ipv6_bracket_is_refused() {
    for host in [
        "[::1].evil.example",
        "[::1]evil.example:80",
        "[::1]:8811s://x/",
    ] {
        assert!(!thv_server::guard::is_loopback_host(host), "{host}");
    }

    let fx = Fixture::start("secbracket");
    let port = fx.port();
    let head = format!(
        "POST /mcp HTTP/1.1\r\nHost: [::1].evil.example\r\nContent-Type: application/json\r\nX-ToolHive-Auth: {}",
        fx.key
    );
    let response = raw(port, head.as_bytes(), INITIALIZE.as_bytes());
    assert_eq!(response.status, 403, "{}", response.text());
    assert_eq!(fx.upstream.count(), 0, "the request reached the workload");
}
