//! A dudect-style timing-leak check of shared-key validation.
//!
//! Two classes of wrong key are presented: one that differs from the right
//! key in its FIRST byte, one that differs in its LAST byte. A comparison
//! that stops at the first differing byte is fast for the first class and
//! slow for the second. Classes are interleaved at random, each sample is
//! timed on its own, samples above a percentile are cropped (dudect's
//! defence against interrupts and preemption), and Welch's t-statistic of
//! the two classes is printed for each crop. |t| < 4.5 at every crop means
//! no leak was detected.
//!
//! Two paths are measured:
//!
//! - `direct`: header lookup in an actix `HeaderMap`, `SharedKey::parse_bytes`
//!   and `KeySet::accepts`: the work the middleware does, without actors.
//! - `middleware`: a request through `SharedKeyAuth` (actix-web's test
//!   service) asking a real Validator, whose KeyStore uses the real
//!   keychain (`THV_ACTOR_KEYSTORE`, default `auto`).
//!
//! Run: `cargo run --release --manifest-path bench/timing/Cargo.toml --
//! [direct|middleware|both] [samples per class]`; with `CONTROL=1` both
//! classes present the same key, to show the harness's noise floor.

use std::time::{Duration, SystemTime};

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::{test, web, App, HttpResponse};
use thv_actors::{
    Backend, BackendChoice, CreateKey, DeleteKeys, GetKeys, KeySet, KeyStore, Preload, SharedKey,
    Validator, ValidatorConfig, WorkloadName,
};
use thv_server::auth::SharedKeyAuth;

/// The cropping percentiles, as dudect uses them.
const CROPS: [f64; 5] = [1.0, 0.99, 0.95, 0.90, 0.50];

/// |t| above this is a leak, by dudect's convention.
const THRESHOLD: f64 = 4.5;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let which = args.get(1).map(String::as_str).unwrap_or("both");
    let samples: usize = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(200_000);

    let mut leaked = false;
    if which == "direct" || which == "both" {
        leaked |= report("direct", &direct(samples));
    }
    if which == "middleware" || which == "both" {
        leaked |= report("middleware", &middleware(samples));
    }
    std::process::exit(if leaked { 1 } else { 0 });
}

/// The right key, and wrong keys differing in the first and the last byte.
///
/// With `CONTROL` set, both classes get the first-byte key (a separate copy
/// of it): the t values then show the harness's own noise floor.
fn keys(right: &SharedKey) -> [String; 2] {
    let mut first = *right.expose_bytes();
    first[0] ^= 0x01;
    let mut last = *right.expose_bytes();
    last[31] ^= 0x80;
    if std::env::var_os("CONTROL").is_some() {
        last = first;
    }
    [first, last].map(|bytes| {
        let encoded = encode(&bytes);
        assert_eq!(encoded.len(), 43);
        encoded
    })
}

/// base64url without padding, by hand so the bench needs no base64 crate.
fn encode(bytes: &[u8; 32]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    let mut bits = 0u32;
    let mut count = 0;
    for &b in bytes {
        bits = (bits << 8) | u32::from(b);
        count += 8;
        while count >= 6 {
            count -= 6;
            out.push(ALPHABET[((bits >> count) & 63) as usize] as char);
        }
    }
    if count > 0 {
        out.push(ALPHABET[((bits << (6 - count)) & 63) as usize] as char);
    }
    out
}

/// The validation work without actors: header lookup, decoding, lookup in
/// the key set, constant-time comparison.
fn direct(samples: usize) -> [Vec<u64>; 2] {
    let right = SharedKey::generate();
    let set = KeySet {
        current: right.clone(),
        previous: Vec::new(),
    };
    let header = HeaderName::from_static("x-toolhive-auth");
    let texts = keys(&right);
    let now = SystemTime::now();

    // Each sample's value is put into the same map outside the timed part,
    // so both classes are read from freshly allocated header values and
    // differ only in their bytes.
    let mut map = HeaderMap::new();
    let mut rng = XorShift::new();
    let mut timings = [Vec::with_capacity(samples), Vec::with_capacity(samples)];
    let mut i = 0;
    while timings[0].len() < samples || timings[1].len() < samples {
        let class = rng.class();
        map.insert(
            header.clone(),
            HeaderValue::from_str(&texts[class]).unwrap(),
        );
        let start = ticks();
        let accepted = run_direct(&map, &header, &set, now);
        let took = ticks() - start;
        assert!(!accepted);
        i += 1;
        if i > 10_000 {
            timings[class].push(took);
        }
    }
    timings
}

#[inline(never)]
fn run_direct(map: &HeaderMap, header: &HeaderName, set: &KeySet, now: SystemTime) -> bool {
    let value = std::hint::black_box(map).get(header).unwrap();
    match SharedKey::parse_bytes(value.as_bytes()) {
        Ok(presented) => std::hint::black_box(set.accepts(&presented, now)),
        Err(_) => false,
    }
}

/// Requests through `SharedKeyAuth` with a real Validator and KeyStore.
fn middleware(samples: usize) -> [Vec<u64>; 2] {
    actix_rt::System::new().block_on(async move {
        // Set up: a key in the real keychain, a Validator that does not
        // re-read it during the run.
        let choice: BackendChoice = std::env::var("THV_ACTOR_KEYSTORE")
            .unwrap_or_else(|_| "auto".into())
            .parse()
            .expect("a keystore name");
        let backend = Backend::open(choice).expect("a reachable keystore");
        let keystore = KeyStore::start(backend).expect("a lock directory");
        let workload: WorkloadName = format!("timing-bench-{}", std::process::id())
            .parse()
            .unwrap();
        let created = keystore
            .send(CreateKey {
                workload: workload.clone(),
            })
            .await;
        created.unwrap().expect("a key is created");
        let set = keystore
            .send(GetKeys {
                workload: workload.clone(),
            })
            .await
            .unwrap()
            .expect("the key is read");
        let config = ValidatorConfig {
            refresh: Duration::from_secs(3600),
            ..ValidatorConfig::default()
        };
        let validator = Validator::start(keystore.clone(), config);
        validator
            .send(Preload {
                workload: workload.clone(),
            })
            .await
            .unwrap();

        let app = test::init_service(
            App::new()
                .wrap(SharedKeyAuth::new(workload.clone(), validator))
                .route("/mcp", web::post().to(HttpResponse::Ok)),
        )
        .await;
        let texts = keys(&set.current);

        // Measure.
        let mut rng = XorShift::new();
        let mut timings = [Vec::with_capacity(samples), Vec::with_capacity(samples)];
        let mut i = 0;
        while timings[0].len() < samples || timings[1].len() < samples {
            let class = rng.class();
            let req = test::TestRequest::post()
                .uri("/mcp")
                .insert_header(("x-toolhive-auth", texts[class].as_str()))
                .to_request();
            let start = ticks();
            let response = test::call_service(&app, req).await;
            let took = ticks() - start;
            assert_eq!(response.status().as_u16(), 401);
            i += 1;
            if i > 10_000 {
                timings[class].push(took);
            }
        }

        let deleted = keystore.send(DeleteKeys { workload }).await;
        deleted.unwrap().expect("the key is deleted");
        timings
    })
}

/// Prints t for each crop; true when any |t| reaches the threshold.
fn report(path: &str, timings: &[Vec<u64>; 2]) -> bool {
    let mut all: Vec<u64> = timings.iter().flatten().copied().collect();
    all.sort_unstable();
    println!(
        "{path}: {} + {} samples ({} per sample, median {}, class medians {} / {})",
        timings[0].len(),
        timings[1].len(),
        UNIT,
        all[all.len() / 2],
        median(&timings[0]),
        median(&timings[1]),
    );
    let mut leaked = false;
    for crop in CROPS {
        let limit = all[((all.len() - 1) as f64 * crop) as usize];
        let [a, b] = timings.clone().map(|t| {
            t.into_iter()
                .filter(|x| *x <= limit)
                .map(|x| x as f64)
                .collect::<Vec<f64>>()
        });
        let t = welch_t(&a, &b);
        let verdict = if t.abs() < THRESHOLD {
            "no leak detected"
        } else {
            "LEAK?"
        };
        println!(
            "  crop {:>5.1}% (<= {limit:>6}): n = {:>6} / {:>6}  t = {t:>7.3}  {verdict}",
            crop * 100.0,
            a.len(),
            b.len()
        );
        leaked |= t.abs() >= THRESHOLD;
    }
    leaked
}

fn median(v: &[u64]) -> u64 {
    let mut v = v.to_vec();
    v.sort_unstable();
    v[v.len() / 2]
}

/// Welch's t-statistic of two samples.
fn welch_t(a: &[f64], b: &[f64]) -> f64 {
    let stats = |x: &[f64]| {
        let n = x.len() as f64;
        let mean = x.iter().sum::<f64>() / n;
        let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (n, mean, var)
    };
    let (na, ma, va) = stats(a);
    let (nb, mb, vb) = stats(b);
    (ma - mb) / (va / na + vb / nb).sqrt()
}

#[cfg(target_arch = "x86_64")]
const UNIT: &str = "TSC ticks";
#[cfg(not(target_arch = "x86_64"))]
const UNIT: &str = "ns";

#[cfg(target_arch = "x86_64")]
fn ticks() -> u64 {
    // SAFETY: rdtsc reads a counter; it touches no memory.
    unsafe {
        std::arch::x86_64::_mm_lfence();
        let t = std::arch::x86_64::_rdtsc();
        std::arch::x86_64::_mm_lfence();
        t
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn ticks() -> u64 {
    use std::sync::OnceLock;
    static START: OnceLock<std::time::Instant> = OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_nanos() as u64
}

/// A small PRNG for the class sequence; it need not be cryptographic, only
/// unrelated to the timings.
struct XorShift(u64);

impl XorShift {
    fn new() -> XorShift {
        let seed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        XorShift(seed | 1)
    }

    fn class(&mut self) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 32) as usize & 1
    }
}
