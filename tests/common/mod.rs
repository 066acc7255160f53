//! Shared test helpers: fixture paths that fail loudly in CI.
#![allow(dead_code)]

pub mod hub_server;

use std::path::PathBuf;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `../shared/<rel>`, the read-only fixtures beside the repository.
pub fn shared(rel: &str) -> PathBuf {
    require(repo().join("..").join("shared").join(rel))
}

/// The all-MiniLM-L6-v2 folder fetched by `scripts/fetch-fixtures.sh` (or `$CROSSENC_MINILM`).
pub fn minilm() -> Option<PathBuf> {
    let p = std::env::var_os("CROSSENC_MINILM")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/fixtures/all-MiniLM-L6-v2"));
    optional(p)
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// A fixture every test run has: missing is always a failure.
pub fn require(p: PathBuf) -> PathBuf {
    assert!(p.exists(), "missing test fixture {}", p.display());
    p
}

/// A fixture that a script fetches: missing fails in CI, and is reported (not hidden) elsewhere.
pub fn optional(p: PathBuf) -> Option<PathBuf> {
    if p.exists() {
        return Some(p);
    }
    assert!(
        !in_ci(),
        "missing test fixture {} (run scripts/fetch-fixtures.sh)",
        p.display()
    );
    eprintln!(
        "SKIPPED: fixture {} not found; run scripts/fetch-fixtures.sh",
        p.display()
    );
    None
}

pub fn read_json(p: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

pub fn f32s(v: &serde_json::Value) -> Vec<f32> {
    match v {
        serde_json::Value::Array(a) => a.iter().flat_map(f32s).collect(),
        serde_json::Value::Number(n) => vec![n.as_f64().unwrap() as f32],
        other => panic!("not a number array: {other}"),
    }
}

pub fn u32s(v: &serde_json::Value) -> Vec<u32> {
    f32s(v).into_iter().map(|x| x as u32).collect()
}
