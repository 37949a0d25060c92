//! `{"detail":{"code","message","hint"?}}`, reference 004's REST envelope (FastAPI's
//! `HTTPException(detail=dict)` convention). weir adds `request_id` inside `detail`, and
//! `retryable` when known, as extension members.

use super::{fallback_code, fallback_message, put, put_extra, take_bool, take_string};
use crate::error::ApiError;
use serde_json::{Map, Value};

pub(super) fn render(err: &ApiError) -> Value {
    let mut inner = Map::new();
    inner.insert("code".into(), Value::String(fallback_code(err)));
    inner.insert("message".into(), Value::String(fallback_message(err)));
    put(&mut inner, "hint", err.hint.as_deref());
    put(&mut inner, "request_id", err.request_id.as_deref());
    if let Some(r) = err.retryable {
        inner.insert("retryable".into(), Value::Bool(r));
    }
    put_extra(&mut inner, &err.extra);
    let mut outer = Map::new();
    outer.insert("detail".into(), Value::Object(inner));
    Value::Object(outer)
}

pub(super) fn parse(mut map: Map<String, Value>, status: Option<u16>) -> Option<ApiError> {
    match map.remove("detail")? {
        // FastAPI's default: {"detail": "Not Found"}.
        Value::String(message) => Some(ApiError {
            status,
            message: Some(message),
            ..ApiError::default()
        }),
        Value::Object(mut inner) => Some(ApiError {
            status,
            code: take_string(&mut inner, "code"),
            message: take_string(&mut inner, "message"),
            hint: take_string(&mut inner, "hint"),
            request_id: take_string(&mut inner, "request_id"),
            retryable: take_bool(&mut inner, "retryable"),
            extra: inner,
            ..ApiError::default()
        }),
        _ => None,
    }
}

pub(super) fn project(err: &ApiError) -> ApiError {
    ApiError {
        status: err.status,
        code: Some(fallback_code(err)),
        message: Some(fallback_message(err)),
        hint: err.hint.clone(),
        retryable: err.retryable,
        request_id: err.request_id.clone(),
        extra: err.extra.clone(),
        ..ApiError::default()
    }
}
