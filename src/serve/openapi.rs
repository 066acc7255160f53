//! `GET /openapi.json`: an OpenAPI 3.1 document derived (utoipa) from the types the handlers
//! read and write and from their `#[utoipa::path]` answers, so that it cannot drift from them.
//! Built once at start-up: which routes want a key, and so answer 401, is the server's
//! configuration, not its types.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::{json, Value};
use std::sync::Arc;
use utoipa::{OpenApi, ToSchema};

use super::{cohere, guarded, speaks_cohere, AppState};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "crossenc",
        description = "Cross-encoder scoring and re-ranking: text-embeddings-inference's routes and Cohere's re-rank API."
    ),
    paths(
        super::rerank,
        super::predict,
        cohere::rerank_v1,
        cohere::rerank_v2,
        super::health,
        super::model_info,
        super::prometheus,
        openapi_json
    )
)]
struct Document;

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "crossenc", responses(
    (status = 200, body = Object, description = "OK"),
))]
pub(super) async fn openapi_json(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        s.openapi.clone(),
    )
}

/// The document for a server with (`keyed`) or without an API key. Two facts the derive cannot
/// state are added here: request bodies take unknown fields (serde ignores them), and with a
/// key, the guarded routes want a bearer token and answer 401 without one.
pub(super) fn document(keyed: bool) -> serde_json::Result<Value> {
    let mut doc = serde_json::to_value(Document::openapi())?;
    let Value::Object(paths) = doc["paths"].take() else {
        return Ok(doc);
    };
    let mut bodies = Vec::new();
    let mut paths_out = serde_json::Map::new();
    for (path, mut item) in paths {
        if let Value::Object(ops) = &mut item {
            for op in ops.values_mut() {
                let body = &op["requestBody"]["content"]["application/json"]["schema"]["$ref"];
                if let Some(name) = body.as_str().and_then(|r| r.rsplit('/').next()) {
                    bodies.push(name.to_string());
                }
                if !keyed {
                    continue;
                }
                if guarded(&path) {
                    let error = match speaks_cohere(&path) {
                        true => <cohere::ErrorBody as ToSchema>::name(),
                        false => <super::ErrorBody as ToSchema>::name(),
                    };
                    op["security"] = json!([{ "bearer": [] }]);
                    op["responses"]["401"] = json!({
                        "description": "missing or wrong API key",
                        "content": { "application/json": {
                            "schema": { "$ref": format!("#/components/schemas/{error}") } } },
                    });
                } else {
                    op["security"] = json!([]);
                }
            }
        }
        paths_out.insert(path, item);
    }
    doc["paths"] = Value::Object(paths_out);
    for name in bodies {
        if let Some(schema) = doc["components"]["schemas"].get_mut(&name) {
            schema["additionalProperties"] = json!(true);
        }
    }
    if keyed {
        doc["components"]["securitySchemes"] =
            json!({ "bearer": { "type": "http", "scheme": "bearer" } });
    }
    Ok(doc)
}
