//! Cohere's re-rank API (`POST /v1/rerank`, `POST /v2/rerank`; Jina's re-rank API has the v1
//! shape), which most RAG frameworks speak: the same scores and order as TEI's `/rerank`, under
//! Cohere's field names, with errors as Cohere writes them (`{"message": ...}`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::Arc;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Type};
use utoipa::{PartialSchema, ToSchema};

use super::{check_top_n, ranked, score, ApiError, AppState, JsonBody};

/// Cohere's fields. `model` and the others it defines (`rank_fields`, `max_chunks_per_doc`,
/// `max_tokens_per_doc`, `priority`) are checked for their type, as Cohere checks them, and
/// have no effect: the server scores with the model it loaded, truncated to its max length.
/// Unknown fields are ignored, as Cohere ignores them; null is "left out", as Cohere's SDKs
/// send an optional argument given as None.
#[derive(Deserialize, ToSchema)]
#[schema(as = CohereRerankRequest)]
pub(super) struct Request {
    query: String,
    /// Strings, or (v1) objects whose `text` is scored.
    #[schema(schema_with = documents)]
    documents: Vec<serde_json::Value>,
    /// Any whole number from 1; one over the count of documents asks for them all.
    #[serde(default, deserialize_with = "super::whole_number")]
    #[schema(minimum = 1)]
    top_n: Option<usize>,
    return_documents: Option<bool>,
    #[serde(rename = "model")]
    _model: Option<String>,
    #[serde(rename = "rank_fields")]
    _rank_fields: Option<Vec<String>>,
    #[serde(
        rename = "max_chunks_per_doc",
        default,
        deserialize_with = "super::whole_number"
    )]
    _max_chunks_per_doc: Option<usize>,
    #[serde(
        rename = "max_tokens_per_doc",
        default,
        deserialize_with = "super::whole_number"
    )]
    _max_tokens_per_doc: Option<usize>,
    #[serde(rename = "priority", default, deserialize_with = "super::whole_number")]
    _priority: Option<usize>,
}

/// `documents`' schema: checked by the handler (for its 400), not by serde.
fn documents() -> ArrayBuilder {
    let string = ObjectBuilder::new().schema_type(Type::String);
    let document = OneOfBuilder::new().item(string).item(Document::schema());
    ArrayBuilder::new().items(document).min_items(Some(1))
}

// Typed, so that scores are written as f32 (as `/rerank` writes them), not widened to f64.
#[derive(Serialize, ToSchema)]
#[schema(as = CohereRerankResponse)]
pub(super) struct Reranked {
    id: String,
    results: Vec<Ranked>,
    #[schema(value_type = Object)]
    meta: serde_json::Value,
}

#[derive(Serialize, ToSchema)]
#[schema(as = CohereRanked)]
pub(super) struct Ranked {
    index: usize,
    relevance_score: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    document: Option<Document>,
}

/// A document as Cohere returns it, and as v1 takes it.
#[derive(Serialize, ToSchema)]
#[schema(as = CohereDocument)]
pub(super) struct Document {
    text: String,
}

/// Cohere's error body.
#[derive(Serialize, ToSchema)]
#[schema(as = CohereError)]
pub(super) struct ErrorBody {
    message: String,
}

/// An error in Cohere's shape.
pub(super) struct CohereError(pub ApiError);

impl IntoResponse for CohereError {
    fn into_response(self) -> Response {
        let e = self.0;
        let failure = axum::Extension(e.failure());
        let body = Json(ErrorBody { message: e.message });
        (e.status, failure, body).into_response()
    }
}

fn bad_request(message: String) -> CohereError {
    CohereError(ApiError::new(
        StatusCode::BAD_REQUEST,
        "Validation",
        message,
    ))
}

/// Cohere's re-rank API, v1.
#[utoipa::path(post, path = "/v1/rerank", tag = "Cohere", request_body = Request, responses(
    (status = 200, body = Reranked, description = "the best first"),
    (status = 400, body = ErrorBody, description = "no documents, a document without text, or top_n 0"),
    (status = 408, body = ErrorBody, description = "the body did not arrive in time"),
    (status = 413, body = ErrorBody, description = "too many documents, or the body too long"),
    (status = 415, body = ErrorBody, description = "the body is not declared JSON (Content-Type)"),
    (status = 422, body = ErrorBody, description = "invalid JSON or fields, or a text the tokenizer refused"),
    (status = 500, body = ErrorBody, description = "the model failed"),
    (status = 503, body = ErrorBody, description = "the queue is full, or the server is shutting down"),
))]
pub(super) async fn rerank_v1(
    state: State<Arc<AppState>>,
    body: Result<JsonBody<Request>, ApiError>,
) -> Result<Json<Reranked>, CohereError> {
    rerank(state, body, 1).await
}

/// Cohere's re-rank API, v2.
#[utoipa::path(post, path = "/v2/rerank", tag = "Cohere", request_body = Request, responses(
    (status = 200, body = Reranked, description = "the best first"),
    (status = 400, body = ErrorBody, description = "no documents, a document without text, or top_n 0"),
    (status = 408, body = ErrorBody, description = "the body did not arrive in time"),
    (status = 413, body = ErrorBody, description = "too many documents, or the body too long"),
    (status = 415, body = ErrorBody, description = "the body is not declared JSON (Content-Type)"),
    (status = 422, body = ErrorBody, description = "invalid JSON or fields, or a text the tokenizer refused"),
    (status = 500, body = ErrorBody, description = "the model failed"),
    (status = 503, body = ErrorBody, description = "the queue is full, or the server is shutting down"),
))]
pub(super) async fn rerank_v2(
    state: State<Arc<AppState>>,
    body: Result<JsonBody<Request>, ApiError>,
) -> Result<Json<Reranked>, CohereError> {
    rerank(state, body, 2).await
}

async fn rerank(
    State(s): State<Arc<AppState>>,
    body: Result<JsonBody<Request>, ApiError>,
    version: u32,
) -> Result<Json<Reranked>, CohereError> {
    let JsonBody(req) = body.map_err(CohereError)?;
    if req.documents.is_empty() {
        return Err(bad_request("`documents` cannot be empty".into()));
    }
    check_top_n(req.top_n).map_err(CohereError)?;
    let texts = req
        .documents
        .iter()
        .enumerate()
        .map(|(i, d)| match d {
            serde_json::Value::String(t) => Ok(t.clone()),
            serde_json::Value::Object(o) => match o.get("text") {
                Some(serde_json::Value::String(t)) => Ok(t.clone()),
                _ => Err(bad_request(format!(
                    "documents[{i}] has no string field `text`"
                ))),
            },
            _ => Err(bad_request(format!(
                "documents[{i}] must be a string or an object with a string `text`"
            ))),
        })
        .collect::<Result<Vec<String>, _>>()?;
    let pairs = texts
        .iter()
        .map(|t| (req.query.clone(), Some(t.clone())))
        .collect();
    let scores = score(&s, pairs, false, true, Default::default())
        .await
        .map_err(CohereError)?;
    let order = ranked(&scores, req.top_n);
    let with_text = req.return_documents.unwrap_or(false);
    let results: Vec<Ranked> = order
        .into_iter()
        .map(|(index, relevance_score)| Ranked {
            index,
            relevance_score,
            document: with_text.then(|| Document {
                text: texts[index].clone(),
            }),
        })
        .collect();
    Ok(Json(Reranked {
        id: request_id(),
        results,
        meta: json!({
            "api_version": { "version": version.to_string() },
            "billed_units": { "search_units": 1 },
        }),
    }))
}

/// A random id per answer, as Cohere gives one (a UUID v4's layout).
fn request_id() -> String {
    let b: u128 = rand::random();
    let h = format!("{b:032x}");
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..]
    )
}
