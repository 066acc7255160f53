//! Data-parallel training under `mpirun` (feature `mpi`; OpenMPI from Debian in CI): two ranks
//! end with a single process's weights, and a rank that dies ends the job instead of hanging it.
#![cfg(feature = "mpi")]

mod common;

use common::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// tiny-bert (dropout 0.1) and 64 STS-B training pairs.
fn setup(tmp: &Path) -> (PathBuf, PathBuf) {
    let model = tmp.join("model");
    std::fs::create_dir(&model).unwrap();
    for f in std::fs::read_dir(fixture("tests/fixtures/golden/tiny-bert")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, model.join(f.file_name().unwrap())).unwrap();
    }
    let stsb = std::fs::read_to_string(fixture("data/stsb/stsb-en-train.csv")).unwrap();
    let data = tmp.join("train.csv");
    std::fs::write(
        &data,
        stsb.lines().take(64).collect::<Vec<_>>().join("\n") + "\n",
    )
    .unwrap();
    (model, data)
}

fn train_args(model: &Path, data: &Path, out: &Path, steps: usize) -> Vec<String> {
    let steps = steps.to_string();
    [
        "train",
        "--model",
        model.to_str().unwrap(),
        "--train",
        data.to_str().unwrap(),
        "--label-range",
        "0:5",
        "--batch-size",
        "16",
        "--max-steps",
        &steps,
        "--lr",
        "2e-5",
        "--warmup-steps",
        "1",
        "--max-length",
        "48",
        "--quiet",
        "--output",
        out.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn mpirun(np: usize, args: &[String]) -> Command {
    let mut cmd = Command::new("mpirun");
    cmd.args([
        "--allow-run-as-root",
        "--oversubscribe",
        "-np",
        &np.to_string(),
    ])
    .arg(env!("CARGO_BIN_EXE_crossenc"))
    .args(args)
    .env("HF_HUB_OFFLINE", "1");
    cmd
}

fn weights(path: &Path) -> HashMap<String, Vec<f32>> {
    candle_core::safetensors::load(path, &candle_core::Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(n, t)| (n, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect()
}

/// Each rank's share of a batch draws the dropout masks that one process draws for the same
/// rows, so even with dropout on the two runs take the same steps.
#[test]
fn two_ranks_end_with_a_single_processs_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, data) = setup(tmp.path());
    let single = tmp.path().join("single");
    stdout(&crossenc(
        &train_args(&model, &data, &single, 4)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    ));
    let parallel = tmp.path().join("parallel");
    let out = mpirun(2, &train_args(&model, &data, &parallel, 4))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mpirun failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (want, got) = (
        weights(&single.join("model.safetensors")),
        weights(&parallel.join("model.safetensors")),
    );
    let before = weights(&model.join("model.safetensors"));
    assert_eq!(want.len(), got.len());
    let mut worst = (0f32, "");
    for (name, w) in &want {
        assert!(max_abs_diff(w, &before[name]) > 0.0, "{name} did not train");
        let d = max_abs_diff(w, &got[name]);
        if name.ends_with("attention.self.key.bias") {
            // Its true gradient is 0: AdamW turns either run's rounding noise into steps of up
            // to lr, in any direction (see tests/train_step.rs).
            assert!(d <= 4.0 * 2e-5, "{name}: {d}");
        } else {
            assert!(d < 1e-6, "{name}: two ranks differ from one process by {d}");
            if d > worst.0 {
                worst = (d, name);
            }
        }
    }
    eprintln!(
        "largest difference from one process: {} in {}",
        worst.0, worst.1
    );
    // Rank 0 alone logged: one line per step, as one process does.
    let lines = |dir: &Path| std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let losses = |text: String| -> Vec<f32> {
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["loss"].as_f64())
            .map(|v| v as f32)
            .collect()
    };
    let (one, two) = (losses(lines(&single)), losses(lines(&parallel)));
    assert_eq!(one.len(), two.len());
    assert!(max_abs_diff(&one, &two) < 1e-5, "{one:?} vs {two:?}");
}

/// The exit status and standard error of a job that must end by itself within `limit`.
fn ends_within(mut cmd: Command, limit: Duration) -> (std::process::ExitStatus, String) {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read while it runs: a full pipe would hold the job.
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut err = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut err).unwrap();
        err
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("the job hung: {}", reader.join().unwrap());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    (status, reader.join().unwrap())
}

/// A job whose ranks run these executables with these arguments (mpirun's MPMD form).
fn mpmd(ranks: &[(&Path, Vec<String>)]) -> Command {
    let mut cmd = Command::new("mpirun");
    cmd.args(["--allow-run-as-root", "--oversubscribe"])
        .env("HF_HUB_OFFLINE", "1");
    for (i, (exe, args)) in ranks.iter().enumerate() {
        if i > 0 {
            cmd.arg(":");
        }
        cmd.args(["-np", "1"]).arg(exe).args(args);
    }
    cmd
}

#[test]
fn a_rank_that_dies_ends_the_job_with_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, data) = setup(tmp.path());
    let out = tmp.path().join("out");
    let mut job = mpirun(2, &train_args(&model, &data, &out, 4));
    job.env("CROSSENC_FAULT", "kill-rank-1");
    let (status, err) = ends_within(job, Duration::from_secs(120));
    assert!(!status.success(), "the job succeeded without its rank 1");
    assert!(err.contains("rank 1"), "{err}");
    assert!(
        !out.join("model.safetensors").exists(),
        "a model was written by a failed run"
    );
}

/// A rank that stops without dying (a frozen node) would hold the others inside MPI forever:
/// past --rank-timeout they end the job, saying where they waited.
#[test]
fn a_rank_that_hangs_ends_the_job_after_the_rank_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, data) = setup(tmp.path());
    let out = tmp.path().join("out");
    let mut args = train_args(&model, &data, &out, 4);
    args.extend(["--rank-timeout".to_string(), "3".to_string()]);
    let mut job = mpirun(2, &args);
    job.env("CROSSENC_FAULT", "hang-rank-1");
    let (status, err) = ends_within(job, Duration::from_secs(90));
    assert!(!status.success());
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        err.contains("error on rank 0 of 2: waited 3 s for the other ranks at "),
        "{err}"
    );
    assert!(err.contains("raise --rank-timeout"), "{err}");
    assert!(!out.join("model.safetensors").exists());
}

/// Ranks started with another data file, other settings or another build would sum the
/// gradients of different runs: every rank refuses before the first step, naming what differs;
/// a rank that cannot read its data ends the job with its error.
#[test]
fn ranks_started_unlike_refuse_to_train() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, data) = setup(tmp.path());
    let other = tmp.path().join("other.csv");
    let text = std::fs::read_to_string(&data).unwrap();
    std::fs::write(&other, text.replacen(",5.0", ",4.0", 1)).unwrap();
    assert_ne!(std::fs::read_to_string(&other).unwrap(), text);
    let exe = Path::new(env!("CARGO_BIN_EXE_crossenc"));
    // The same program with one more byte: another build, as far as its checksum goes.
    let rebuilt = tmp.path().join("crossenc");
    let mut bytes = std::fs::read(exe).unwrap();
    bytes.push(0);
    std::fs::write(&rebuilt, bytes).unwrap();
    std::fs::set_permissions(
        &rebuilt,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let out = tmp.path().join("out");
    let args = |data: &Path| train_args(&model, data, &out, 4);
    let mut lr = args(&data);
    let at = lr.iter().position(|a| a == "2e-5").unwrap();
    lr[at] = "3e-5".into();
    let cases: [(&Path, Vec<String>, &str); 4] = [
        (
            exe,
            args(&other),
            "differs from rank 0 in its training data",
        ),
        (exe, lr, "differs from rank 0 in its settings"),
        (
            &rebuilt,
            args(&data),
            "differs from rank 0 in its executable",
        ),
        (
            exe,
            args(Path::new("/no/such/train.csv")),
            "error on rank 1 of 2: cannot read /no/such/train.csv",
        ),
    ];
    for (exe1, args1, says) in cases {
        let job = mpmd(&[(exe, args(&data)), (exe1, args1)]);
        let (status, err) = ends_within(job, Duration::from_secs(120));
        assert!(!status.success(), "{says}: the job succeeded");
        assert!(!err.contains("panicked"), "{err}");
        assert!(err.contains(says), "{says}: {err}");
        assert!(!out.join("model.safetensors").exists(), "{says}");
    }
}

#[test]
fn a_resumed_two_rank_run_ends_as_an_uninterrupted_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, data) = setup(tmp.path());
    let run = |out: &Path, steps: usize, extra: &[&str]| {
        let mut args = train_args(&model, &data, out, steps);
        args.extend(extra.iter().map(|s| s.to_string()));
        let o = mpirun(2, &args).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let straight = tmp.path().join("straight");
    run(&straight, 4, &[]);
    // Stopped after 2 steps with a checkpoint at step 1, then resumed to 4.
    let resumed = tmp.path().join("resumed");
    run(&resumed, 2, &["--save-steps", "1"]);
    run(&resumed, 4, &["--resume"]);
    let (want, got) = (
        weights(&straight.join("model.safetensors")),
        weights(&resumed.join("model.safetensors")),
    );
    for (name, w) in &want {
        assert_eq!(w, &got[name], "{name}: resumed run differs");
    }
}
