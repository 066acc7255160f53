//! A local stand-in for the Hugging Face hub: serves folders in the hub's URL layout
//! (`/{repo}/resolve/{revision}/{file}`, datasets under `/datasets/{repo}/...`) with the headers
//! hf-hub reads (etag, x-repo-commit, Content-Range), on 127.0.0.1 and a random port.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

pub struct HubServer {
    pub endpoint: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for HubServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves each `(repo path, folder)`, e.g. `("org/tiny", dir)` or `("datasets/org/data", dir)`.
pub fn serve(repos: Vec<(String, PathBuf)>) -> HubServer {
    let repos: Arc<HashMap<String, PathBuf>> = Arc::new(repos.into_iter().collect());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let app = Router::new().route("/{*path}", get(file)).with_state(repos);
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
    });
    HubServer {
        endpoint,
        shutdown: Some(tx),
        thread: Some(thread),
    }
}

/// Files under `dir`, relative, as the hub lists a repository's `siblings`.
fn siblings(dir: &std::path::Path, prefix: &str, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = format!("{prefix}{}", e.file_name().to_string_lossy());
        if e.path().is_dir() {
            siblings(&e.path(), &format!("{name}/"), out);
        } else {
            out.push(name);
        }
    }
}

async fn file(
    State(repos): State<Arc<HashMap<String, PathBuf>>>,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Response {
    // The repository info API: /api/{models|datasets}/{owner}/{name}/revision/{rev}.
    if let Some(api) = path.strip_prefix("api/") {
        let repo = api.split("/revision/").next().unwrap_or("");
        let key = repo.strip_prefix("models/").unwrap_or(repo);
        let Some(dir) = repos.get(key) else {
            return StatusCode::NOT_FOUND.into_response();
        };
        let mut files = Vec::new();
        siblings(dir, "", &mut files);
        let body = serde_json::json!({
            "sha": COMMIT,
            "siblings": files.iter().map(|f| serde_json::json!({"rfilename": f})).collect::<Vec<_>>(),
        });
        return (StatusCode::OK, body.to_string()).into_response();
    }
    let Some((repo, rest)) = path.split_once("/resolve/") else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let Some((_revision, file)) = rest.split_once('/') else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let Some(dir) = repos.get(repo) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let Ok(bytes) = std::fs::read(dir.join(file)) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    // The etag names the blob in the cache: any stable digest of the content will do.
    let etag = format!("\"{:016x}{:08x}\"", fnv(&bytes), bytes.len());
    let len = bytes.len();
    let range = headers
        .get("range")
        .and_then(|r| r.to_str().ok())
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .map(|(s, e)| {
            (
                s.parse::<usize>().unwrap_or(0),
                e.parse::<usize>().unwrap_or(len.saturating_sub(1)),
            )
        });
    let mut resp = match range {
        Some((start, end)) if start < len => {
            let end = end.min(len - 1);
            let mut r = (StatusCode::PARTIAL_CONTENT, bytes[start..=end].to_vec()).into_response();
            r.headers_mut().insert(
                "content-range",
                format!("bytes {start}-{end}/{len}").parse().unwrap(),
            );
            r
        }
        _ => (StatusCode::OK, bytes).into_response(),
    };
    resp.headers_mut().insert("etag", etag.parse().unwrap());
    resp.headers_mut()
        .insert("x-repo-commit", COMMIT.parse().unwrap());
    resp
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    })
}
