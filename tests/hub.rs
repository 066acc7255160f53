//! Hub ids through the HF cache, against a local server in the hub's URL layout.

mod common;

use common::hub_server;
use common::*;
use std::process::Command;

fn predict(
    hf_home: &std::path::Path,
    endpoint: &str,
    offline: bool,
    input: &std::path::Path,
) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_crossenc"));
    cmd.args(["predict", "--model", "crossenc-test/tiny-bert", "--input"])
        .arg(input)
        .env("HF_HOME", hf_home)
        .env("HF_ENDPOINT", endpoint)
        .env_remove("HF_HUB_OFFLINE");
    if offline {
        cmd.env("HF_HUB_OFFLINE", "1");
    }
    cmd.output().unwrap()
}

#[test]
fn hub_id_downloads_into_cache_then_works_offline() {
    let golden_dir = fixture("tests/fixtures/golden/tiny-bert");
    let g = read_json(&golden_dir.join("golden.json"));
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("pairs.jsonl");
    write_pairs_jsonl(&input, &g);
    let want = f32s(&g["predict_scores"]);

    let home = tmp.path().join("hf-home");
    let server = hub_server::serve(vec![("crossenc-test/tiny-bert".into(), golden_dir.clone())]);
    let got = score_lines(&stdout(&predict(&home, &server.endpoint, false, &input)));
    assert!(max_abs_diff(&got, &want) < 1e-4);
    // The standard cache layout under HF_HOME/hub.
    let snapshot = home
        .join("hub/models--crossenc-test--tiny-bert/snapshots")
        .join(hub_server::COMMIT)
        .join("model.safetensors");
    assert!(snapshot.exists(), "{} missing", snapshot.display());
    let endpoint = server.endpoint.clone();
    drop(server);

    // Warm cache, server gone, offline: still scores the same.
    let got = score_lines(&stdout(&predict(&home, &endpoint, true, &input)));
    assert!(max_abs_diff(&got, &want) < 1e-4);

    // Cold cache, offline: a clear error and a non-zero exit.
    let out = predict(&tmp.path().join("cold"), &endpoint, true, &input);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("HF_HUB_OFFLINE") && err.contains("not in the HF cache"),
        "{err}"
    );
}

#[test]
fn unknown_hub_id_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("pairs.jsonl");
    std::fs::write(&input, "{\"a\": \"x\", \"b\": \"y\"}\n").unwrap();
    let server = hub_server::serve(vec![]);
    let out = predict(tmp.path(), &server.endpoint, false, &input);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("config.json") && err.contains("does not exist"),
        "{err}"
    );
}

/// A hostile hub's run: `HF_HOME` is `sandbox/hf-home`, so a `../` or an absolute path that
/// escapes the cache lands in the sandbox, where [`outside_cache`] finds it.
struct Sandbox {
    tmp: tempfile::TempDir,
    sandbox: std::path::PathBuf,
    home: std::path::PathBuf,
}

impl Sandbox {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let sandbox = tmp.path().join("sandbox");
        let home = sandbox.join("hf-home");
        std::fs::create_dir_all(&home).unwrap();
        Self { tmp, sandbox, home }
    }

    /// Runs `crossenc args` against `server` with this sandbox's `HF_HOME`.
    fn run(&self, server: &hub_server::HubServer, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_crossenc"))
            .args(args)
            .env("HF_HOME", &self.home)
            .env("HF_ENDPOINT", &server.endpoint)
            .env_remove("HF_HUB_OFFLINE")
            .output()
            .unwrap()
    }

    /// `predict` with a hub model id, against `server`.
    fn predict(&self, server: &hub_server::HubServer) -> std::process::Output {
        let input = self.tmp.path().join("pairs.jsonl");
        std::fs::write(&input, "{\"a\": \"x\", \"b\": \"y\"}\n").unwrap();
        let input = input.to_str().unwrap();
        self.run(
            server,
            &[
                "predict",
                "--model",
                "crossenc-test/tiny-bert",
                "--input",
                input,
            ],
        )
    }

    /// Every path in the sandbox, symlinks not followed, that is not `HF_HOME/hub` or in it
    /// (nor `HF_HOME` itself).
    fn outside_cache(&self) -> Vec<std::path::PathBuf> {
        let cache = self.home.join("hub");
        let mut out = Vec::new();
        let mut todo = vec![self.sandbox.clone()];
        while let Some(dir) = todo.pop() {
            for e in std::fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                if p.starts_with(&cache) {
                    continue;
                }
                if p != self.home {
                    out.push(p.clone());
                }
                if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                    todo.push(p);
                }
            }
        }
        out
    }

    /// Regular files under `HF_HOME`, with their sizes.
    fn cache_files(&self) -> Vec<(std::path::PathBuf, u64)> {
        let mut out = Vec::new();
        let mut todo = vec![self.home.clone()];
        while let Some(dir) = todo.pop() {
            for e in std::fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                let m = std::fs::symlink_metadata(&p).unwrap();
                if m.is_dir() {
                    todo.push(p);
                } else if m.is_file() {
                    out.push((p, m.len()));
                }
            }
        }
        out
    }
}

fn tiny_bert() -> Vec<(String, std::path::PathBuf)> {
    vec![(
        "crossenc-test/tiny-bert".into(),
        fixture("tests/fixtures/golden/tiny-bert"),
    )]
}

#[test]
fn hub_etag_that_is_an_absolute_path_is_refused() {
    let s = Sandbox::new();
    let target = s.sandbox.join("escaped-blob");
    let target = target.to_str().unwrap();
    let server = hub_server::serve_lying(tiny_bert(), hub_server::Lie::Etag(target.into()));
    let out = s.predict(&server);
    fails_with(&out, &["ETag", target, "absolute path", "HF_ENDPOINT"]);
    assert_eq!(s.outside_cache(), Vec::<std::path::PathBuf>::new());
}

#[test]
fn hub_commit_that_climbs_out_is_refused() {
    let s = Sandbox::new();
    let commit = "../../../../escaped-commit";
    let server = hub_server::serve_lying(tiny_bert(), hub_server::Lie::Commit(commit.into()));
    let out = s.predict(&server);
    fails_with(&out, &["X-Repo-Commit", commit, "`..`", "HF_ENDPOINT"]);
    assert_eq!(s.outside_cache(), Vec::<std::path::PathBuf>::new());
}

#[test]
fn hub_dataset_file_names_that_climb_out_are_refused() {
    let s = Sandbox::new();
    let repo = s.tmp.path().join("dataset");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(
        repo.join("test.jsonl"),
        "{\"a\": \"x\", \"b\": \"y\", \"label\": 1}\n",
    )
    .unwrap();
    let name = "../../../../../escaped/test.jsonl";
    let server = hub_server::serve_lying(
        vec![("datasets/evil/data".into(), repo)],
        hub_server::Lie::FileName(name.into()),
    );
    let model = fixture("tests/fixtures/golden/tiny-bert");
    let model = model.to_str().unwrap();
    // Listed by the server.
    let out = s.run(
        &server,
        &["eval", "-m", model, "-d", "hf://datasets/evil/data"],
    );
    fails_with(&out, &["file name", name, "`..`", "HF_ENDPOINT"]);
    assert_eq!(s.outside_cache(), Vec::<std::path::PathBuf>::new());
    // Named in the spec: the same check, before any request.
    let spec = format!("hf://datasets/evil/data/{name}");
    let out = s.run(&server, &["eval", "-m", model, "-d", &spec]);
    fails_with(&out, &[name, "not a file name in a repository"]);
    assert_eq!(s.outside_cache(), Vec::<std::path::PathBuf>::new());
}

#[test]
fn hub_body_longer_than_advertised_is_refused_and_not_kept() {
    let s = Sandbox::new();
    let server = hub_server::serve_lying(tiny_bert(), hub_server::Lie::LongBody(16));
    let out = s.predict(&server);
    fails_with(&out, &["config.json", "advertised 16 bytes", "HF_ENDPOINT"]);
    let big: Vec<_> = s
        .cache_files()
        .into_iter()
        .filter(|(_, n)| *n > 16)
        .collect();
    assert!(big.is_empty(), "kept: {big:?}");
    assert_eq!(s.outside_cache(), Vec::<std::path::PathBuf>::new());
}
