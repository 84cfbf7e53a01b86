//! The OpenAPI 3.1 document of the public API, served at `/v1/openapi.json`.
//! Request and response schemas are generated from the handlers' own types
//! (their serde shape, via schemars); the operations list what each handler
//! answers.

use std::sync::OnceLock;

use axum::response::IntoResponse;
use axum::Json;
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{json, Value};

use super::error::ErrorBody;
use super::publish::{
    BroadcastRequest, BroadcastResponse, PublishResponse, CHANNEL_PATTERN, MAX_CHANNELS_PER_PUBLISH,
};
use crate::auth::credentials::QUERY_PARAMETER;

/// `GET /v1/openapi.json`.
pub async fn openapi_json() -> impl IntoResponse {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    Json(DOCUMENT.get_or_init(document).clone())
}

/// The schema of `T`, registered under `#/components/schemas`.
fn schema<T: JsonSchema>(generator: &mut SchemaGenerator) -> Value {
    generator.subschema_for::<T>().to_value()
}

/// An error answer of `status`, with the headers it carries.
fn error(description: &str, headers: &[&str]) -> Value {
    let mut answer = json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    });
    if !headers.is_empty() {
        let mut map = serde_json::Map::new();
        for name in headers {
            map.insert(
                (*name).to_owned(),
                json!({"$ref": format!("#/components/headers/{name}")}),
            );
        }
        answer["headers"] = Value::Object(map);
    }
    answer
}

/// The answers every public operation may give besides its own.
fn common_errors() -> Vec<(&'static str, Value)> {
    vec![
        ("400", error("Malformed or invalid request", &[])),
        (
            "401",
            error(
                "No token, or one that does not verify, where the channel's policy needs one",
                &["WWW-Authenticate"],
            ),
        ),
        (
            "403",
            error(
                "The token does not cover the channel",
                &["WWW-Authenticate"],
            ),
        ),
        ("431", error("The request head is too large", &[])),
        (
            "503",
            error(
                "Backplane unavailable or replica full; nothing was done, retry is safe",
                &["Retry-After"],
            ),
        ),
    ]
}

fn responses(own: Vec<(&'static str, Value)>) -> Value {
    let mut map = serde_json::Map::new();
    for (status, answer) in own.into_iter().chain(common_errors()) {
        map.insert(status.to_owned(), answer);
    }
    Value::Object(map)
}

/// Builds the document.
pub fn document() -> Value {
    let mut generator = SchemaSettings::draft2020_12()
        .with(|s| s.definitions_path = "/components/schemas".into())
        .for_deserialize()
        .into_generator();
    let publish_request = schema::<super::publish::PublishRequest>(&mut generator);
    let broadcast_request = schema::<BroadcastRequest>(&mut generator);
    let mut serializing = SchemaSettings::draft2020_12()
        .with(|s| s.definitions_path = "/components/schemas".into())
        .for_serialize()
        .into_generator();
    let publish_response = schema::<PublishResponse>(&mut serializing);
    let broadcast_response = schema::<BroadcastResponse>(&mut serializing);
    let _ = schema::<ErrorBody>(&mut serializing);
    let mut schemas = generator.take_definitions(true);
    schemas.extend(serializing.take_definitions(true));

    let json_body = |schema: Value| json!({"required": true, "content": {"application/json": {"schema": schema}}});
    let ok_json = |description: &str, schema: Value| json!({"description": description, "content": {"application/json": {"schema": schema}}});
    let body_errors = || {
        vec![
            ("408", error("The body did not arrive in time", &[])),
            (
                "413",
                error(
                    "The body is over the limit (the policy's, or the default)",
                    &[],
                ),
            ),
            ("415", error("The body is not JSON", &[])),
        ]
    };
    let mut publish_errors = body_errors();
    publish_errors.extend([
        (
            "422",
            error(
                "The data fails the channel's JSON Schema, or the event type is not allowed",
                &[],
            ),
        ),
        (
            "429",
            error(
                "The channel's publish rate limit is reached, or the publisher created its share of new channels (`channel_creation_limited`); nothing was published",
                &["Retry-After"],
            ),
        ),
        (
            "504",
            error(
                "Sent to Redis, but no answer came in time (`publish_outcome_unknown`): the event may have been published",
                &[],
            ),
        ),
    ]);

    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "sseplane",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Server-Sent Events over a Redis backplane: subscribe to channels over SSE, publish over HTTP, from any replica.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "security": [{}, {"bearer": []}, {"cookie": []}, {"query": []}],
        "paths": {
            "/v1/stream": {"get": {
                "operationId": "stream",
                "summary": "Subscribe to one or more channels (Server-Sent Events)",
                "description": "Starts with `retry:`; each event has `id:` (resume token), `event:` when typed, and `data:` (compact JSON). `: keepalive` comments keep quiet streams open. Resume with `Last-Event-ID` or `lastEventId`; missed events older than history arrive after an `sseplane.gap` event. A stream opened with an expiring token ends with an `sseplane.token_expired` event.",
                "parameters": [
                    {"name": "channel", "in": "query", "required": true, "style": "form", "explode": true,
                     "schema": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": CHANNEL_PATTERN}}},
                    {"name": "lastEventId", "in": "query", "required": false, "schema": {"type": "string"}},
                    {"name": "Last-Event-ID", "in": "header", "required": false, "schema": {"type": "string"}},
                ],
                "responses": responses(vec![
                    ("200", json!({"description": "The event stream", "content": {"text/event-stream": {"schema": {"type": "string"}}}})),
                    ("429", error("Too many open streams from this client address", &["Retry-After"])),
                ]),
            }},
            "/v1/publish": {"post": {
                "operationId": "publish",
                "summary": format!("Publish one event to one channel or to up to {MAX_CHANNELS_PER_PUBLISH} channels at once"),
                "requestBody": json_body(publish_request),
                "responses": responses({
                    let mut own = vec![("200", ok_json("Published: one id per channel, in request order", publish_response))];
                    own.extend(publish_errors);
                    own
                }),
            }},
            "/v1/broadcast": {"post": {
                "operationId": "broadcast",
                "summary": "Send an event to every stream on every replica (not kept in history)",
                "requestBody": json_body(broadcast_request),
                "responses": responses({
                    let mut own = vec![("200", ok_json("Sent", broadcast_response))];
                    own.extend(body_errors());
                    own.push((
                        "504",
                        error(
                            "Sent to Redis, but no answer came in time (`publish_outcome_unknown`): it may have gone out",
                            &[],
                        ),
                    ));
                    own
                }),
            }},
            "/v1/openapi.json": {"get": {
                "operationId": "openapi",
                "summary": "This document",
                "security": [{}],
                "responses": {"200": {"description": "The OpenAPI document", "content": {"application/json": {"schema": {"type": "object"}}}}},
            }},
        },
        "components": {
            "schemas": schemas,
            "headers": {
                "WWW-Authenticate": {"description": "RFC 6750 Bearer challenge", "schema": {"type": "string"}},
                "Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "integer", "minimum": 0}},
            },
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "cookie": {"type": "apiKey", "in": "cookie", "name": crate::auth::credentials::DEFAULT_COOKIE},
                "query": {"type": "apiKey", "in": "query", "name": QUERY_PARAMETER},
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_publish_schema_comes_from_the_request_type() {
        let doc = document();
        let request = &doc["components"]["schemas"]["PublishRequest"];
        assert_eq!(request["additionalProperties"], json!(false));
        assert_eq!(request["required"], json!(["data"]));
        assert_eq!(request["properties"]["channel"]["maxLength"], json!(200));
        assert_eq!(request["properties"]["channels"]["maxItems"], json!(100));
        assert!(doc["paths"]["/v1/publish"]["post"]["responses"]["422"].is_object());
        let error = &doc["components"]["schemas"]["ErrorBody"];
        assert_eq!(error["required"], json!(["error"]));
    }
}
