//! `deploy/`: the Dockerfile passes hadolint, the Kubernetes manifests validate against
//! Kubernetes' schemas (strict), the Slurm script parses, and the binary runs as the image runs
//! it: its ENTRYPOINT and CMD, as the image's non-root user, on a read-only model folder,
//! answering the `/health` probe. (No registry is reachable here, so the image itself is not
//! built.)

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// The tools `scripts/fetch-fixtures.sh` installs into `target/fixtures/py`.
fn tool(name: &str) -> Option<std::path::PathBuf> {
    optional(repo().join("target/fixtures/py/bin").join(name))
}

fn succeeds(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn dockerfile_and_manifests_lint_clean() {
    let (Some(hadolint), Some(validate)) = (tool("hadolint"), tool("kubernetes-validate")) else {
        return;
    };
    let deploy = repo().join("deploy");
    succeeds(Command::new(hadolint).arg(deploy.join("Dockerfile")));
    let manifests: Vec<_> = std::fs::read_dir(deploy.join("k8s"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(manifests.len() >= 2);
    succeeds(Command::new(validate).arg("--strict").args(&manifests));
    succeeds(
        Command::new("bash")
            .arg("-n")
            .arg(deploy.join("slurm/score-array.sh")),
    );
}

/// The JSON array of the Dockerfile instruction `name` (`ENTRYPOINT`, `CMD`).
fn instruction(dockerfile: &str, name: &str) -> Vec<String> {
    let line = dockerfile
        .lines()
        .find(|l| l.starts_with(&format!("{name} [")))
        .unwrap_or_else(|| panic!("no {name} in the Dockerfile"));
    serde_json::from_str(&line[name.len()..]).unwrap()
}

fn make_read_only(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555)).unwrap();
}

#[test]
fn the_binary_runs_as_the_image_runs_it() {
    let dockerfile = std::fs::read_to_string(repo().join("deploy/Dockerfile")).unwrap();
    assert_eq!(instruction(&dockerfile, "ENTRYPOINT"), ["crossenc"]);
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // The image's /models/model: a model folder nobody may write.
    let model = tmp.path().join("model");
    std::fs::create_dir(&model).unwrap();
    for entry in std::fs::read_dir(fixture("tests/fixtures/golden/tiny-bert")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, model.join(path.file_name().unwrap())).unwrap();
    }
    make_read_only(&model);
    let args: Vec<String> = instruction(&dockerfile, "CMD")
        .into_iter()
        .map(|a| match a.as_str() {
            "/models/model" => model.to_str().unwrap().to_string(),
            "8080" => "0".to_string(),
            _ => a,
        })
        .collect();
    // As the image's user (uid 10001) where this test may switch to it.
    let bin = env!("CARGO_BIN_EXE_crossenc");
    let root = Command::new("id").arg("-u").output().unwrap().stdout == b"0\n";
    let mut cmd = if root {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=10001", "--regid=10001", "--clear-groups", bin]);
        c
    } else {
        Command::new(bin)
    };
    let mut child = cmd
        .args(&args)
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HOME", tmp.path().join("hf"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The HEALTHCHECK's probe, over loopback.
    let url = listening_url(&mut child);
    let url = url.replace("0.0.0.0", "127.0.0.1");
    let health = ureq::get(&format!("{url}/health")).call().unwrap();
    assert_eq!(health.status(), 200);
    let ranked: serde_json::Value = ureq::post(&format!("{url}/rerank"))
        .send_json(serde_json::json!({ "query": "q", "texts": ["a", "b"] }))
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(ranked.as_array().unwrap().len(), 2);
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(
        child.wait().unwrap().success(),
        "SIGTERM ends the server cleanly"
    );
}
