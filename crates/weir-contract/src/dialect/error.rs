//! `{"error":{"code","message","target"?,"details"?,"innerError"?}}`, reference 003's
//! envelope and the Microsoft REST guidelines'.
//!
//! The request id and date live in the outermost `innerError` as `request-id` and `date`
//! (Graph's shape). Parsing accepts `innerError` in any letter case (`innererror` is the
//! guidelines' spelling) and walks the whole chain; `details` items are error objects of
//! the same shape, parsed recursively. JSON-RPC's numeric `error.code` and OAuth's
//! `{"error":"invalid_token","error_description":…}` are read too.

use super::{fallback_code, fallback_message, put, put_extra, take_string};
use crate::error::{ApiError, InnerError};
use serde_json::{Map, Value};

const INNER_KEY: &str = "innerError";

pub(super) fn render(err: &ApiError) -> Value {
    let mut outer = Map::new();
    outer.insert("error".into(), Value::Object(render_object(err)));
    Value::Object(outer)
}

fn render_object(err: &ApiError) -> Map<String, Value> {
    let mut map = Map::new();
    map.insert("code".into(), Value::String(fallback_code(err)));
    map.insert("message".into(), Value::String(fallback_message(err)));
    put(&mut map, "target", err.target.as_deref());
    if !err.details.is_empty() {
        let details = err
            .details
            .iter()
            .map(|d| Value::Object(render_object(d)))
            .collect();
        map.insert("details".into(), Value::Array(details));
    }
    if let Some(inner) = render_inner(err) {
        map.insert(INNER_KEY.into(), Value::Object(inner));
    }
    put_extra(&mut map, &err.extra);
    map
}

fn render_inner(err: &ApiError) -> Option<Map<String, Value>> {
    let mut next: Option<Map<String, Value>> = None;
    for level in err.inner.iter().rev() {
        let mut map = Map::new();
        put(&mut map, "code", level.code.as_deref());
        if let Some(n) = next.take() {
            map.insert(INNER_KEY.into(), Value::Object(n));
        }
        put_extra(&mut map, &level.extra);
        next = Some(map);
    }
    if err.request_id.is_some() || err.date.is_some() {
        let mut first = next.unwrap_or_default();
        put(&mut first, "request-id", err.request_id.as_deref());
        put(&mut first, "date", err.date.as_deref());
        next = Some(first);
    }
    next
}

pub(super) fn parse(mut map: Map<String, Value>, status: Option<u16>) -> Option<ApiError> {
    match map.remove("error")? {
        Value::Object(obj) => Some(ApiError {
            status,
            ..parse_object(obj)
        }),
        // OAuth 2.0 (RFC 6749 §5.2): {"error":"invalid_token","error_description":"…"}.
        Value::String(code) => Some(ApiError {
            status,
            code: Some(code),
            message: take_string(&mut map, "error_description"),
            extra: map,
            ..ApiError::default()
        }),
        _ => None,
    }
}

fn parse_object(mut obj: Map<String, Value>) -> ApiError {
    let code = match obj.get("code") {
        Some(Value::Number(n)) => {
            let s = n.to_string();
            obj.remove("code");
            Some(s)
        }
        _ => take_string(&mut obj, "code"),
    };
    let message = take_string(&mut obj, "message");
    let target = take_string(&mut obj, "target");
    let details = match obj.get("details") {
        Some(Value::Array(items)) if items.iter().all(Value::is_object) => {
            match obj.remove("details") {
                Some(Value::Array(items)) => items
                    .into_iter()
                    .filter_map(|v| match v {
                        Value::Object(m) => Some(parse_object(m)),
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            }
        }
        _ => Vec::new(),
    };
    let mut err = ApiError {
        code,
        message,
        target,
        details,
        ..ApiError::default()
    };
    if let Some(first) = take_inner(&mut obj) {
        walk_inner(first, &mut err);
    }
    err.extra = obj;
    err
}

/// Removes the `innerError` member, whatever its letter case, when it is an object.
fn take_inner(map: &mut Map<String, Value>) -> Option<Map<String, Value>> {
    let key = map
        .iter()
        .find(|(k, v)| k.eq_ignore_ascii_case(INNER_KEY) && v.is_object())
        .map(|(k, _)| k.clone())?;
    match map.remove(&key) {
        Some(Value::Object(m)) => Some(m),
        _ => None,
    }
}

fn walk_inner(first: Map<String, Value>, err: &mut ApiError) {
    let mut current = Some(first);
    let mut depth = 0usize;
    while let Some(mut level) = current.take() {
        if depth == 0 {
            let request_id = take_string(&mut level, "request-id");
            let date = take_string(&mut level, "date");
            let lifted = request_id.is_some() || date.is_some();
            err.request_id = request_id;
            err.date = date;
            let next = take_inner(&mut level);
            let code = take_string(&mut level, "code");
            if lifted && code.is_none() && level.is_empty() && next.is_none() {
                return;
            }
            err.inner.push(InnerError { code, extra: level });
            current = next;
        } else {
            let next = take_inner(&mut level);
            let code = take_string(&mut level, "code");
            err.inner.push(InnerError { code, extra: level });
            current = next;
        }
        depth += 1;
    }
}

pub(super) fn project(err: &ApiError) -> ApiError {
    ApiError {
        status: err.status,
        ..project_object(err)
    }
}

fn project_object(err: &ApiError) -> ApiError {
    ApiError {
        code: Some(fallback_code(err)),
        message: Some(fallback_message(err)),
        target: err.target.clone(),
        request_id: err.request_id.clone(),
        date: err.date.clone(),
        inner: err.inner.clone(),
        details: err.details.iter().map(project_object).collect(),
        extra: err.extra.clone(),
        ..ApiError::default()
    }
}
