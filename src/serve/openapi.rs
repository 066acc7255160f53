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

pub fn spec() -> Value {
    let string = json!({ "type": "string" });
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
                "RerankRequest": { "type": "object", "required": ["query", "texts"], "properties": {
                    "query": string, "texts": { "type": "array", "items": string },
                    "top_n": { "type": "integer", "minimum": 1 }, "return_text": { "type": "boolean" },
                    "raw_scores": { "type": "boolean" }, "truncate": { "type": "boolean" } } },
                "Rank": { "type": "object", "required": ["index", "score"], "properties": {
                    "index": { "type": "integer" }, "score": { "type": "number" }, "text": string } },
                "PredictRequest": { "type": "object", "required": ["inputs"], "properties": {
                    "inputs": { "type": "array", "items": { "type": "array", "items": string, "minItems": 2, "maxItems": 2 } },
                    "raw_scores": { "type": "boolean" }, "truncate": { "type": "boolean" } } },
                "Prediction": { "oneOf": [
                    { "type": "object", "properties": { "score": { "type": "number" } } },
                    { "type": "array", "items": { "type": "object", "properties": {
                        "label": string, "score": { "type": "number" } } } } ] },
                "CohereRerankRequest": { "type": "object", "required": ["query", "documents"], "properties": {
                    "model": string, "query": string,
                    "documents": { "type": "array", "items": { "oneOf": [string, text_object] } },
                    "top_n": { "type": "integer", "minimum": 1 }, "return_documents": { "type": "boolean" } } },
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
                "responses": answers(json!({ "type": "array", "items": { "$ref": "#/components/schemas/Prediction" } }), "Error") } },
            "/v1/rerank": cohere_route("v1"),
            "/v2/rerank": cohere_route("v2"),
            "/health": { "get": { "summary": "200 while the model can score, 503 after the inference thread died",
                "security": [], "responses": { "200": { "description": "healthy" }, "503": { "description": "unhealthy" } } } },
            "/info": { "get": { "summary": "The model and the server's limits",
                "responses": { "200": { "description": "OK", "content": { "application/json": { "schema": { "type": "object" } } } } } } },
            "/metrics": { "get": { "summary": "Prometheus metrics", "security": [],
                "responses": { "200": { "description": "OK", "content": { "text/plain": { "schema": string } } } } } },
            "/openapi.json": { "get": { "summary": "This description",
                "responses": { "200": { "description": "OK", "content": { "application/json": { "schema": { "type": "object" } } } } } } },
        },
    })
}
