//! `{"code","message","retryable"}`, reference 004's MCP tool envelope. There is no HTTP
//! status in the body; `retryable` is mandatory on output (taken from the catalogue or the
//! status class when the error does not say) and wins over the status when classifying.

use super::{fallback_code, fallback_message, put, put_extra, take_bool, take_string};
use crate::catalogue::{self, RetryClass};
use crate::error::ApiError;
use serde_json::{Map, Value};

pub(super) fn render(err: &ApiError) -> Value {
    let mut map = Map::new();
    map.insert("code".into(), Value::String(fallback_code(err)));
    map.insert("message".into(), Value::String(fallback_message(err)));
    map.insert("retryable".into(), Value::Bool(retryable(err)));
    put(&mut map, "hint", err.hint.as_deref());
    put(&mut map, "request_id", err.request_id.as_deref());
    put_extra(&mut map, &err.extra);
    Value::Object(map)
}

/// The `retryable` flag written for `err`: its own, else its code's, else its status's.
pub(crate) fn retryable(err: &ApiError) -> bool {
    err.retryable.unwrap_or_else(|| {
        err.code
            .as_deref()
            .and_then(catalogue::code)
            .map(|c| c.retryable)
            .unwrap_or_else(|| {
                err.status
                    .is_some_and(|s| catalogue::status_retry_class(s) == RetryClass::AfterDelay)
            })
    })
}

pub(super) fn parse(mut map: Map<String, Value>, status: Option<u16>) -> Option<ApiError> {
    let code = take_string(&mut map, "code");
    let message = take_string(&mut map, "message");
    let retryable = take_bool(&mut map, "retryable");
    if code.is_none() && message.is_none() && retryable.is_none() {
        return None;
    }
    Some(ApiError {
        status,
        code,
        message,
        retryable,
        hint: take_string(&mut map, "hint"),
        request_id: take_string(&mut map, "request_id"),
        extra: map,
        ..ApiError::default()
    })
}

/// An MCP `tools/call` result with `isError: true` carrying the envelope in
/// `structuredContent` (standards §8.3): `{"result":{"isError":true,"structuredContent":{…}}}`.
pub(super) fn unwrap_tool_result(
    map: &Map<String, Value>,
    status: Option<u16>,
) -> Option<ApiError> {
    let result = map.get("result")?.as_object()?;
    if result.get("isError").and_then(Value::as_bool) != Some(true) {
        return None;
    }
    let content = result.get("structuredContent")?.as_object()?;
    parse(content.clone(), status)
}

pub(super) fn project(err: &ApiError) -> ApiError {
    ApiError {
        status: err.status,
        code: Some(fallback_code(err)),
        message: Some(fallback_message(err)),
        retryable: Some(retryable(err)),
        hint: err.hint.clone(),
        request_id: err.request_id.clone(),
        extra: err.extra.clone(),
        ..ApiError::default()
    }
}
