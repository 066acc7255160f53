//! A local stand-in for the Hugging Face hub: serves folders in the hub's URL layout
//! (`/{repo}/resolve/{revision}/{file}`, datasets under `/datasets/{repo}/...`) with the headers
//! a hub client reads (ETag, X-Repo-Commit, Content-Length, Content-Range), on 127.0.0.1 and a
//! random port; or a hostile one that lies in one of the ways that [`Lie`] names.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// How a hostile stand-in lies (issue 38): names meant to escape the cache, or a long body.
#[derive(Clone)]
pub enum Lie {
    /// This `ETag` for every file.
    Etag(String),
    /// This `X-Repo-Commit` for every file.
    Commit(String),
    /// One more file of this name in every listing; a file it does not have is served anyway.
    FileName(String),
    /// Every file advertised as this many bytes (`X-Linked-Size`, and the `Content-Range` of a
    /// `bytes=0-0` probe), then sent as 1 MiB without a length.
    LongBody(u64),
}

struct Stand {
    repos: HashMap<String, PathBuf>,
    lie: Option<Lie>,
}

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
    start(repos, None)
}

/// Serves `repos` as [`serve`] does, but tells `lie`.
pub fn serve_lying(repos: Vec<(String, PathBuf)>, lie: Lie) -> HubServer {
    start(repos, Some(lie))
}

fn start(repos: Vec<(String, PathBuf)>, lie: Option<Lie>) -> HubServer {
    let stand = Arc::new(Stand {
        repos: repos.into_iter().collect(),
        lie,
    });
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
            let app = Router::new().route("/{*path}", get(file)).with_state(stand);
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
    State(stand): State<Arc<Stand>>,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Response {
    let repos = &stand.repos;
    // The repository info API: /api/{models|datasets}/{owner}/{name}/revision/{rev}.
    if let Some(api) = path.strip_prefix("api/") {
        let repo = api.split("/revision/").next().unwrap_or("");
        let key = repo.strip_prefix("models/").unwrap_or(repo);
        let Some(dir) = repos.get(key) else {
            return StatusCode::NOT_FOUND.into_response();
        };
        let mut files = Vec::new();
        siblings(dir, "", &mut files);
        if let Some(Lie::FileName(name)) = &stand.lie {
            files.push(name.clone());
        }
        let body = serde_json::json!({
            "sha": COMMIT,
            "siblings": files.iter().map(|f| serde_json::json!({"rfilename": f})).collect::<Vec<_>>(),
        });
        return (StatusCode::OK, body.to_string()).into_response();
    }
    // `/{repo}/resolve/{revision}/{file}`; a client may have collapsed a `../` in the file name.
    let found = path
        .split_once("/resolve/")
        .and_then(|(repo, rest)| Some((repos.get(repo)?, rest.split_once('/')?.1)))
        .and_then(|(dir, file)| std::fs::read(dir.join(file)).ok());
    let bytes = match (found, &stand.lie) {
        (Some(bytes), _) => bytes,
        (None, Some(Lie::FileName(_))) => b"lie\n".to_vec(),
        (None, _) => return StatusCode::NOT_FOUND.into_response(),
    };
    // The etag names the blob in the cache: any stable digest of the content will do.
    let etag = match &stand.lie {
        Some(Lie::Etag(e)) => format!("\"{e}\""),
        _ => format!("\"{:016x}{:08x}\"", fnv(&bytes), bytes.len()),
    };
    let commit = match &stand.lie {
        Some(Lie::Commit(c)) => c.as_str(),
        _ => COMMIT,
    };
    if let Some(Lie::LongBody(size)) = stand.lie {
        return long_body(&headers, size, &etag, commit);
    }
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
        .insert("x-repo-commit", commit.parse().unwrap());
    resp
}

/// `size` bytes advertised, to a `bytes=0-0` probe too; 1 MiB sent, chunked, to a download.
fn long_body(headers: &HeaderMap, size: u64, etag: &str, commit: &str) -> Response {
    let probe = headers.get("range").is_some_and(|r| r == "bytes=0-0");
    let mut resp = if probe {
        let mut r = (StatusCode::PARTIAL_CONTENT, vec![b'{']).into_response();
        r.headers_mut().insert(
            "content-range",
            format!("bytes 0-0/{size}").parse().unwrap(),
        );
        r
    } else {
        let chunks = (0..16).map(|_| Ok::<_, std::convert::Infallible>(vec![b' '; 64 << 10]));
        let body = axum::body::Body::from_stream(futures_util::stream::iter(chunks));
        (StatusCode::OK, body).into_response()
    };
    let h = resp.headers_mut();
    h.insert("x-linked-size", size.to_string().parse().unwrap());
    h.insert("etag", etag.parse().unwrap());
    h.insert("x-repo-commit", commit.parse().unwrap());
    resp
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    })
}
