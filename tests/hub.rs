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
    let golden_dir = shared("golden/tiny-bert");
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
