//! Shared test helpers: fixture paths that fail loudly in CI.
#![allow(dead_code)]

pub mod hub_server;

use std::path::PathBuf;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `<rel>` in the repository: golden outputs under `tests/fixtures/golden` (a copy of the
/// developers' `../shared/golden`, which the tests do not read), STS-B under `data/stsb`.
pub fn fixture(rel: &str) -> PathBuf {
    require(repo().join(rel))
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

/// Runs the `crossenc` binary offline (no hub access unless a test sets its own environment).
pub fn crossenc(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_crossenc"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap()
}

/// Standard output of a run that must have succeeded.
pub fn stdout(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "crossenc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// Asserts a clean failure: non-zero exit, no panic, and a message containing each of `needles`.
pub fn fails_with(out: &std::process::Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, got success");
    assert!(!err.contains("panicked"), "panicked: {err}");
    for n in needles {
        assert!(err.contains(n), "error lacks {n:?}: {err}");
    }
}

/// The `score` of each JSON line that `crossenc predict` prints.
pub fn score_lines(text: &str) -> Vec<f32> {
    text.lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["score"]
                .as_f64()
                .unwrap() as f32
        })
        .collect()
}

/// Writes a golden file's pairs as JSONL (`first`, `second`, and a numeric `id` to skip).
pub fn write_pairs_jsonl(path: &std::path::Path, g: &serde_json::Value) {
    let lines: Vec<String> = g["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| serde_json::json!({"id": 1, "first": p[0], "second": p[1]}).to_string())
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// The text pairs of a golden file.
pub fn golden_pairs(g: &serde_json::Value) -> Vec<(String, String)> {
    g["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_str().unwrap().into(), p[1].as_str().unwrap().into()))
        .collect()
}

/// A JSON array of strings.
pub fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect()
}

/// The URL a `crossenc serve` child prints first (`listening on URL`); on anything else, kills
/// it and fails with what it printed.
pub fn listening_url(child: &mut std::process::Child) -> String {
    use std::io::{BufRead, BufReader, Read};
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    match line.trim().strip_prefix("listening on ") {
        Some(url) => url.to_string(),
        None => {
            let _ = child.kill();
            let mut err = String::new();
            if let Some(stderr) = child.stderr.as_mut() {
                let _ = stderr.read_to_string(&mut err);
            }
            panic!("unexpected first line {line:?}: {err}")
        }
    }
}

/// Runs crossenc and samples its peak resident memory (Linux `VmHWM`) in MB until it exits.
pub fn peak_rss_of(args: &[&str]) -> (std::process::Output, f64) {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_crossenc"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = format!("/proc/{}/status", child.id());
    let sampler = std::thread::spawn(move || {
        let mut peak = 0f64;
        while let Ok(s) = std::fs::read_to_string(&status) {
            if let Some(kb) = s
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            {
                peak = peak.max(kb / 1024.0);
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        peak
    });
    let out = child.wait_with_output().unwrap();
    let peak = sampler.join().unwrap();
    // A process gone before the first sample would pass any bound on its memory.
    assert!(peak > 0.0, "no memory sample of crossenc {args:?}");
    (out, peak)
}
