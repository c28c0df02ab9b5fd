//! `docs/openapi.yaml` and the code agree: the spec names exactly the
//! (method, path) pairs the router accepts, every one of them is answered by
//! its handler, and paths outside the spec are 404.
//!
//! The spec is read without a YAML parser, by a line scan of its `paths:`
//! section. It relies on this layout, which `docs/openapi.yaml` keeps (and
//! the scan panics, naming the line, when a line in `paths:` breaks it):
//! - `paths:` is a line of its own at column 0; the section ends at the next
//!   line that starts at column 0 and is neither blank nor a `#` comment;
//! - block style only, indented with spaces (no tabs, no flow mappings such
//!   as `/v1/x: {get: …}`, no anchors, aliases or `<<` merges);
//! - a path is a key at exactly 2 spaces, starting with `/` (optionally in
//!   double quotes), with nothing after its `:`;
//! - a path's keys are at exactly 4 spaces; those named by a lowercase HTTP
//!   method are its operations, with nothing after the `:`; the others
//!   (`description`, `parameters`, `summary`, …) are skipped;
//! - an operation's `responses:` is at exactly 6 spaces and its status
//!   codes are keys at exactly 8 spaces, in double quotes (`"200":`);
//! - every operation has an `operationId` at exactly 6 spaces (used to check
//!   that the scan found every operation).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use herald_broker::MemoryBroker;
use herald_common::config::Config;
use http::header::{ALLOW, AUTHORIZATION};
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use serde_json::Value;

use crate::router::{self, Endpoint};
use crate::{Api, ApiSettings};

const SPEC: &str = include_str!("../../docs/openapi.yaml");
/// The router's source: every endpoint's pattern is a string literal there.
const ROUTER: &str = include_str!("router.rs");

/// Methods probed against the router; the spec may use any of them.
const METHODS: [Method; 9] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::CONNECT,
    Method::OPTIONS,
    Method::TRACE,
    Method::PATCH,
];

const KEY: &str = "openapi-test-key";

/// One operation of the spec: its documented response status codes.
type Operations = BTreeMap<(String, String), BTreeSet<u16>>;

fn indent(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

/// The key of a `key:` line with nothing after the colon, unquoted.
fn bare_key(text: &str) -> Option<&str> {
    let key = text.strip_suffix(':')?;
    Some(
        key.strip_prefix('"')
            .and_then(|k| k.strip_suffix('"'))
            .unwrap_or(key),
    )
}

/// The spec's operations, keyed by (upper-case method, path pattern).
fn spec_operations() -> Operations {
    let mut ops = Operations::new();
    let mut in_paths = false;
    let mut path: Option<String> = None;
    let mut op: Option<(String, String)> = None;
    let mut in_responses = false;
    let mut operation_ids = 0;
    for (n, line) in SPEC.lines().enumerate() {
        let n = n + 1;
        let text = line.trim();
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        assert!(!line.contains('\t'), "openapi.yaml:{n}: tab in indentation");
        let depth = indent(line);
        if depth == 0 {
            in_paths = line == "paths:";
            continue;
        }
        if !in_paths {
            continue;
        }
        match depth {
            2 => {
                let key = bare_key(text)
                    .filter(|k| k.starts_with('/'))
                    .unwrap_or_else(|| panic!("openapi.yaml:{n}: expected a path key, found {text:?}"));
                assert!(!key.contains(' '), "openapi.yaml:{n}: {key:?}");
                path = Some(key.to_owned());
                op = None;
                in_responses = false;
            }
            4 => {
                let path = path
                    .as_ref()
                    .unwrap_or_else(|| panic!("openapi.yaml:{n}: key outside a path"));
                let (name, rest) = text
                    .split_once(':')
                    .unwrap_or_else(|| panic!("openapi.yaml:{n}: expected a key, found {text:?}"));
                op = None;
                in_responses = false;
                let method = name.to_ascii_uppercase();
                if name == name.to_ascii_lowercase() && METHODS.iter().any(|m| m.as_str() == method) {
                    assert!(
                        rest.trim().is_empty(),
                        "openapi.yaml:{n}: operation {name} must be a block mapping"
                    );
                    let key = (method, path.clone());
                    assert!(!ops.contains_key(&key), "openapi.yaml:{n}: {key:?} twice");
                    ops.insert(key.clone(), BTreeSet::new());
                    op = Some(key);
                }
            }
            6 if op.is_some() => {
                in_responses = text == "responses:";
                if text.starts_with("operationId:") {
                    operation_ids += 1;
                }
            }
            8 if in_responses => {
                let code = bare_key(text)
                    .and_then(|k| k.parse::<u16>().ok())
                    .unwrap_or_else(|| panic!("openapi.yaml:{n}: expected a status code, found {text:?}"));
                if let Some(key) = &op {
                    ops.get_mut(key).map(|codes| codes.insert(code));
                }
            }
            _ => {}
        }
    }
    assert!(
        !ops.is_empty(),
        "no operation found under `paths:` in openapi.yaml"
    );
    assert_eq!(
        operation_ids,
        ops.len(),
        "operationId count differs from the operations found: the scan's layout assumptions no longer hold"
    );
    for ((method, path), codes) in &ops {
        assert!(!codes.is_empty(), "{method} {path}: no responses found");
    }
    ops
}

/// A concrete path for a pattern: every `{param}` replaced by a valid value.
fn sample_path(pattern: &str) -> String {
    pattern
        .split('/')
        .map(|segment| match segment {
            "{room}" => "openapi:room",
            "{user}" => "alice",
            "{id}" => "1",
            s if s.starts_with('{') => panic!("no sample value for {s} in {pattern}"),
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The endpoint a pattern names, if the router resolves its sample path
/// back to that same pattern.
fn endpoint_of(pattern: &str) -> Option<Endpoint> {
    router::resolve(&sample_path(pattern))
        .map(|(endpoint, _)| endpoint)
        .filter(|endpoint| endpoint.pattern() == pattern)
}

/// Every route pattern of the router: the string literals of router.rs
/// that are the pattern of the endpoint they resolve to. `Endpoint::pattern`
/// is an exhaustive match of literals, so a new endpoint shows up here.
fn router_patterns() -> BTreeSet<&'static str> {
    ROUTER
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|literal| literal.starts_with("/v1/") && endpoint_of(literal).is_some())
        .collect()
}

/// (method, pattern) for every method the router accepts on `patterns`.
fn accepted(patterns: impl IntoIterator<Item = String>) -> BTreeSet<(String, String)> {
    let mut set = BTreeSet::new();
    for pattern in patterns {
        let endpoint = endpoint_of(&pattern).unwrap_or_else(|| {
            panic!(
                "the router does not resolve {} to {pattern}",
                sample_path(&pattern)
            )
        });
        for method in &METHODS {
            if endpoint.allows(method) {
                set.insert((method.as_str().to_owned(), pattern.clone()));
            }
        }
    }
    set
}

#[test]
fn spec_paths_and_methods_are_the_routers() {
    let spec: BTreeSet<(String, String)> = spec_operations().into_keys().collect();
    for (_, path) in &spec {
        assert!(path.starts_with("/v1/"), "{path} is not a /v1 path");
    }
    let router: BTreeSet<String> = router_patterns().into_iter().map(str::to_owned).collect();
    assert!(router.len() >= 10, "the scan of router.rs found only {router:?}");
    let spec_paths: BTreeSet<String> = spec.iter().map(|(_, p)| p.clone()).collect();
    assert_eq!(
        spec_paths,
        router,
        "paths in the spec but not the router: {:?}; in the router but not the spec: {:?}",
        spec_paths.difference(&router).collect::<Vec<_>>(),
        router.difference(&spec_paths).collect::<Vec<_>>()
    );
    let code = accepted(router);
    assert_eq!(
        spec,
        code,
        "operations in the spec but not accepted: {:?}; accepted but not in the spec: {:?}",
        spec.difference(&code).collect::<Vec<_>>(),
        code.difference(&spec).collect::<Vec<_>>()
    );
}

fn api() -> Api {
    // From the default configuration, so that new settings need no change here.
    let settings = ApiSettings {
        keys: vec![KEY.to_owned()],
        store: None,
        ..ApiSettings::from_config(&Config::default())
    };
    Api::new(settings, Arc::new(MemoryBroker::new()))
}

struct Answer {
    status: u16,
    allow: Option<String>,
    json: Value,
}

async fn send(api: &Api, method: Method, path: &str, body: &str) -> Answer {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(AUTHORIZATION, format!("Bearer {KEY}"))
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let response = api.handle(request).await;
    let status = response.status().as_u16();
    let allow = response
        .headers()
        .get(ALLOW)
        .map(|v| v.to_str().unwrap().to_owned());
    let raw = response.into_body().collect().await.unwrap().to_bytes();
    let json = if raw.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&raw).unwrap()
    };
    Answer { status, allow, json }
}

/// A request body that passes validation, and the status it should get
/// (503 where the endpoint needs the store this test does not configure).
fn sample_request(method: &str, pattern: &str) -> Option<(&'static str, u16)> {
    Some(match (method, pattern) {
        ("POST", "/v1/publish") => (r#"{"room":"openapi:room","event":"e","data":{"n":1}}"#, 200),
        ("POST", "/v1/broadcast") => (r#"{"event":"e","data":null}"#, 200),
        ("GET", "/v1/rooms/{room}/history") => ("", 200),
        ("GET", "/v1/rooms/{room}/presence") => ("", 200),
        ("POST", "/v1/rooms/{room}/unsubscribe") => (r#"{"user":"alice"}"#, 200),
        ("POST", "/v1/users/{user}/disconnect") => (r#"{"reason":"test"}"#, 200),
        ("GET", "/v1/users/{user}/notifications") => ("", 503),
        ("POST", "/v1/users/{user}/notifications") => (r#"{"event":"e","data":1}"#, 503),
        ("POST", "/v1/users/{user}/notifications/{id}/read") => ("", 503),
        ("PUT" | "DELETE", "/v1/grants") => (r#"{"subject":"user:alice","pattern":"openapi:*"}"#, 503),
        ("GET", "/v1/stats") => ("", 200),
        _ => return None,
    })
}

#[tokio::test]
async fn every_spec_operation_reaches_its_handler() {
    let api = api();
    for ((method, pattern), documented) in spec_operations() {
        let path = sample_path(&pattern);
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        let Some((body, expected)) = sample_request(&method, &pattern) else {
            // An operation this test has no sample for yet: its handler must
            // at least be reached. Add a sample to check the answer too.
            let a = send(&api, m, &path, "{}").await;
            assert!(
                ![404, 405].contains(&a.status),
                "{method} {path}: {} {}",
                a.status,
                a.json
            );
            continue;
        };
        let a = send(&api, m, &path, body).await;
        assert_eq!(a.status, expected, "{method} {path}: {}", a.json);
        if expected == 503 {
            assert_eq!(a.json["error"]["code"], "unavailable", "{method} {path}");
        }
        assert!(
            documented.contains(&a.status),
            "{method} {pattern} answered {}, which the spec does not document ({documented:?})",
            a.status
        );
    }
}

#[tokio::test]
async fn other_methods_on_spec_paths_are_405_with_the_spec_methods() {
    let api = api();
    let mut by_path: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (method, path) in spec_operations().into_keys() {
        by_path.entry(path).or_default().insert(method);
    }
    for (pattern, methods) in by_path {
        let path = sample_path(&pattern);
        for method in METHODS.iter().filter(|m| !methods.contains(m.as_str())) {
            let a = send(&api, method.clone(), &path, "").await;
            assert_eq!(a.status, 405, "{method} {path}");
            assert_eq!(a.json["error"]["code"], "bad_request", "{method} {path}");
            let allow: BTreeSet<String> = a
                .allow
                .unwrap_or_else(|| panic!("{method} {path}: no Allow header"))
                .split(", ")
                .map(str::to_owned)
                .collect();
            assert_eq!(allow, methods, "{method} {path}: Allow");
        }
    }
}

#[tokio::test]
async fn paths_outside_the_spec_are_not_found() {
    let api = api();
    let spec_paths: BTreeSet<String> = spec_operations().into_keys().map(|(_, p)| p).collect();
    for path in [
        "/v1",
        "/v1/",
        "/v1/nope",
        "/v1/publish/",
        "/v1/rooms/x",
        "/v1/rooms/x/other",
        "/v1/rooms/x/history/extra",
        "/v1/users/alice",
        "/v1/users/alice/notifications/1",
        "/v1/grants/x",
        "/v1/stats/x",
        "/v2/publish",
    ] {
        assert!(!spec_paths.contains(path));
        for method in [Method::GET, Method::POST] {
            let a = send(&api, method.clone(), path, "").await;
            assert_eq!(a.status, 404, "{method} {path}: {}", a.json);
            assert_eq!(a.json["error"]["code"], "not_found", "{method} {path}");
        }
    }
}

#[test]
fn the_scan_reads_a_known_operation() {
    let ops = spec_operations();
    let codes = &ops[&(
        "POST".to_owned(),
        "/v1/users/{user}/notifications/{id}/read".to_owned(),
    )];
    assert_eq!(
        codes.iter().copied().collect::<Vec<_>>(),
        [204, 400, 401, 403, 404, 429, 503]
    );
    assert!(ops.contains_key(&("DELETE".to_owned(), "/v1/grants".to_owned())));
}
