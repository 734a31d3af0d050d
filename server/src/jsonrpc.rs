//! JSON-RPC error bodies for the responses serve makes itself.

use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use serde_json::{json, Value};

/// JSON-RPC 2.0 parse error.
pub const PARSE_ERROR: i64 = -32700;
/// JSON-RPC 2.0 invalid request.
pub const INVALID_REQUEST: i64 = -32600;
/// JSON-RPC 2.0 internal error.
pub const INTERNAL_ERROR: i64 = -32603;
/// Implementation-defined server error: the caller is not authenticated.
pub const UNAUTHORIZED: i64 = -32001;
/// Implementation-defined server error: the caller is authenticated but refused.
pub const FORBIDDEN: i64 = -32003;
/// Implementation-defined server error: the workload cannot be reached.
pub const UPSTREAM_UNAVAILABLE: i64 = -32002;
/// Implementation-defined server error: try again shortly.
pub const UNAVAILABLE: i64 = -32004;

/// A JSON-RPC error object with `id: null`, for failures that happen before
/// a request's id is known or that concern the transport rather than one
/// request.
pub fn error_body(code: i64, message: &str) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": { "code": code, "message": message },
    })
}

/// A JSON-RPC error object answering the request with `id`.
pub fn error_for(id: &Value, code: i64, message: &str) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": { "code": code, "message": message },
    })
}

/// An HTTP response carrying [`error_body`].
pub fn error_response(status: StatusCode, code: i64, message: &str) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("application/json")
        .body(error_body(code, message).to_string())
}
