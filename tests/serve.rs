//! The real server on 127.0.0.1 (random port): every route, every error status, dynamic
//! batching across concurrent requests, the queue limit, and graceful shutdown.

mod common;

use common::*;
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(model: &std::path::Path, extra: &[&str]) -> Server {
        Server::start_with_env(model, extra, &[])
    }

    fn start_with_env(model: &std::path::Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        Server::start_logging(model, extra, env, Stdio::null())
    }

    /// A server whose log (stderr) goes to `log`.
    fn start_logging(
        model: &std::path::Path,
        extra: &[&str],
        env: &[(&str, &str)],
        log: impl Into<Stdio>,
    ) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_crossenc"))
            .args(["serve", "--model", model.to_str().unwrap(), "--port", "0"])
            .args(extra)
            .env("HF_HUB_OFFLINE", "1")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let url = listening_url(&mut child);
        Server { child, url }
    }

    /// (status, JSON body) of a POST with a raw body.
    fn post_raw(&self, route: &str, body: &str) -> (u16, Value) {
        self.post_typed(route, "application/json", body)
    }

    /// (status, JSON body) of a POST with a raw body declared `content_type`.
    fn post_typed(&self, route: &str, content_type: &str, body: &str) -> (u16, Value) {
        let resp = ureq::post(&format!("{}{route}", self.url))
            .set("content-type", content_type)
            .send_string(body);
        let resp = match resp {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("request failed: {e}"),
        };
        let status = resp.status();
        (
            status,
            serde_json::from_str(&resp.into_string().unwrap()).unwrap(),
        )
    }

    fn post(&self, route: &str, body: Value) -> (u16, Value) {
        self.post_raw(route, &body.to_string())
    }

    /// (status, JSON body) of a POST with `Authorization: Bearer <key>`.
    fn post_with_key(&self, route: &str, key: &str, body: Value) -> (u16, Value) {
        self.post_authorized(route, &format!("Bearer {key}"), body)
    }

    /// (status, JSON body) of a POST with this `Authorization` header.
    fn post_authorized(&self, route: &str, authorization: &str, body: Value) -> (u16, Value) {
        let resp = ureq::post(&format!("{}{route}", self.url))
            .set("authorization", authorization)
            .send_json(body);
        let resp = match resp {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("request failed: {e}"),
        };
        (resp.status(), resp.into_json().unwrap())
    }

    fn get(&self, route: &str) -> (u16, String) {
        match ureq::get(&format!("{}{route}", self.url)).call() {
            Ok(r) => (r.status(), r.into_string().unwrap()),
            Err(ureq::Error::Status(s, r)) => (s, r.into_string().unwrap()),
            Err(e) => panic!("request failed: {e}"),
        }
    }

    fn terminate(&mut self) {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The scores of a `/rerank` answer, or the first label's of a `/predict` batch's.
fn scores_of(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| r.get(0).unwrap_or(r)["score"].as_f64().unwrap() as f32)
        .collect()
}

/// Cohere's v1 and v2 re-rank routes: TEI's order and scores under Cohere's field names.
#[test]
fn cohere_rerank_routes_match_rerank() {
    let dir = fixture("tests/fixtures/golden/tiny-bert");
    let g = read_json(&dir.join("golden.json"));
    let s = Server::start(&dir, &[]);
    let query = g["pairs"][2][0].as_str().unwrap();
    let texts: Vec<&str> = (0..8).map(|i| g["pairs"][i][1].as_str().unwrap()).collect();
    let (_, tei) = s.post("/rerank", json!({ "query": query, "texts": texts }));
    let tei = tei.as_array().unwrap();
    for version in ["v1", "v2"] {
        let route = format!("/{version}/rerank");
        // v1 also takes {text} objects.
        let documents: Vec<Value> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| match (version, i % 2) {
                ("v1", 1) => json!({ "text": t, "title": "ignored" }),
                _ => json!(t),
            })
            .collect();
        let body = json!({ "model": "any", "query": query, "documents": documents,
            "top_n": 5, "return_documents": true });
        let (status, out) = s.post(&route, body);
        assert_eq!(status, 200, "{version}: {out}");
        let results = out["results"].as_array().unwrap();
        assert_eq!(results.len(), 5);
        for (r, t) in results.iter().zip(tei) {
            assert_eq!(r["index"], t["index"], "{version}");
            assert_eq!(r["relevance_score"], t["score"], "{version}");
            let i = r["index"].as_u64().unwrap() as usize;
            assert_eq!(r["document"]["text"], texts[i]);
        }
        assert_eq!(out["meta"]["api_version"]["version"], &version[1..]);
        assert_eq!(out["id"].as_str().unwrap().len(), 36);
        // Without return_documents: no document.
        let (_, bare) = s.post(&route, json!({ "query": query, "documents": texts }));
        assert_eq!(bare["results"].as_array().unwrap().len(), 8);
        assert!(bare["results"][0].get("document").is_none());
        // Errors in Cohere's shape.
        for (body, status) in [
            (json!({ "query": query, "documents": [] }), 400),
            (
                json!({ "query": query, "documents": ["a"], "top_n": 0 }),
                400,
            ),
            (
                json!({ "query": query, "documents": [{ "title": "no text" }] }),
                400,
            ),
            (json!({ "query": query, "documents": [1, 2] }), 400),
            (json!({ "query": query }), 422),
        ] {
            let (got, out) = s.post(&route, body);
            assert_eq!(got, status, "{version}: {out}");
            assert!(out["message"].is_string(), "{version}: {out}");
        }
    }
    // Every route is described.
    let (status, spec) = s.get("/openapi.json");
    assert_eq!(status, 200);
    let spec: Value = serde_json::from_str(&spec).unwrap();
    assert_eq!(spec["openapi"], "3.1.0");
    for route in [
        "/rerank",
        "/predict",
        "/v1/rerank",
        "/v2/rerank",
        "/health",
        "/info",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(
            spec["paths"][route].is_object(),
            "{route} missing from /openapi.json"
        );
    }
}

/// The real Cohere SDK (v1 and v2 clients) and an OpenAPI validator, from the Python that
/// `scripts/fetch-fixtures.sh` sets up in `target/fixtures/py`.
#[test]
fn real_cohere_clients_rerank_like_rerank() {
    let Some(python) = optional(repo().join("target/fixtures/py/bin/python")) else {
        return;
    };
    let dir = fixture("tests/fixtures/golden/tiny-bert");
    let s = Server::start_with_env(&dir, &[], &[("CROSSENC_API_KEY", "k3y")]);
    let out = std::process::Command::new(python)
        .arg(repo().join("scripts/cohere_clients.py"))
        .args([&s.url, "k3y"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["v1"], 3);
    assert_eq!(report["openapi"], "valid");
}

#[test]
fn an_api_key_guards_every_route_but_health_and_metrics() {
    let dir = fixture("tests/fixtures/golden/tiny-bert");
    let s = Server::start_with_env(&dir, &[], &[("CROSSENC_API_KEY", "s3cret")]);
    let rerank = json!({ "query": "q", "texts": ["a", "b"] });
    let cohere = json!({ "query": "q", "documents": ["a", "b"] });
    let (status, out) = s.post("/rerank", rerank.clone());
    assert_eq!(status, 401);
    // What the client must send; the server's flags are no business of a remote client.
    let message = out["error"].as_str().unwrap();
    assert!(message.contains("Authorization: Bearer <key>"), "{message}");
    assert!(!message.contains("--"), "{message}");
    let (status, out) = s.post_with_key("/v1/rerank", "wrong", cohere.clone());
    assert_eq!(status, 401);
    assert!(out["message"].is_string(), "Cohere's error shape: {out}");
    assert_eq!(s.post_with_key("/rerank", "s3cret", rerank).0, 200);
    assert_eq!(
        s.post_with_key("/v2/rerank", "s3cret", cohere.clone()).0,
        200
    );
    // The scheme in any case (RFC 7235), the key still exact.
    for header in ["bearer s3cret", "BEARER s3cret", "Bearer  s3cret"] {
        let (status, out) = s.post_authorized("/v1/rerank", header, cohere.clone());
        assert_eq!(status, 200, "{header}: {out}");
    }
    for header in ["bearer S3CRET", "Basic s3cret", "bearers3cret", "s3cret"] {
        assert_eq!(
            s.post_authorized("/v1/rerank", header, cohere.clone()).0,
            401,
            "{header}"
        );
    }
    assert_eq!(s.get("/info").0, 401);
    assert_eq!(s.get("/health").0, 200);
    assert_eq!(s.get("/metrics").0, 200);
}

/// Resident memory of a process in MB: now (`VmRSS`) or at its peak (`VmHWM`).
fn rss_mb(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim();
    kb.parse::<f64>().unwrap() / 1024.0
}

/// A 50 MB text is over the documented body limit (413, read no further than it); a text
/// within it, however long, is scored from its head as its first kilobytes are, in bounded
/// memory.
#[test]
fn huge_texts_are_refused_or_scored_from_their_head() {
    let dir = fixture("tests/fixtures/golden/tiny-bert");
    let s = Server::start(&dir, &[]);
    let pid = s.child.id();
    let before = rss_mb(pid, "VmRSS:");
    let sentence = "The quick brown fox jumps over the lazy dog. ";
    let huge = sentence.repeat(50_000_000 / sentence.len());
    let body = json!({ "inputs": [["a query", huge]] }).to_string();
    // Sent over a raw connection: the server answers and closes without reading the rest,
    // which a client library reports as a broken pipe before it reads the answer.
    let mut conn = std::net::TcpStream::connect(s.url.trim_start_matches("http://")).unwrap();
    let head = format!(
        "POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    use std::io::{Read, Write};
    conn.write_all(head.as_bytes()).unwrap();
    // Read while the body is still being sent: the answer comes before the server's reset.
    let mut writer = conn.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let _ = writer.write_all(body.as_bytes());
    });
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    sender.join().unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("limit of 2097152 bytes"), "{answer}");
    let long = &huge[..1_500_000];
    let (status, out) = s.post(
        "/predict",
        json!({ "inputs": [["a query", long], ["a query", &long[..4000]]] }),
    );
    assert_eq!(status, 200, "{out}");
    let scores = scores_of(&out);
    assert_eq!(scores[0], scores[1]);
    let growth = rss_mb(pid, "VmHWM:") - before;
    assert!(growth < 100.0, "the server's RSS grew by {growth} MB");
}

#[test]
fn quantized_servers_say_so_and_score_close_to_f32() {
    let dir = fixture("tests/fixtures/golden/tiny-bert");
    let g = read_json(&dir.join("golden.json"));
    let s = Server::start(&dir, &["--quantize", "int8"]);
    let info: Value = serde_json::from_str(&s.get("/info").1).unwrap();
    assert_eq!(info["model_dtype"], "int8");
    assert!(info["int8_kernel"]
        .as_str()
        .unwrap()
        .contains("-bit weights"));
    assert!(info["bf16_kernel"].is_null());
    let (status, out) = s.post("/predict", json!({ "inputs": golden_pairs(&g) }));
    assert_eq!(status, 200);
    let d = max_abs_diff(&scores_of(&out), &f32s(&g["predict_scores"]));
    assert!(d > 0.0 && d < 0.15, "int8 scores differ from f32 by {d}");
    // bf16 where the CPU has it (elsewhere the loader refuses it: tests/cli.rs).
    if crossenc::ops::bf16::available() {
        let s = Server::start(&dir, &["--quantize", "bf16"]);
        let info: Value = serde_json::from_str(&s.get("/info").1).unwrap();
        assert_eq!(info["model_dtype"], "bfloat16");
        assert!(info["int8_kernel"].is_null());
        // "crossenc amx (tdpbf16ps)" or "crossenc avx512-bf16 (vdpbf16ps)".
        assert!(
            info["bf16_kernel"].as_str().unwrap().contains("bf16"),
            "{info}"
        );
        let (status, out) = s.post("/predict", json!({ "inputs": golden_pairs(&g) }));
        assert_eq!(status, 200);
        let d = max_abs_diff(&scores_of(&out), &f32s(&g["predict_scores"]));
        assert!(d > 0.0 && d < 0.01, "bf16 scores differ from f32 by {d}");
    }
}

/// A Qwen3 re-ranker (a causal LM) behind `/rerank`: text-embeddings-inference does not serve
/// these; the scores are sentence-transformers'.
#[test]
fn rerank_serves_a_qwen3_reranker() {
    let dir = repo().join("tests/fixtures/tiny-qwen3-reranker");
    let g = read_json(&require(dir.join("golden.json")));
    let want = f32s(&g["predict_scores"]);
    let s = Server::start(&dir, &[]);
    let info: Value = serde_json::from_str(&s.get("/info").1).unwrap();
    assert_eq!(info["architecture"], "qwen3");
    // Golden pairs 2 and 3 share their query.
    let (status, out) = s.post(
        "/rerank",
        json!({ "query": g["pairs"][2][0], "texts": [g["pairs"][2][1], g["pairs"][3][1]] }),
    );
    assert_eq!(status, 200, "{out}");
    assert_eq!(out.as_array().unwrap().len(), 2, "{out}");
    for r in out.as_array().unwrap() {
        let i = 2 + r["index"].as_u64().unwrap() as usize;
        let d = (r["score"].as_f64().unwrap() as f32 - want[i]).abs();
        assert!(
            d < 1e-4,
            "pair {i}: /rerank differs from sentence-transformers by {d}"
        );
    }
}

#[test]
fn routes_answer_like_text_embeddings_inference() {
    let dir = fixture("tests/fixtures/golden/tiny-bert");
    let g = read_json(&dir.join("golden.json"));
    let s = Server::start(&dir, &[]);
    assert_eq!(s.get("/health").0, 200);
    let (status, info) = s.get("/info");
    assert_eq!(status, 200);
    let info: Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["max_input_length"], 48);
    assert_eq!(info["labels"], json!(["LABEL_0"]));
    assert_eq!(info["model_dtype"], "float32");
    assert_eq!(info["int8_kernel"], Value::Null);

    // /predict: golden scores, and logits with raw_scores.
    let pairs = golden_pairs(&g);
    let (status, out) = s.post("/predict", json!({ "inputs": pairs }));
    assert_eq!(status, 200);
    assert!(max_abs_diff(&scores_of(&out), &f32s(&g["predict_scores"])) < 1e-4);
    let (_, raw) = s.post("/predict", json!({ "inputs": pairs, "raw_scores": true }));
    assert!(max_abs_diff(&scores_of(&raw), &f32s(&g["logits"])) < 1e-4);

    // /rerank: golden pairs 2 and 3 share the query; sorted by score, top_n, return_text.
    let query = &pairs[2].0;
    let texts = vec![pairs[2].1.clone(), pairs[3].1.clone()];
    let (status, ranked) = s.post(
        "/rerank",
        json!({ "query": query, "texts": texts, "return_text": true }),
    );
    assert_eq!(status, 200);
    let want = f32s(&g["predict_scores"]);
    let best = if want[2] > want[3] { 0 } else { 1 };
    assert_eq!(ranked[0]["index"], best);
    assert_eq!(ranked[0]["text"], texts[best]);
    assert!((ranked[0]["score"].as_f64().unwrap() as f32 - want[2].max(want[3])).abs() < 1e-4);
    let (_, top) = s.post(
        "/rerank",
        json!({ "query": query, "texts": texts, "top_n": 1 }),
    );
    assert_eq!(top.as_array().unwrap().len(), 1);
    assert!(top[0].get("text").is_none());

    let (status, metrics) = s.get("/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("crossenc_requests_total{route=\"/rerank\",status=\"200\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("crossenc_request_duration_seconds_bucket{route=\"/predict\""),
        "{metrics}"
    );
    assert!(metrics.contains("crossenc_queue_depth 0"), "{metrics}");
}

#[test]
fn multi_label_predict_lists_labels() {
    let dir = fixture("tests/fixtures/golden/tiny-bert-3labels");
    let g = read_json(&dir.join("golden.json"));
    let s = Server::start(&dir, &[]);
    let (status, out) = s.post("/predict", json!({ "inputs": golden_pairs(&g)[..1] }));
    assert_eq!(status, 200);
    let per_label = out[0].as_array().unwrap();
    assert_eq!(per_label.len(), 3);
    let want = f32s(&g["predict_scores"]);
    for entry in per_label {
        let i: usize = entry["label"]
            .as_str()
            .unwrap()
            .trim_start_matches("LABEL_")
            .parse()
            .unwrap();
        assert!((entry["score"].as_f64().unwrap() as f32 - want[i]).abs() < 1e-4);
    }
}

#[test]
fn bad_requests_get_json_errors_with_the_right_status() {
    let s = Server::start(
        &fixture("tests/fixtures/golden/tiny-bert"),
        &["--max-client-batch-size", "3", "--body-limit", "2000"],
    );
    let check = |(status, body): (u16, Value), want: u16| {
        assert_eq!(status, want, "{body}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{body}"
        );
    };
    check(s.post_raw("/rerank", "{not json"), 422);
    check(
        s.post("/rerank", json!({ "query": "q", "texts": "not a list" })),
        422,
    );
    check(s.post("/rerank", json!({ "texts": ["a"] })), 422);
    check(
        s.post("/predict", json!({ "inputs": [["a", "b", "c"]] })),
        422,
    );
    check(s.post("/rerank", json!({ "query": "q", "texts": [] })), 400);
    check(s.post("/predict", json!({ "inputs": [] })), 400);
    check(
        s.post(
            "/rerank",
            json!({ "query": "q", "texts": ["a", "b", "c", "d"] }),
        ),
        413,
    );
    let (status, body) = s.post(
        "/rerank",
        json!({ "query": "q", "texts": ["x".repeat(3000)] }),
    );
    assert_eq!(status, 413, "{body}");
    let error = body["error"].as_str().unwrap_or("");
    assert!(error.contains("limit of 2000 bytes"), "{body}");
    let long = "word ".repeat(200);
    check(
        s.post(
            "/rerank",
            json!({ "query": "q", "texts": [long], "truncate": false }),
        ),
        413,
    );
    assert_eq!(
        s.post("/rerank", json!({ "query": "q", "texts": [long] }))
            .0,
        200,
        "truncates by default"
    );
    assert_eq!(s.get("/nowhere").0, 404);
    // The server is still healthy after all of that.
    assert_eq!(s.get("/health").0, 200);
}

#[test]
fn concurrent_requests_are_batched_and_score_as_alone() {
    let Some(model) = minilm() else { return };
    let s = Server::start(&model, &[]);
    let text = std::fs::read_to_string(fixture("data/stsb/stsb-en-test.csv")).unwrap();
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(text.as_bytes());
    let pairs: Vec<(String, String)> = rdr
        .records()
        .take(96)
        .map(|r| {
            let r = r.unwrap();
            (r[0].to_string(), r[1].to_string())
        })
        .collect();
    let requests: Vec<Vec<(String, String)>> = pairs.chunks(12).map(<[_]>::to_vec).collect();
    let alone: Vec<Vec<f32>> = requests
        .iter()
        .map(|r| scores_of(&s.post("/predict", json!({ "inputs": r })).1))
        .collect();
    let (_, before) = s.get("/metrics");
    let batches_before = metric(&before, "crossenc_batches_total");

    let server = &s;
    let together: Vec<Vec<f32>> = std::thread::scope(|scope| {
        let handles: Vec<_> = requests
            .iter()
            .map(|r| scope.spawn(move || server.post("/predict", json!({ "inputs": r }))))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                let (status, v) = h.join().unwrap();
                assert_eq!(status, 200);
                scores_of(&v)
            })
            .collect()
    });
    for (a, b) in alone.iter().zip(&together) {
        assert!(
            max_abs_diff(a, b) < 1e-5,
            "batched scores differ from unbatched"
        );
    }
    let (_, after) = s.get("/metrics");
    let passes = metric(&after, "crossenc_batches_total") - batches_before;
    assert!(metric(&after, "crossenc_batch_requests_count") >= passes);
    assert!(
        passes < requests.len() as f64,
        "{} requests took {passes} passes: not batched",
        requests.len()
    );
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// The statuses of six concurrent 64-pair /predict requests.
fn burst(s: &Server) -> Vec<u16> {
    let inputs: Vec<(String, String)> = (0..64)
        .map(|i| {
            (
                format!("query number {i} about guitars"),
                "A man is playing a guitar on a stage in front of a crowd.".to_string(),
            )
        })
        .collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..6)
            .map(|_| scope.spawn(|| s.post("/predict", json!({ "inputs": &inputs })).0))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// The JSON log lines of a started server for a 200, a 4xx and a 503, and its metrics page, read
/// by Prometheus's own Python parser, with TEI's names and the counts of a known sequence.
#[test]
fn json_logs_and_tei_metrics_follow_a_known_sequence() {
    let Some(model) = minilm() else { return };
    let Some(python) = optional(repo().join("target/fixtures/py/bin/python")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("server.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let extra = ["--json-output", "--max-concurrent-requests", "1"];
    let mut s = Server::start_logging(&model, &extra, &[("RUST_LOG", "info")], log);
    let query = "where do secret otters sleep";
    let rerank = json!({ "query": query, "texts": ["in a holt", "on the river bank"] });
    assert_eq!(s.post("/rerank", rerank.clone()).0, 200);
    assert_eq!(s.post("/rerank", rerank).0, 200);
    let predict = json!({ "inputs": [["a", "b"], ["c", "d"], ["e", "f"]] });
    assert_eq!(s.post("/predict", predict).0, 200);
    let empty = json!({ "query": query, "texts": [] });
    assert_eq!(s.post("/rerank", empty).0, 400);
    assert_eq!(s.post_raw("/predict", "{not json").0, 422);
    let statuses = burst(&s);
    let ok = statuses.iter().filter(|c| **c == 200).count() as f64;
    let full = statuses.iter().filter(|c| **c == 503).count() as f64;
    assert!(ok >= 1.0 && full >= 1.0 && ok + full == 6.0, "{statuses:?}");

    let (_, page) = s.get("/metrics");
    let parse = "import json, sys\n\
        from prometheus_client.parser import text_string_to_metric_families as parse\n\
        print(json.dumps([[x.name, x.labels, x.value]\n\
            for f in parse(sys.stdin.read()) for x in f.samples]))";
    let mut child = Command::new(python)
        .args(["-c", parse])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the parser refused:\n{page}");
    let samples: Vec<(String, Value, f64)> = serde_json::from_slice(&out.stdout).unwrap();
    let value = |name: &str, labels: Value| {
        samples
            .iter()
            .find(|(n, l, _)| n == name && *l == labels)
            .map(|(_, _, v)| *v)
            .unwrap_or_else(|| panic!("no {name} {labels} in\n{page}"))
    };
    // The parser names a counter's sample `<family>_total`, whether or not the page did
    // (TEI's, and so crossenc's, say `te_request_count`).
    let batch = json!({ "method": "batch" });
    let none = json!({});
    assert!(
        page.contains("\nte_request_count{method=\"batch\"} 11\n"),
        "{page}"
    );
    assert_eq!(value("te_request_count_total", batch.clone()), 11.0);
    assert_eq!(value("te_request_success_total", batch), 3.0 + ok);
    let failed = |err: &str| value("te_request_failure_total", json!({ "err": err }));
    assert_eq!(failed("validation"), 2.0);
    assert_eq!(failed("overloaded"), full);
    for timed in [
        "te_request_duration_count",
        "te_request_tokenization_duration_count",
        "te_request_queue_duration_count",
        "te_request_inference_duration_count",
    ] {
        assert_eq!(value(timed, none.clone()), 3.0 + ok, "{timed}");
    }
    assert_eq!(
        value("te_batch_next_size_sum", none.clone()),
        7.0 + 64.0 * ok
    );
    // Every pair is tokenized, those refused for a full queue too.
    assert_eq!(
        value("te_request_input_length_count", none.clone()),
        7.0 + 64.0 * 6.0
    );
    assert_eq!(value("te_queue_size", none.clone()), 0.0);
    let rerank_ok = json!({ "route": "/rerank", "status": "200" });
    assert_eq!(value("crossenc_requests_total", rerank_ok), 2.0);

    s.terminate();
    assert!(exit_within(&mut s, Duration::from_secs(30)).is_some_and(|e| e.success()));
    let text = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        !text.contains("otters") && !text.contains("guitar"),
        "request text logged:\n{text}"
    );
    let lines: Vec<Value> = text
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let said = |message: &str| lines.iter().any(|l| l["fields"]["message"] == message);
    assert!(
        said("listening") && said("every connection closed"),
        "{text}"
    );
    let answered = |route: &str, status: u16| {
        lines
            .iter()
            .find(|l| l["span"]["route"] == route && l["fields"]["status"] == status)
            .unwrap_or_else(|| panic!("no {route} {status} line in\n{text}"))
    };
    let ok_line = answered("/rerank", 200);
    assert_eq!(ok_line["level"], "INFO");
    assert_eq!(ok_line["fields"]["pairs"], 2);
    for field in [
        "tokens",
        "tokenization_ms",
        "queue_ms",
        "inference_ms",
        "total_ms",
    ] {
        assert!(
            ok_line["fields"][field].as_f64().is_some(),
            "{field}: {ok_line}"
        );
    }
    let bad = answered("/rerank", 400);
    assert_eq!(bad["level"], "WARN");
    assert_eq!(bad["fields"]["error"], "`texts` cannot be empty");
    let busy = answered("/predict", 503);
    assert_eq!(busy["level"], "ERROR");
    assert_eq!(busy["fields"]["error_type"], "Overloaded");
}

#[test]
fn a_full_queue_answers_503_at_once() {
    let Some(model) = minilm() else { return };
    let s = Server::start(&model, &["--max-concurrent-requests", "1"]);
    let statuses = burst(&s);
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 503),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&200) && statuses.contains(&503),
        "{statuses:?}"
    );
}

#[test]
fn sigterm_finishes_in_flight_requests_then_exits() {
    let Some(model) = minilm() else { return };
    let mut s = Server::start(&model, &[]);
    let inputs: Vec<(String, String)> = (0..400)
        .map(|i| {
            (
                format!("query {i}"),
                "A man is playing a guitar on a stage in front of a large crowd of people."
                    .to_string(),
            )
        })
        .collect();
    let url = s.url.clone();
    let in_flight = std::thread::spawn(move || {
        let body = json!({ "inputs": inputs }).to_string();
        let r = ureq::post(&format!("{url}/predict"))
            .set("content-type", "application/json")
            .send_string(&body)
            .unwrap();
        (
            r.status(),
            serde_json::from_str::<Value>(&r.into_string().unwrap()).unwrap(),
        )
    });
    std::thread::sleep(Duration::from_millis(400));
    s.terminate();
    let (status, body) = in_flight.join().unwrap();
    assert_eq!(status, 200);
    assert_eq!(body.as_array().unwrap().len(), 400);
    let exit = s.child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
    assert!(
        ureq::get(&format!("{}/health", s.url))
            .timeout(Duration::from_secs(2))
            .call()
            .is_err(),
        "still accepting after shutdown"
    );
}

/// Waits up to `limit` for the server process to exit.
fn exit_within(s: &mut Server, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = s.child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[test]
fn a_client_that_stalls_mid_request_cannot_hold_up_shutdown() {
    use std::io::Write;
    let mut s = Server::start(
        &fixture("tests/fixtures/golden/tiny-bert"),
        &["--drain-seconds", "1"],
    );
    let addr = s.url.trim_start_matches("http://").to_string();
    let mut stalled = std::net::TcpStream::connect(&addr).unwrap();
    // Half a request header, then nothing.
    stalled
        .write_all(b"POST /predict HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    s.terminate();
    let exit =
        exit_within(&mut s, Duration::from_secs(10)).expect("still running 10 s after SIGTERM");
    assert!(exit.success(), "{exit:?}");
}

/// A raw connection to the server, for requests no client library sends.
fn connect(s: &Server) -> std::net::TcpStream {
    std::net::TcpStream::connect(s.url.trim_start_matches("http://")).unwrap()
}

/// Everything the server sends on `conn` until it closes it; fails if a read waits past `limit`.
fn read_until_closed(conn: &mut std::net::TcpStream, limit: Duration) -> String {
    use std::io::Read;
    conn.set_read_timeout(Some(limit)).unwrap();
    let mut answer = Vec::new();
    let read = conn.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    match read {
        Ok(_) => answer,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => answer,
        Err(e) => panic!("the connection is still open after {limit:?} ({e}); read: {answer:?}"),
    }
}

#[test]
fn a_half_sent_request_head_is_closed_after_the_header_timeout() {
    use std::io::Write;
    let s = Server::start(
        &fixture("tests/fixtures/golden/tiny-bert"),
        &["--header-timeout-seconds", "1"],
    );
    let mut conn = connect(&s);
    conn.write_all(b"POST /rerank HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let start = std::time::Instant::now();
    read_until_closed(&mut conn, Duration::from_secs(10));
    let waited = start.elapsed();
    assert!(
        waited < Duration::from_secs(5),
        "closed only after {waited:?}"
    );
    // The server goes on serving others.
    assert_eq!(s.get("/health").0, 200);
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    use std::io::Write;
    let s = Server::start(
        &fixture("tests/fixtures/golden/tiny-bert"),
        &["--header-timeout-seconds", "1"],
    );
    let mut conn = connect(&s);
    // HTTP/1.1 keeps the connection open after the answer by default.
    conn.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let start = std::time::Instant::now();
    let answer = read_until_closed(&mut conn, Duration::from_secs(10));
    let waited = start.elapsed();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        waited < Duration::from_secs(5),
        "closed only after {waited:?}"
    );
}

#[test]
fn a_half_sent_body_is_answered_408_and_closed() {
    use std::io::Write;
    let s = Server::start(
        &fixture("tests/fixtures/golden/tiny-bert"),
        &["--body-timeout-seconds", "1"],
    );
    for (route, field) in [("/rerank", "error"), ("/v2/rerank", "message")] {
        let mut conn = connect(&s);
        let head = format!(
            "POST {route} HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n"
        );
        conn.write_all(head.as_bytes()).unwrap();
        conn.write_all(br#"{"query": "#).unwrap();
        let start = std::time::Instant::now();
        let answer = read_until_closed(&mut conn, Duration::from_secs(10));
        let waited = start.elapsed();
        assert!(answer.starts_with("HTTP/1.1 408"), "{route}: {answer}");
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
        let body: Value = serde_json::from_str(body).unwrap();
        let error = body[field].as_str().unwrap_or("");
        assert!(
            error.contains("did not arrive within 1 s"),
            "{route}: {body}"
        );
        assert!(
            waited < Duration::from_secs(5),
            "{route}: closed only after {waited:?}"
        );
    }
}

#[test]
fn top_n_0_is_refused_alike_on_every_rerank_route() {
    let s = Server::start(&fixture("tests/fixtures/golden/tiny-bert"), &[]);
    for (route, body, field) in [
        (
            "/rerank",
            json!({ "query": "q", "texts": ["a", "b"], "top_n": 0 }),
            "error",
        ),
        (
            "/v1/rerank",
            json!({ "query": "q", "documents": ["a", "b"], "top_n": 0 }),
            "message",
        ),
        (
            "/v2/rerank",
            json!({ "query": "q", "documents": ["a", "b"], "top_n": 0 }),
            "message",
        ),
    ] {
        let (status, out) = s.post(route, body);
        assert_eq!(status, 400, "{route}: {out}");
        let error = out[field].as_str().unwrap_or("");
        assert!(
            error.contains("`top_n` must be at least 1"),
            "{route}: {out}"
        );
    }
}

#[test]
fn a_dead_inference_thread_fails_health_and_exits_non_zero() {
    let mut s = Server::start_with_env(
        &fixture("tests/fixtures/golden/tiny-bert"),
        &["--drain-seconds", "2"],
        &[("CROSSENC_FAULT", "inference-panic")],
    );
    assert_eq!(s.get("/health").0, 200);
    let (status, body) = s.post("/predict", json!({ "inputs": [["a", "b"]] }));
    assert_eq!(status, 500, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("inference thread"),
        "{body}"
    );
    // Unhealthy until it is gone: /health never answers 200 again.
    if let Ok(r) = ureq::get(&format!("{}/health", s.url))
        .timeout(Duration::from_secs(2))
        .call()
    {
        panic!(
            "health answered {} after the inference thread died",
            r.status()
        );
    }
    let exit = exit_within(&mut s, Duration::from_secs(10)).expect("still running");
    assert!(
        !exit.success(),
        "an orchestrator must see the failure: {exit:?}"
    );
}

/// Issue 39.1: TEI's `truncation_direction` (which Haystack sends): `Left` keeps a text's end,
/// so texts that end alike score alike; `Right` (the default) keeps its start.
#[test]
fn rerank_honours_truncation_direction() {
    let s = Server::start(&fixture("tests/fixtures/golden/tiny-bert"), &[]);
    let (start_a, start_b) = (
        "a dog is running in the park ",
        "a cat is sleeping on the couch ",
    );
    let (end_a, end_b) = (
        "a man is playing a guitar ",
        "paris is the capital of france ",
    );
    let texts = [
        format!("{}{}", start_a.repeat(10), end_a.repeat(10)),
        format!("{}{}", start_b.repeat(10), end_a.repeat(10)),
        format!("{}{}", start_a.repeat(10), end_b.repeat(10)),
    ];
    let by_index = |direction: Option<&str>| {
        let mut body = json!({ "query": "guitar", "texts": texts });
        if let Some(d) = direction {
            body["truncation_direction"] = json!(d);
        }
        let (status, out) = s.post("/rerank", body);
        assert_eq!(status, 200, "{direction:?}: {out}");
        let mut scores = vec![0f32; 3];
        for r in out.as_array().unwrap() {
            scores[r["index"].as_u64().unwrap() as usize] = r["score"].as_f64().unwrap() as f32;
        }
        scores
    };
    for left in ["Left", "left"] {
        let scores = by_index(Some(left));
        assert!((scores[0] - scores[1]).abs() < 1e-6, "{left}: {scores:?}");
        assert!((scores[0] - scores[2]).abs() > 1e-4, "{left}: {scores:?}");
    }
    for right in [None, Some("Right")] {
        let scores = by_index(right);
        assert!(
            (scores[0] - scores[2]).abs() < 1e-6,
            "{right:?}: {scores:?}"
        );
        assert!(
            (scores[0] - scores[1]).abs() > 1e-4,
            "{right:?}: {scores:?}"
        );
    }
    let body = json!({ "query": "q", "texts": ["a"], "truncation_direction": "Up" });
    assert_eq!(s.post("/rerank", body).0, 422);
    let (status, out) = s.post(
        "/predict",
        json!({ "inputs": [["guitar", &texts[0]], ["guitar", &texts[1]]], "truncation_direction": "Left" }),
    );
    assert_eq!(status, 200, "{out}");
    let scores = scores_of(&out);
    assert!((scores[0] - scores[1]).abs() < 1e-6, "{scores:?}");
}

/// Issue 39.2: `/predict` takes what TEI takes, a text, a pair or a batch of both, and answers
/// a batch with one list of {score, label} per input, one input with one list.
#[test]
fn predict_takes_a_text_a_pair_or_a_batch_as_tei_does() {
    let dir = fixture("tests/fixtures/golden/tiny-bert");
    let g = read_json(&dir.join("golden.json"));
    let s = Server::start(&dir, &[]);
    let pairs = golden_pairs(&g);
    let want = f32s(&g["predict_scores"]);
    let (a, b) = &pairs[0];
    let (status, one) = s.post("/predict", json!({ "inputs": [a, b] }));
    assert_eq!(status, 200, "{one}");
    assert_eq!(one.as_array().unwrap().len(), 1, "{one}");
    assert_eq!(one[0]["label"], "LABEL_0");
    assert!((one[0]["score"].as_f64().unwrap() as f32 - want[0]).abs() < 1e-4);
    let (status, text) = s.post("/predict", json!({ "inputs": a }));
    assert_eq!(status, 200, "{text}");
    assert!(text[0]["score"].is_number(), "{text}");
    let (status, alone) = s.post("/predict", json!({ "inputs": [a] }));
    assert_eq!(status, 200, "{alone}");
    assert_eq!(alone, text, "[a] is the text a alone");
    let (status, batch) = s.post("/predict", json!({ "inputs": [[a], [a, b]] }));
    assert_eq!(status, 200, "{batch}");
    assert_eq!(batch[0], text, "{batch}");
    assert_eq!(batch[1], one, "{batch}");
    for bad in [
        json!([a, b, "c"]),
        json!([[a, b, "c"]]),
        json!([[]]),
        json!(5),
    ] {
        let (status, out) = s.post("/predict", json!({ "inputs": bad }));
        assert_eq!(status, 422, "{bad}: {out}");
    }
}

/// Issue 39.2: `/info` carries TEI's fields, `model_type: {reranker: {id2label, label2id}}`
/// included, as TEI clients read it.
#[test]
fn info_has_tei_fields_and_model_type() {
    let s = Server::start(&fixture("tests/fixtures/golden/tiny-bert"), &[]);
    let info: Value = serde_json::from_str(&s.get("/info").1).unwrap();
    assert_eq!(
        info["model_type"],
        json!({ "reranker": { "id2label": { "0": "LABEL_0" }, "label2id": { "LABEL_0": 0 } } })
    );
    for field in [
        "model_id",
        "served_model_name",
        "max_client_batch_size",
        "auto_truncate",
    ] {
        assert!(!info[field].is_null(), "{field}: {info}");
    }
    let s = Server::start(&fixture("tests/fixtures/golden/tiny-bert-3labels"), &[]);
    let info: Value = serde_json::from_str(&s.get("/info").1).unwrap();
    assert_eq!(info["model_type"]["classifier"]["id2label"]["2"], "LABEL_2");
}

/// The schema of `route`'s request body in the served document, its `$ref` followed.
fn request_schema(s: &Server, route: &str) -> Value {
    let doc: Value = serde_json::from_str(&s.get("/openapi.json").1).unwrap();
    let schema =
        &doc["paths"][route]["post"]["requestBody"]["content"]["application/json"]["schema"];
    let name = schema["$ref"].as_str().unwrap().rsplit('/').next().unwrap();
    doc["components"]["schemas"][name].clone()
}

/// Issue 39.3: an empty list is refused 400, and the document says at least one is needed.
#[test]
fn empty_lists_are_refused_and_the_document_says_so() {
    let s = Server::start(&fixture("tests/fixtures/golden/tiny-bert"), &[]);
    for (route, body, list) in [
        ("/rerank", json!({ "query": "q", "texts": [] }), "texts"),
        (
            "/v1/rerank",
            json!({ "query": "q", "documents": [] }),
            "documents",
        ),
        (
            "/v2/rerank",
            json!({ "query": "q", "documents": [] }),
            "documents",
        ),
    ] {
        assert_eq!(s.post(route, body).0, 400, "{route}");
        let schema = request_schema(&s, route);
        assert_eq!(
            schema["properties"][list]["minItems"], 1,
            "{route}: {schema}"
        );
    }
    assert_eq!(s.post("/predict", json!({ "inputs": [] })).0, 400);
    let inputs = &request_schema(&s, "/predict")["properties"]["inputs"];
    let batch = inputs["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["items"].get("oneOf").is_some())
        .unwrap();
    assert_eq!(batch["minItems"], 1, "{inputs}");
}

/// Issue 39.4: unknown fields are ignored on every route, as TEI and Cohere ignore them, and
/// the document says so.
#[test]
fn unknown_fields_are_ignored_and_the_document_says_so() {
    let s = Server::start(&fixture("tests/fixtures/golden/tiny-bert"), &[]);
    for (route, body) in [
        (
            "/rerank",
            json!({ "query": "q", "texts": ["a"], "extra": 1 }),
        ),
        ("/predict", json!({ "inputs": [["q", "a"]], "extra": 1 })),
        (
            "/v1/rerank",
            json!({ "query": "q", "documents": ["a"], "extra": 1 }),
        ),
        (
            "/v2/rerank",
            json!({ "query": "q", "documents": ["a"], "extra": 1 }),
        ),
    ] {
        let (status, out) = s.post(route, body);
        assert_eq!(status, 200, "{route}: {out}");
        assert_eq!(
            request_schema(&s, route)["additionalProperties"],
            true,
            "{route}"
        );
    }
}

/// Issue 39.5: `top_n` has no maximum: a number beyond usize asks for every text.
#[test]
fn top_n_beyond_usize_asks_for_every_text() {
    let s = Server::start(&fixture("tests/fixtures/golden/tiny-bert"), &[]);
    for top_n in ["18446744073709551616", "1e30", "3"] {
        for (route, list, results) in [
            ("/rerank", "texts", None),
            ("/v1/rerank", "documents", Some("results")),
            ("/v2/rerank", "documents", Some("results")),
        ] {
            let body = format!(r#"{{"query": "q", "{list}": ["a", "b"], "top_n": {top_n}}}"#);
            let (status, out) = s.post_raw(route, &body);
            assert_eq!(status, 200, "{route} {top_n}: {out}");
            let ranked = results.map_or(&out, |r| &out[r]);
            assert_eq!(
                ranked.as_array().unwrap().len(),
                2,
                "{route} {top_n}: {out}"
            );
        }
    }
    for bad in ["-1", "1.5", "\"2\""] {
        let body = format!(r#"{{"query": "q", "texts": ["a"], "top_n": {bad}}}"#);
        assert_eq!(s.post_raw("/rerank", &body).0, 422, "{bad}");
    }
}

/// Whether an OpenAPI 3.1 schema admits null: `"null"` among its types.
fn takes_null(schema: &Value) -> bool {
    schema["type"]
        .as_array()
        .is_some_and(|types| types.contains(&json!("null")))
}

/// Issue 39.6: a field of the wrong type is refused 422; null is taken as "left out" where the
/// document declares the field nullable (as TEI's and Cohere's clients send it).
#[test]
fn wrong_types_are_refused_and_null_is_declared() {
    let s = Server::start(&fixture("tests/fixtures/golden/tiny-bert"), &[]);
    for route in ["/v1/rerank", "/v2/rerank"] {
        for (field, bad) in [
            ("model", json!({})),
            ("top_n", json!("2")),
            ("return_documents", json!(1)),
        ] {
            let mut body = json!({ "query": "q", "documents": ["a"] });
            body[field] = bad;
            let (status, out) = s.post(route, body);
            assert_eq!(status, 422, "{route} {field}: {out}");
        }
        let body = json!({ "query": "q", "documents": ["a"], "model": "m", "top_n": null, "return_documents": null });
        let (status, out) = s.post(route, body);
        assert_eq!(status, 200, "{route}: {out}");
        let schema = request_schema(&s, route);
        for field in ["model", "top_n", "return_documents"] {
            assert!(takes_null(&schema["properties"][field]), "{route} {field}");
        }
    }
    let body = json!({ "query": "q", "texts": ["a"], "top_n": null, "truncate": null });
    assert_eq!(s.post("/rerank", body).0, 200);
    let schema = request_schema(&s, "/rerank");
    for field in ["top_n", "truncate"] {
        assert!(takes_null(&schema["properties"][field]), "{field}");
    }
    let body = json!({ "query": "q", "texts": ["a"], "raw_scores": null });
    assert_eq!(s.post("/rerank", body).0, 422, "raw_scores is not nullable");
}

/// Issue 39.7: with an API key, the document lists the 401 of every guarded route; without
/// one, it asks for no key.
#[test]
fn the_document_lists_401_on_every_guarded_route() {
    let s = Server::start(
        &fixture("tests/fixtures/golden/tiny-bert"),
        &["--api-key", "k"],
    );
    let doc = ureq::get(&format!("{}/openapi.json", s.url))
        .set("authorization", "Bearer k")
        .call()
        .unwrap()
        .into_json::<Value>()
        .unwrap();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let guarded = op.get("security") != Some(&json!([]));
            let status = match method.as_str() {
                "get" => s.get(path).0,
                _ => s.post(path, json!({})).0,
            };
            assert_eq!(status == 401, guarded, "{method} {path}: {status}");
            assert_eq!(
                op["responses"].get("401").is_some(),
                guarded,
                "{method} {path}"
            );
        }
    }
    // Without a key, nothing asks for one, and nothing answers 401.
    let s = Server::start(&fixture("tests/fixtures/golden/tiny-bert"), &[]);
    let doc: Value = serde_json::from_str(&s.get("/openapi.json").1).unwrap();
    assert!(doc.get("security").is_none() && doc["components"].get("securitySchemes").is_none());
    for (path, item) in doc["paths"].as_object().unwrap() {
        for op in item.as_object().unwrap().values() {
            assert!(op.get("security").is_none(), "{path}");
            assert!(op["responses"].get("401").is_none(), "{path}");
        }
    }
}

/// Issue 39.8: a body not declared JSON is answered 415, in each route's error shape.
#[test]
fn a_body_not_declared_json_is_answered_415() {
    let s = Server::start(&fixture("tests/fixtures/golden/tiny-bert"), &[]);
    let rerank = r#"{"query": "q", "texts": ["a"], "documents": ["a"]}"#;
    for (route, body, field) in [
        ("/rerank", rerank, "error"),
        ("/predict", r#"{"inputs": [["q", "a"]]}"#, "error"),
        ("/v1/rerank", rerank, "message"),
        ("/v2/rerank", rerank, "message"),
    ] {
        for content_type in ["text/plain", "application/x-www-form-urlencoded", "jsonish"] {
            let (status, out) = s.post_typed(route, content_type, body);
            assert_eq!(status, 415, "{route} {content_type}: {out}");
            assert!(out[field].is_string(), "{route}: {out}");
        }
        for content_type in [
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/vnd.api+json",
        ] {
            let (status, out) = s.post_typed(route, content_type, body);
            assert_eq!(status, 200, "{route} {content_type}: {out}");
        }
        let doc: Value = serde_json::from_str(&s.get("/openapi.json").1).unwrap();
        assert!(
            doc["paths"][route]["post"]["responses"]
                .get("415")
                .is_some(),
            "{route}"
        );
    }
}

/// Runs `program` with `args` in `target/` (schemathesis writes its crash cache where it
/// runs), killed past `limit`: (whether it succeeded, its output).
fn run_within(program: &std::path::Path, args: &[&str], limit: Duration) -> (bool, String) {
    let mut child = Command::new(program)
        .args(args)
        .current_dir(repo().join("target"))
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let ok = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.success();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    (ok, text.into_owned())
}

/// Issue 39: schemathesis (every check, valid and invalid data) finds no answer that the
/// document does not describe, with and without an API key.
#[test]
fn schemathesis_finds_no_failure_with_and_without_an_api_key() {
    let Some(st) = optional(repo().join("target/fixtures/py/bin/st")) else {
        return;
    };
    let dir = fixture("tests/fixtures/golden/tiny-bert");
    for key in [None, Some("k3y")] {
        let extra: Vec<&str> = key.map_or(vec![], |k| vec!["--api-key", k]);
        let s = Server::start(&dir, &extra);
        let spec = format!("{}/openapi.json", s.url);
        let auth = format!("Authorization: Bearer {}", key.unwrap_or(""));
        let mut args = vec!["run", &spec, "--checks", "all", "--mode", "all", "-n", "40"];
        args.extend(["--seed", "39", "--generation-database", "none"]);
        args.extend(["--request-timeout", "30"]);
        if key.is_some() {
            args.extend(["-H", &auth]);
        }
        let (ok, out) = run_within(&st, &args, Duration::from_secs(300));
        assert!(ok, "key {key:?}:\n{out}");
    }
}

/// Issue 39: a real TEI client, Haystack's HuggingFaceTEIRanker, ranks as `/rerank` does and
/// sends `truncation_direction`, which the server honours.
#[test]
fn a_real_tei_client_reranks_like_rerank() {
    let Some(python) = optional(repo().join("target/fixtures/py/bin/python")) else {
        return;
    };
    let s = Server::start(
        &fixture("tests/fixtures/golden/tiny-bert"),
        &["--api-key", "k3y"],
    );
    let script = repo().join("scripts/haystack_tei.py");
    let args = [script.to_str().unwrap(), &s.url, "k3y"];
    let (ok, out) = run_within(&python, &args, Duration::from_secs(120));
    assert!(ok, "{out}");
    assert!(out.contains("\"ranked\": 3"), "{out}");
}
