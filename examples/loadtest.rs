//! A bounded load test of a running `crossenc serve`: a fixed number of /rerank requests from
//! N concurrent clients on loopback; prints throughput and latency percentiles.
//!
//!     crossenc serve --model MODEL --port 8080 &
//!     cargo run --release --example loadtest -- http://127.0.0.1:8080 400 8 20
//!
//! Arguments: URL, requests (400), clients (8), texts per request (20). Each request re-ranks
//! STS-B test sentences (../shared/data) or, without them, generated sentences.

use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "http://127.0.0.1:8080".into());
    if !(url.starts_with("http://127.")
        || url.starts_with("http://localhost")
        || url.starts_with("http://[::1]"))
    {
        eprintln!("refusing {url}: this load test only targets loopback");
        std::process::exit(2);
    }
    let arg = |i: usize, d: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(d);
    let (requests, clients, per_request) = (arg(2, 400), arg(3, 8).max(1), arg(4, 20).max(1));
    let sentences: Vec<String> = std::fs::read_to_string("../shared/data/stsb/stsb-en-test.csv")
        .map(|t| {
            csv::ReaderBuilder::new()
                .has_headers(false)
                .from_reader(t.as_bytes())
                .records()
                .filter_map(Result::ok)
                .map(|r| r[1].to_string())
                .collect()
        })
        .unwrap_or_else(|_| {
            (0..500)
                .map(|i| format!("Sentence number {i} talks about a guitar, a dog or the weather."))
                .collect()
        });
    let body = |i: usize| {
        let texts: Vec<&String> = (0..per_request)
            .map(|j| &sentences[(i * per_request + j) % sentences.len()])
            .collect();
        serde_json::json!({ "query": sentences[i % sentences.len()], "texts": texts }).to_string()
    };
    let start = Instant::now();
    let mut latencies: Vec<Duration> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let url = &url;
                let body = &body;
                s.spawn(move || {
                    let mut mine = Vec::new();
                    for i in (c..requests).step_by(clients) {
                        let t = Instant::now();
                        let r = ureq::post(&format!("{url}/rerank"))
                            .set("content-type", "application/json")
                            .timeout(Duration::from_secs(120))
                            .send_string(&body(i));
                        match r {
                            Ok(_) => mine.push(t.elapsed()),
                            Err(e) => eprintln!("request {i}: {e}"),
                        }
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("client thread"))
            .collect()
    });
    let wall = start.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "{} ok of {requests} requests ({clients} clients, {per_request} texts each) in {wall:.1} s: {:.1} requests/s, {:.0} pairs/s, p50 {:.0} ms, p99 {:.0} ms",
        latencies.len(),
        latencies.len() as f64 / wall,
        (latencies.len() * per_request) as f64 / wall,
        pct(0.50),
        pct(0.99)
    );
}
