//! The HTTP re-ranking and scoring server: a thin axum router over the dynamic batcher.
//!
//! Routes and field names follow HuggingFace text-embeddings-inference (`/rerank`, `/predict`,
//! `/health`, `/info`, `/metrics`), so a search stack that calls TEI can call crossenc; Cohere's
//! `/v1/rerank` and `/v2/rerank` serve the clients that speak Cohere's API, and
//! `/openapi.json` describes every route. With an API key, every route but `/health` and
//! `/metrics` wants `Authorization: Bearer <key>`.
//!
//! Slow clients: a connection that has not sent a whole request head `header_timeout` after it
//! opened or after its last answer (idle keep-alive included) is closed, and a body that has not
//! arrived `body_timeout` after its head is answered 408 and the connection closed, so that
//! half-sent requests and idle connections cannot pile up.
//!
//! Logs: one `tracing` event per request, in a `request{method, route}` span, with its status,
//! pairs, tokens and times (tokenization, queue, inference, total), and an error's message;
//! never the texts. Metrics: see `metrics.rs`.
//!
//! Stopping: on the shutdown signal the server stops accepting, answers what is in flight, and
//! after `drain` closes whatever is still open (a client that never finishes its request
//! cannot hold it up). If the inference thread dies, `/health` answers 503 and the server shuts
//! down the same way, returning an error, so that an orchestrator restarts it.

mod batcher;
mod cohere;
mod metrics;
mod openapi;

use anyhow::Result;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

use crate::model::tokenize::PairTokenizer;
use crate::{CrossEncoder, Quantization, Scores};
use batcher::{Batcher, Job, Rejected};
use metrics::{Metrics, Stats};
use std::cell::Cell;
use tracing::Instrument;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::ToSchema;

tokio::task_local! {
    /// The scored request's stats, set by `score` for the `record` middleware that wraps it
    /// (the handler runs in the middleware's task).
    static STATS: Cell<Option<Stats>>;
}

/// How `serve` runs: the model's name, limits, timeouts and the API key.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The name `/info` and the responses give the model.
    pub model_id: String,
    /// Most padded tokens in one forward pass.
    pub max_batch_tokens: usize,
    /// Most pairs (texts for /rerank) in one request.
    pub max_client_batch_size: usize,
    /// Requests that may wait for the inference thread; more are answered 503.
    pub max_queue: usize,
    /// Largest request body in bytes.
    pub body_limit: usize,
    /// How long shutdown waits for open requests before closing them.
    pub drain: Duration,
    /// How long a connection may take to send a request head, counted from when it opened or
    /// was last answered: it also closes idle keep-alive connections.
    pub header_timeout: Duration,
    /// How long a request body may take to arrive after its head.
    pub body_timeout: Duration,
    /// The bearer token clients must send, if any.
    pub api_key: Option<String>,
}

struct AppState {
    batcher: Batcher,
    tokenizer: PairTokenizer,
    metrics: Arc<Metrics>,
    info: Info,
    /// The model's labels, by output index.
    labels: Vec<String>,
    max_client_batch_size: usize,
    body_limit: usize,
    body_timeout: Duration,
    api_key: Option<String>,
    /// `/openapi.json`, built at start-up for this configuration.
    openapi: String,
    /// False once the inference thread has died.
    healthy: Arc<AtomicBool>,
}

/// An error answer: TEI's `{"error", "error_type"}` body with a status.
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
        }
    }
}

/// TEI's error body.
#[derive(Serialize, ToSchema)]
#[schema(as = Error)]
struct ErrorBody {
    error: String,
    error_type: &'static str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let failure = self.failure();
        let body = Json(ErrorBody {
            error: self.message,
            error_type: self.kind,
        });
        (self.status, axum::Extension(failure), body).into_response()
    }
}

impl ApiError {
    /// What the `record` middleware logs and counts of this error.
    fn failure(&self) -> Failure {
        Failure {
            kind: self.kind,
            message: self.message.clone(),
        }
    }
}

/// An error answer's type and message, carried in the response's extensions to its log line.
#[derive(Clone)]
struct Failure {
    kind: &'static str,
    message: String,
}

impl Failure {
    /// TEI's `err` label of `te_request_failure` for this error type.
    fn err_label(&self) -> &'static str {
        match self.kind {
            "Validation" | "Empty" => "validation",
            "Tokenizer" => "tokenization",
            "Overloaded" => "overloaded",
            "Backend" => "inference",
            "Unhealthy" => "unhealthy",
            "Timeout" => "timeout",
            "Unauthorized" => "unauthorized",
            _ => "other",
        }
    }
}

/// A JSON body whose every failure is a JSON error: 415 unless it is declared JSON, 413 over
/// the size limit, 408 when it does not arrive within the body timeout, 422 for invalid JSON or
/// wrong types.
struct JsonBody<T>(T);

/// Whether a `Content-Type` names JSON (`application/json` or `application/<x>+json`, any
/// parameters), as axum's `Json` and so TEI require.
fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    let Some((kind, sub)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (sub.eq_ignore_ascii_case("json") || sub.to_ascii_lowercase().ends_with("+json"))
}

impl<T: DeserializeOwned> FromRequest<Arc<AppState>> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, ApiError> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        if !content_type.is_some_and(is_json) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Validation",
                "the request body must be JSON, sent with Content-Type: application/json",
            ));
        }
        let read = tokio::time::timeout(state.body_timeout, Bytes::from_request(req, state));
        // Dropping the unread body makes hyper close the connection after the answer.
        let read = read.await.map_err(|_| {
            let secs = state.body_timeout.as_secs();
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "Timeout",
                format!("the request body did not arrive within {secs} s of its headers"),
            )
        })?;
        let bytes = read.map_err(|e| {
            let status = e.status();
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                let limit = state.body_limit;
                let message = format!(
                    "the request body is over the server's limit of {limit} bytes: send fewer or shorter texts"
                );
                ApiError::new(status, "Validation", message)
            } else {
                ApiError::new(status, "Empty", e.body_text())
            }
        })?;
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Validation",
                format!("invalid request body: {e}"),
            )
        })
    }
}

/// TEI's `truncation_direction`: which end of a text over the max length is cut. `Left` keeps
/// its end.
#[derive(Deserialize, Clone, Copy, Default)]
enum TruncationDirection {
    #[serde(alias = "left")]
    Left,
    #[default]
    #[serde(alias = "right")]
    Right,
}

/// By hand: the derive does not see serde's aliases, which the server takes too.
impl utoipa::PartialSchema for TruncationDirection {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(["Left", "Right", "left", "right"]))
            .default(Some(json!("Right")))
            .into()
    }
}

impl ToSchema for TruncationDirection {}

impl From<TruncationDirection> for tokenizers::TruncationDirection {
    fn from(d: TruncationDirection) -> Self {
        match d {
            TruncationDirection::Left => Self::Left,
            TruncationDirection::Right => Self::Right,
        }
    }
}

/// Any whole JSON number at least 0 (`3`, `3.0`, `1e30`), or null, as JSON Schema's `integer`
/// (the document's) takes it. `top_n` over the texts' count asks for them all, so one beyond
/// `usize` saturates rather than being refused.
fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    if let Some(u) = n.as_u64() {
        return Ok(Some(usize::try_from(u).unwrap_or(usize::MAX)));
    }
    match n.as_f64() {
        // `as` saturates: a number beyond usize becomes usize::MAX.
        Some(f) if f >= 0.0 && f.fract() == 0.0 => Ok(Some(f as usize)),
        _ => Err(serde::de::Error::custom(format!(
            "invalid number {n}: expected a whole number, at least 0"
        ))),
    }
}

/// TEI's fields, and `top_n`; unknown fields are ignored, as TEI ignores them.
#[derive(Deserialize, ToSchema)]
struct RerankRequest {
    query: String,
    #[schema(min_items = 1)]
    texts: Vec<String>,
    /// Any whole number from 1; one over the count of texts asks for them all.
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(minimum = 1)]
    top_n: Option<usize>,
    #[serde(default)]
    return_text: bool,
    #[serde(default)]
    raw_scores: bool,
    /// Truncate pairs longer than the model's max length (default); false makes them an error.
    truncate: Option<bool>,
    #[serde(default)]
    truncation_direction: TruncationDirection,
}

#[derive(Serialize, ToSchema)]
struct Rank {
    index: usize,
    score: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
}

/// TEI's `/predict` input: a text, a pair (`[a, b]`; `[a]` is a text), or a batch of both
/// (`[[a], [a, b]]`). Lengths are checked after parsing, for a clearer error.
#[derive(Deserialize)]
#[serde(
    untagged,
    expecting = "a string, a pair [string, string], or a batch [[string], [string, string], ...]"
)]
enum PredictInput {
    Text(String),
    Batch(Vec<Vec<String>>),
    Single(Vec<String>),
}

/// By hand: the lengths the handler checks (a text or a pair; a batch of at least one) are
/// not in the types.
impl utoipa::PartialSchema for PredictInput {
    fn schema() -> RefOr<Schema> {
        let string = || ObjectBuilder::new().schema_type(Type::String);
        let texts = |n| {
            ArrayBuilder::new()
                .items(string())
                .min_items(Some(n))
                .max_items(Some(n))
        };
        let sequence = || OneOfBuilder::new().item(texts(1)).item(texts(2));
        let batch = ArrayBuilder::new().items(sequence()).min_items(Some(1));
        OneOfBuilder::new()
            .item(string())
            .item(texts(1))
            .item(texts(2))
            .item(batch)
            .into()
    }
}

impl ToSchema for PredictInput {}

/// TEI's fields; unknown fields are ignored, as TEI ignores them.
#[derive(Deserialize, ToSchema)]
struct PredictRequest {
    #[schema(inline)]
    inputs: PredictInput,
    #[serde(default)]
    raw_scores: bool,
    truncate: Option<bool>,
    #[serde(default)]
    truncation_direction: TruncationDirection,
}

/// One label's score, as TEI writes it.
#[derive(Serialize, ToSchema)]
struct Prediction {
    score: f32,
    label: String,
}

/// TEI's `/predict` answer: a list of predictions (best first) for one input, a list of those
/// for a batch.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
enum PredictResponse {
    Single(Vec<Prediction>),
    Batch(Vec<Vec<Prediction>>),
}

/// `/info`: TEI's fields, then crossenc's own (`architecture` and on).
#[derive(Serialize, Clone, ToSchema)]
struct Info {
    model_id: String,
    /// Always null: a local folder has no hub commit.
    model_sha: Option<String>,
    model_dtype: &'static str,
    served_model_name: String,
    model_type: ModelType,
    max_concurrent_requests: usize,
    max_input_length: usize,
    max_batch_tokens: usize,
    /// Always null: batches are bounded by tokens only.
    max_batch_requests: Option<usize>,
    max_client_batch_size: usize,
    /// `truncate` defaults to true.
    auto_truncate: bool,
    tokenization_workers: usize,
    version: &'static str,
    /// Always null, as TEI's outside its own builds.
    sha: Option<&'static str>,
    docker_label: Option<&'static str>,
    /// The model's family (its config's `model_type`).
    architecture: &'static str,
    labels: Vec<String>,
    activation: &'static str,
    int8_kernel: Option<String>,
    /// The bf16 kernel, when the model scores in bf16 (AMX's tiles or AVX-512 BF16).
    bf16_kernel: Option<&'static str>,
    max_body_bytes: usize,
}

/// TEI's `model_type`: `{"reranker": {...}}` for a one-label model, `{"classifier": {...}}`.
#[derive(Serialize, Clone, ToSchema)]
#[serde(rename_all = "lowercase")]
enum ModelType {
    Classifier(ClassifierModel),
    Reranker(ClassifierModel),
}

#[derive(Serialize, Clone, ToSchema)]
struct ClassifierModel {
    id2label: std::collections::BTreeMap<String, String>,
    label2id: std::collections::BTreeMap<String, usize>,
}

/// What `/info` says of the model and the server (TEI's fields and crossenc's own).
fn info(ce: &CrossEncoder, cfg: &ServeConfig) -> Info {
    let labels = &ce.config.id2label;
    let classes = ClassifierModel {
        id2label: labels
            .iter()
            .enumerate()
            .map(|(i, l)| (i.to_string(), l.clone()))
            .collect(),
        label2id: labels
            .iter()
            .enumerate()
            .map(|(i, l)| (l.clone(), i))
            .collect(),
    };
    Info {
        model_id: cfg.model_id.clone(),
        model_sha: None,
        model_dtype: match ce.quantization() {
            None => "float32",
            Some(Quantization::Int8) => "int8",
            Some(Quantization::Bf16) => "bfloat16",
        },
        served_model_name: cfg.model_id.clone(),
        // As TEI: one label scores relevance, several classify.
        model_type: match labels.len() {
            1 => ModelType::Reranker(classes),
            _ => ModelType::Classifier(classes),
        },
        max_concurrent_requests: cfg.max_queue,
        max_input_length: ce.tokenizer.max_length,
        max_batch_tokens: cfg.max_batch_tokens,
        max_batch_requests: None,
        max_client_batch_size: cfg.max_client_batch_size,
        auto_truncate: true,
        tokenization_workers: rayon::current_num_threads(),
        version: env!("CARGO_PKG_VERSION"),
        sha: None,
        docker_label: None,
        architecture: ce.config.family.model_type(),
        labels: labels.clone(),
        activation: ce.activation.torch_name(),
        int8_kernel: (ce.quantization() == Some(Quantization::Int8)).then(crate::ops::int8::kernel),
        bf16_kernel: (ce.quantization() == Some(Quantization::Bf16))
            .then(crate::ops::bf16::kernel)
            .flatten(),
        max_body_bytes: cfg.body_limit,
    }
}

/// The routes (TEI's, Cohere's, the OpenAPI document, health, info, metrics), behind the API
/// key check and the request metrics.
fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/rerank", post(rerank))
        .route("/predict", post(predict))
        .route("/v1/rerank", post(cohere::rerank_v1))
        .route("/v2/rerank", post(cohere::rerank_v2))
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/health", get(health))
        .route("/info", get(model_info))
        .route("/metrics", get(prometheus))
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(middleware::from_fn_with_state(state.clone(), record))
        .layer(DefaultBodyLimit::max(state.body_limit))
        .with_state(state)
}

/// Builds the router; `shutdown` resolves when the server should stop accepting requests.
pub async fn serve(
    ce: CrossEncoder,
    cfg: ServeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let metrics = Arc::new(Metrics::new(ce.tokenizer.max_length)?);
    let upkeep = metrics.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.upkeep();
        }
    });
    let info = info(&ce, &cfg);
    let labels = ce.config.id2label.clone();
    let tokenizer = ce.tokenizer.clone();
    let mut ce = ce;
    ce.max_batch_tokens = cfg.max_batch_tokens;
    let healthy = Arc::new(AtomicBool::new(true));
    let (batcher, inference) = Batcher::start(ce, cfg.max_queue, metrics.clone(), healthy.clone());
    // The inference thread returns when the last batcher handle is dropped (after the server),
    // or dies in a panic: that marks the server unhealthy and stops it.
    let (died_tx, mut died) = watch::channel(false);
    let watched = healthy.clone();
    let inference = tokio::task::spawn_blocking(move || {
        let panicked = inference.join().is_err();
        if panicked {
            watched.store(false, Ordering::SeqCst);
            let _ = died_tx.send(true);
        }
        panicked
    });
    let state = Arc::new(AppState {
        batcher,
        tokenizer,
        metrics,
        info,
        labels,
        max_client_batch_size: cfg.max_client_batch_size,
        body_limit: cfg.body_limit,
        body_timeout: cfg.body_timeout,
        api_key: cfg.api_key.clone(),
        openapi: serde_json::to_string(&openapi::document(cfg.api_key.is_some())?)?,
        healthy: healthy.clone(),
    });
    let app = router(state);
    let (stopping_tx, stopping) = watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = shutdown => {}
            _ = died.changed() => {}
        }
        tracing::info!("shutting down: no new connections; answering those in flight");
        let _ = stopping_tx.send(true);
    });
    let server = serve_http1(listener, app, cfg.header_timeout, stopping.clone());
    let deadline = async move {
        stopped(stopping).await;
        tokio::time::sleep(cfg.drain).await;
    };
    tokio::select! {
        () = server => {}
        () = deadline => tracing::warn!(
            "requests still open {:?} after shutdown began: closing them",
            cfg.drain
        ),
    }
    tracing::info!("every connection closed");
    if !healthy.load(Ordering::SeqCst) {
        anyhow::bail!("the inference thread died (a panic while scoring): see the error above");
    }
    // Every request has been answered; the inference thread ends with the last handle. After
    // the drain deadline, handles of closed connections may outlive this: don't wait for them.
    if tokio::time::timeout(cfg.drain, inference)
        .await
        .is_ok_and(|r| matches!(r, Ok(true)))
    {
        anyhow::bail!("the inference thread died (a panic while scoring)");
    }
    Ok(())
}

/// Serves HTTP/1.1 on `listener` until `stopping` turns true, then lets each open connection
/// answer what it has in flight, and returns once all have closed. Not `axum::serve`: that
/// gives hyper no timer, so no header timeout.
async fn serve_http1(
    listener: TcpListener,
    app: Router,
    header_timeout: Duration,
    stopping: watch::Receiver<bool>,
) {
    // Every connection holds a receiver: the sender's `closed` resolves when the last is gone.
    let (open_tx, open) = watch::channel(());
    let stop = stopped(stopping.clone());
    tokio::pin!(stop);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(header_timeout);
        let service = TowerToHyperService::new(app.clone());
        let stop = stopped(stopping.clone());
        let open = open.clone();
        tokio::spawn(async move {
            let conn = http.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            // A connection's errors are its client's (a header timeout, a reset): not reported.
            tokio::select! {
                _ = conn.as_mut() => {}
                () = stop => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(open);
        });
    }
    drop(listener);
    drop(open);
    open_tx.closed().await;
}

/// Resolves once `stopping` is true, or its sender is gone.
async fn stopped(mut stopping: watch::Receiver<bool>) {
    let _ = stopping.wait_for(|s| *s).await;
}

/// After a failed accept: a connection's own failure (reset before it was accepted) is skipped;
/// the process's (out of file descriptors, say) is reported and retried a second later.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!("cannot accept a connection: {e}; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// `/health`'s body.
#[derive(Serialize, ToSchema)]
struct Health {
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
}

/// 200 while the inference thread runs, 503 once it has died.
#[utoipa::path(get, path = "/health", tag = "text-embeddings-inference", responses(
    (status = 200, body = Health, description = "the model can score"),
    (status = 503, body = Health, description = "the inference thread died"),
))]
async fn health(State(s): State<Arc<AppState>>) -> Response {
    if s.healthy.load(Ordering::SeqCst) {
        let body = Health {
            status: "ok",
            error: None,
        };
        Json(body).into_response()
    } else {
        let body = Health {
            status: "unhealthy",
            error: Some("the inference thread died"),
        };
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

/// The model and the server's limits.
#[utoipa::path(get, path = "/info", tag = "text-embeddings-inference", responses(
    (status = 200, body = Info, description = "OK"),
))]
async fn model_info(State(s): State<Arc<AppState>>) -> Json<Info> {
    Json(s.info.clone())
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "text-embeddings-inference", responses(
    (status = 200, body = String, content_type = "text/plain", description = "OK"),
))]
async fn prometheus(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

/// Whether an API key, when set, guards `path`: every route but the probes'.
fn guarded(path: &str) -> bool {
    !matches!(path, "/health" | "/metrics")
}

/// Whether `path` is Cohere's, and so answers errors in Cohere's shape.
fn speaks_cohere(path: &str) -> bool {
    path.starts_with("/v1/") || path.starts_with("/v2/")
}

/// With an API key set, answers 401 to a request without `Authorization: Bearer <key>`
/// (compared in constant time), on the `guarded` routes.
async fn authorize(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    use subtle::ConstantTimeEq;
    let Some(key) = &s.api_key else {
        return next.run(req).await;
    };
    let path = req.uri().path();
    if !guarded(path) {
        return next.run(req).await;
    }
    let sent = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .unwrap_or("");
    if bool::from(sent.as_bytes().ct_eq(key.as_bytes())) {
        return next.run(req).await;
    }
    let e = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "Unauthorized",
        "missing or wrong API key: send the header Authorization: Bearer <key>",
    );
    if speaks_cohere(path) {
        cohere::CohereError(e).into_response()
    } else {
        e.into_response()
    }
}

/// The token of an `Authorization: Bearer <token>` header, the scheme in any case (RFC 7235).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start_matches(' '))
}

/// Logs and counts every request: by route and status, and on the scoring routes as TEI does.
async fn record(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched".to_string(), |p| p.as_str().to_string());
    let span = tracing::info_span!("request", method = %req.method(), route = %route);
    let start = Instant::now();
    let (resp, stats) = STATS
        .scope(Cell::new(None), async {
            let resp = next.run(req).await;
            (resp, STATS.with(Cell::get))
        })
        .instrument(span.clone())
        .await;
    let elapsed = start.elapsed();
    let status = resp.status().as_u16();
    s.metrics.record_request(&route, status, elapsed);
    let failure = resp.extensions().get::<Failure>();
    if matches!(
        route.as_str(),
        "/rerank" | "/predict" | "/v1/rerank" | "/v2/rerank"
    ) {
        let err = (status >= 300).then(|| failure.map_or("other", Failure::err_label));
        s.metrics.record_scoring(elapsed, stats, err);
    }
    let _entered = span.enter();
    log_answer(status, elapsed, stats, failure);
    resp
}

/// A request's log line: info for a success, warn for a 4xx, error for a 5xx.
fn log_answer(status: u16, elapsed: Duration, stats: Option<Stats>, failure: Option<&Failure>) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    macro_rules! answered {
        ($level:ident) => {
            tracing::$level!(
                status,
                pairs = stats.map(|s| s.pairs),
                tokens = stats.map(|s| s.tokens),
                tokenization_ms = stats.map(|s| ms(s.tokenization)),
                queue_ms = stats.map(|s| ms(s.queue)),
                inference_ms = stats.map(|s| ms(s.inference)),
                total_ms = ms(elapsed),
                error_type = failure.map(|f| f.kind),
                error = failure.map(|f| f.message.as_str()),
                "answered"
            )
        };
    }
    match status {
        500.. => answered!(error),
        400..=499 => answered!(warn),
        _ => answered!(info),
    }
}

/// Tokenizes off the async workers, queues, and waits for the inference thread's answer.
/// Scores texts alone (`None`) and pairs, truncating from `direction`.
async fn score(
    s: &Arc<AppState>,
    pairs: Vec<(String, Option<String>)>,
    raw: bool,
    truncate: bool,
    direction: TruncationDirection,
) -> Result<Scores, ApiError> {
    if pairs.len() > s.max_client_batch_size {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Validation",
            format!(
                "batch size {} is over the server's limit of {}: send fewer pairs per request",
                pairs.len(),
                s.max_client_batch_size
            ),
        ));
    }
    let tok = s.tokenizer.clone();
    let tokenizing = Instant::now();
    let sequences =
        tokio::task::spawn_blocking(move || tok.encode_inputs(&pairs, direction.into()))
            .await
            .map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Tokenizer",
                    e.to_string(),
                )
            })?
            .map_err(|e| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Tokenizer",
                    format!("{e:#}"),
                )
            })?;
    if !truncate {
        if let Some(i) = sequences.first_truncated() {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Validation",
                format!("input {i} is longer than the model's {} tokens; send truncate: true to truncate it", s.tokenizer.max_length),
            ));
        }
    }
    let tokenization = tokenizing.elapsed();
    let lengths = (0..sequences.len()).map(|s| sequences.seq_len(s));
    let (pairs, tokens) = (sequences.len(), sequences.tokens());
    s.metrics.record_input_lengths(lengths);
    let (reply, rx) = oneshot::channel();
    s.batcher
        .submit(Job {
            sequences,
            raw,
            queued: Instant::now(),
            reply,
        })
        .map_err(|r| match r {
            Rejected::QueueFull => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Overloaded",
                "the request queue is full; retry later",
            ),
            Rejected::ShuttingDown => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Unhealthy",
                "the server is shutting down",
            ),
        })?;
    let answer = rx.await.map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Backend",
            "the inference thread stopped",
        )
    })?;
    let stats = Stats {
        pairs,
        tokens,
        tokenization,
        queue: answer.queue,
        inference: answer.inference,
    };
    // Outside `record` (no such task-local) there is nobody to tell.
    let _ = STATS.try_with(|c| c.set(Some(stats)));
    answer.scores.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Backend",
            format!("{e:#}"),
        )
    })
}

/// Scores a query against texts and sorts them (text-embeddings-inference).
#[utoipa::path(post, path = "/rerank", tag = "text-embeddings-inference", request_body = RerankRequest, responses(
    (status = 200, body = Vec<Rank>, description = "the best first"),
    (status = 400, body = ErrorBody, description = "no texts, or top_n 0"),
    (status = 408, body = ErrorBody, description = "the body did not arrive in time"),
    (status = 413, body = ErrorBody, description = "too many texts, the body too long, or a text too long without truncate"),
    (status = 415, body = ErrorBody, description = "the body is not declared JSON (Content-Type)"),
    (status = 422, body = ErrorBody, description = "invalid JSON or fields, or a text the tokenizer refused"),
    (status = 500, body = ErrorBody, description = "the model failed"),
    (status = 503, body = ErrorBody, description = "the queue is full, or the server is shutting down"),
))]
async fn rerank(
    State(s): State<Arc<AppState>>,
    JsonBody(req): JsonBody<RerankRequest>,
) -> Result<Json<Vec<Rank>>, ApiError> {
    if req.texts.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "Empty",
            "`texts` cannot be empty",
        ));
    }
    check_top_n(req.top_n)?;
    let pairs = req
        .texts
        .iter()
        .map(|t| (req.query.clone(), Some(t.clone())))
        .collect();
    let truncate = req.truncate.unwrap_or(true);
    let scores = score(
        &s,
        pairs,
        req.raw_scores,
        truncate,
        req.truncation_direction,
    )
    .await?;
    let mut ranks: Vec<Rank> = ranked(&scores, req.top_n)
        .into_iter()
        .map(|(index, score)| Rank {
            index,
            score,
            text: None,
        })
        .collect();
    if req.return_text {
        for r in &mut ranks {
            r.text = Some(req.texts[r.index].clone());
        }
    }
    Ok(Json(ranks))
}

/// One rule for every re-rank route (Cohere's): `top_n` 0 asks for nothing, so it is refused
/// rather than answered `[]`.
fn check_top_n(top_n: Option<usize>) -> Result<(), ApiError> {
    if top_n == Some(0) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "Validation",
            "`top_n` must be at least 1; leave it out to rank them all",
        ));
    }
    Ok(())
}

/// (index, first score) of the best `top_n` rows (all by default), best first; ties keep the
/// input order.
fn ranked(scores: &Scores, top_n: Option<usize>) -> Vec<(usize, f32)> {
    let hits = scores.rows().map(|r| r[0]).enumerate().collect();
    crate::eval::ranking::best_first(hits, top_n.unwrap_or(usize::MAX))
}

/// Scores texts and text pairs (text-embeddings-inference).
#[utoipa::path(post, path = "/predict", tag = "text-embeddings-inference", request_body = PredictRequest, responses(
    (status = 200, body = PredictResponse, description = "each label's score, the best first"),
    (status = 400, body = ErrorBody, description = "no inputs"),
    (status = 408, body = ErrorBody, description = "the body did not arrive in time"),
    (status = 413, body = ErrorBody, description = "too many inputs, the body too long, or an input too long without truncate"),
    (status = 415, body = ErrorBody, description = "the body is not declared JSON (Content-Type)"),
    (status = 422, body = ErrorBody, description = "invalid JSON or fields, an input of more than two texts, or a text the tokenizer refused"),
    (status = 500, body = ErrorBody, description = "the model failed"),
    (status = 503, body = ErrorBody, description = "the queue is full, or the server is shutting down"),
))]
async fn predict(
    State(s): State<Arc<AppState>>,
    JsonBody(req): JsonBody<PredictRequest>,
) -> Result<Json<PredictResponse>, ApiError> {
    let (batch, inputs) = match req.inputs {
        PredictInput::Text(t) => (false, vec![vec![t]]),
        PredictInput::Single(seq) => (false, vec![seq]),
        PredictInput::Batch(seqs) => (true, seqs),
    };
    if inputs.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "Empty",
            "`inputs` cannot be empty",
        ));
    }
    let inputs = inputs
        .into_iter()
        .enumerate()
        .map(|(i, seq)| {
            let mut seq = seq.into_iter();
            match (seq.next(), seq.next(), seq.next()) {
                (Some(a), b, None) => Ok((a, b)),
                _ => Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Validation",
                    format!("input {i} must be one text or a pair of texts"),
                )),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let truncate = req.truncate.unwrap_or(true);
    let scores = score(
        &s,
        inputs,
        req.raw_scores,
        truncate,
        req.truncation_direction,
    )
    .await?;
    let mut out: Vec<Vec<Prediction>> = scores
        .rows()
        .map(|row| {
            let mut per_label: Vec<Prediction> = row
                .iter()
                .zip(&s.labels)
                .map(|(&score, label)| Prediction {
                    score,
                    label: label.clone(),
                })
                .collect();
            per_label.sort_by(|a, b| b.score.total_cmp(&a.score));
            per_label
        })
        .collect();
    Ok(Json(match (batch, out.pop()) {
        (false, Some(one)) => PredictResponse::Single(one),
        (_, last) => {
            out.extend(last);
            PredictResponse::Batch(out)
        }
    }))
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
