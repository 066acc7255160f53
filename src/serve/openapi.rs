//! `GET /openapi.json`: an OpenAPI 3.0 description of every route, written out by hand (the
//! routes are few, and a derive-based generator would annotate every type for them).

use serde_json::{json, Value};

fn body(schema: &str) -> Value {
    json!({ "required": true, "content": { "application/json": {
        "schema": { "$ref": format!("#/components/schemas/{schema}") } } } })
}

fn answers(ok: Value, error: &str) -> Value {
    let error = json!({ "$ref": format!("#/components/schemas/{error}") });
    let mut out = json!({ "200": { "description": "OK", "content": { "application/json": { "schema": ok } } } });
    for (code, what) in [
        ("400", "empty input, or top_n 0"),
        ("401", "missing or wrong API key"),
        ("408", "the body did not arrive in time"),
        ("413", "too many inputs, a body or input too long"),
        ("415", "the body is not declared JSON (Content-Type)"),
        ("422", "invalid JSON or fields"),
        ("503", "queue full or shutting down"),
    ] {
        out[code] = json!({ "description": what,
            "content": { "application/json": { "schema": error } } });
    }
    out
}

fn cohere_route(version: &str) -> Value {
    json!({ "post": {
        "summary": format!("Cohere's re-rank API, {version}"),
        "requestBody": body("CohereRerankRequest"),
        "responses": answers(json!({ "$ref": "#/components/schemas/CohereRerankResponse" }), "CohereError"),
    } })
}

/// A GET route's answers: its own, and 401 where an API key guards it.
fn get_answers(ok: Value) -> Value {
    json!({ "200": { "description": "OK", "content": { "application/json": { "schema": ok } } },
        "401": { "description": "missing or wrong API key", "content": { "application/json": {
            "schema": { "$ref": "#/components/schemas/Error" } } } } })
}

pub fn spec() -> Value {
    let string = json!({ "type": "string" });
    let texts = json!({ "type": "array", "items": string, "minItems": 1 });
    let nullable_bool = json!({ "type": "boolean", "nullable": true });
    // Any whole number from 1; one over the count of texts asks for them all.
    let top_n = json!({ "type": "integer", "minimum": 1, "nullable": true });
    let direction =
        json!({ "type": "string", "enum": ["Left", "Right", "left", "right"], "default": "Right" });
    let text = json!({ "type": "array", "items": string, "minItems": 1, "maxItems": 1 });
    let pair = json!({ "type": "array", "items": string, "minItems": 2, "maxItems": 2 });
    let prediction = json!({ "type": "object", "required": ["score", "label"], "properties": {
        "score": { "type": "number" }, "label": string } });
    let predictions = json!({ "type": "array", "items": prediction });
    let classes = json!({ "type": "object", "required": ["id2label", "label2id"], "properties": {
        "id2label": { "type": "object", "additionalProperties": string },
        "label2id": { "type": "object", "additionalProperties": { "type": "integer" } } } });
    let nullable_string = json!({ "type": "string", "nullable": true });
    let nullable_int = json!({ "type": "integer", "minimum": 0, "nullable": true });
    let text_object =
        json!({ "type": "object", "required": ["text"], "properties": { "text": string } });
    json!({
        "openapi": "3.0.3",
        "info": { "title": "crossenc", "version": env!("CARGO_PKG_VERSION"),
            "description": "Cross-encoder scoring and re-ranking: text-embeddings-inference's routes and Cohere's re-rank API." },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "Error": { "type": "object", "properties": { "error": string, "error_type": string } },
                "CohereError": { "type": "object", "properties": { "message": string } },
                "RerankRequest": { "type": "object", "required": ["query", "texts"], "additionalProperties": true,
                    "properties": { "query": string, "texts": texts, "top_n": top_n,
                    "return_text": { "type": "boolean" }, "raw_scores": { "type": "boolean" },
                    "truncate": nullable_bool, "truncation_direction": direction } },
                "Rank": { "type": "object", "required": ["index", "score"], "properties": {
                    "index": { "type": "integer" }, "score": { "type": "number" }, "text": string } },
                "PredictRequest": { "type": "object", "required": ["inputs"], "additionalProperties": true, "properties": {
                    "inputs": { "oneOf": [string, text, pair,
                        { "type": "array", "minItems": 1, "items": { "oneOf": [text, pair] } }] },
                    "raw_scores": { "type": "boolean" }, "truncate": nullable_bool,
                    "truncation_direction": direction } },
                "PredictResponse": { "oneOf": [predictions, { "type": "array", "items": predictions }] },
                "Info": { "type": "object", "properties": {
                    "model_id": string, "model_sha": nullable_string, "model_dtype": string,
                    "served_model_name": string,
                    "model_type": { "oneOf": [
                        { "type": "object", "required": ["reranker"], "properties": { "reranker": classes } },
                        { "type": "object", "required": ["classifier"], "properties": { "classifier": classes } }] },
                    "max_concurrent_requests": { "type": "integer" }, "max_input_length": { "type": "integer" },
                    "max_batch_tokens": { "type": "integer" }, "max_batch_requests": nullable_int,
                    "max_client_batch_size": { "type": "integer" }, "auto_truncate": { "type": "boolean" },
                    "tokenization_workers": { "type": "integer" }, "version": string,
                    "sha": nullable_string, "docker_label": nullable_string, "architecture": string,
                    "labels": { "type": "array", "items": string }, "activation": string,
                    "int8_kernel": nullable_string, "max_body_bytes": { "type": "integer" } } },
                "CohereRerankRequest": { "type": "object", "required": ["query", "documents"], "additionalProperties": true,
                    "properties": { "model": nullable_string, "query": string,
                    "documents": { "type": "array", "minItems": 1, "items": { "oneOf": [string, text_object] } },
                    "top_n": top_n, "return_documents": nullable_bool,
                    "rank_fields": { "type": "array", "items": string, "nullable": true },
                    "max_chunks_per_doc": nullable_int, "max_tokens_per_doc": nullable_int,
                    "priority": nullable_int } },
                "CohereRerankResponse": { "type": "object", "required": ["id", "results"], "properties": {
                    "id": string,
                    "results": { "type": "array", "items": { "type": "object", "required": ["index", "relevance_score"],
                        "properties": { "index": { "type": "integer" }, "relevance_score": { "type": "number" },
                            "document": text_object } } },
                    "meta": { "type": "object" } } },
            },
        },
        "security": [ {}, { "bearer": [] } ],
        "paths": {
            "/rerank": { "post": { "summary": "Score a query against texts and sort them (text-embeddings-inference)",
                "requestBody": body("RerankRequest"),
                "responses": answers(json!({ "type": "array", "items": { "$ref": "#/components/schemas/Rank" } }), "Error") } },
            "/predict": { "post": { "summary": "Score text pairs (text-embeddings-inference)",
                "requestBody": body("PredictRequest"),
                "responses": answers(json!({ "$ref": "#/components/schemas/PredictResponse" }), "Error") } },
            "/v1/rerank": cohere_route("v1"),
            "/v2/rerank": cohere_route("v2"),
            "/health": { "get": { "summary": "200 while the model can score, 503 after the inference thread died",
                "security": [], "responses": { "200": { "description": "healthy" }, "503": { "description": "unhealthy" } } } },
            "/info": { "get": { "summary": "The model and the server's limits",
                "responses": get_answers(json!({ "$ref": "#/components/schemas/Info" })) } },
            "/metrics": { "get": { "summary": "Prometheus metrics", "security": [],
                "responses": { "200": { "description": "OK", "content": { "text/plain": { "schema": string } } } } } },
            "/openapi.json": { "get": { "summary": "This description",
                "responses": get_answers(json!({ "type": "object" })) } },
        },
    })
}
