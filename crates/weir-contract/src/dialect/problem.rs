//! RFC 9457 `application/problem+json`: `type`, `title`, `status`, `detail`, `instance`,
//! plus weir's extension members `code`, `hint`, `retryable` and `request_id` (names that
//! follow §3.2's advice: letters, digits and `_`, three characters or more).
//!
//! Members of the wrong type are ignored, as §3.1 requires ("processing will continue as
//! if the member had not been present"), but kept in `extra` so nothing is lost on relay.

use super::{put, put_extra, take_bool, take_string};
use crate::catalogue;
use crate::error::{ApiError, ProblemFields};
use serde_json::{Map, Value};

pub(super) fn render(err: &ApiError) -> Value {
    let mut map = Map::new();
    put(&mut map, "type", err.problem.type_uri.as_deref());
    put(&mut map, "title", title(err).as_deref());
    if let Some(s) = err.status {
        map.insert("status".into(), Value::from(s));
    }
    put(&mut map, "detail", err.message.as_deref());
    put(&mut map, "instance", err.problem.instance.as_deref());
    put(&mut map, "code", err.code.as_deref());
    put(&mut map, "hint", err.hint.as_deref());
    if let Some(r) = err.retryable {
        map.insert("retryable".into(), Value::Bool(r));
    }
    put(&mut map, "request_id", err.request_id.as_deref());
    put_extra(&mut map, &err.extra);
    Value::Object(map)
}

/// §4.2.1: with `about:blank` (or no type), the title SHOULD be the status reason phrase.
fn title(err: &ApiError) -> Option<String> {
    err.problem.title.clone().or_else(|| {
        let blank = err
            .problem
            .type_uri
            .as_deref()
            .is_none_or(|t| t == "about:blank");
        if blank {
            err.status
                .and_then(catalogue::status)
                .map(|s| s.reason.to_owned())
        } else {
            None
        }
    })
}

pub(super) fn parse(mut map: Map<String, Value>, status: Option<u16>) -> ApiError {
    let body_status = match map.get("status").and_then(Value::as_u64) {
        Some(s @ 100..=599) if status.is_none_or(|h| u64::from(h) == s) => {
            map.remove("status");
            u16::try_from(s).ok()
        }
        _ => None,
    };
    ApiError {
        status: status.or(body_status),
        problem: ProblemFields {
            type_uri: take_string(&mut map, "type"),
            title: take_string(&mut map, "title"),
            instance: take_string(&mut map, "instance"),
        },
        message: take_string(&mut map, "detail"),
        code: take_string(&mut map, "code"),
        hint: take_string(&mut map, "hint"),
        retryable: take_bool(&mut map, "retryable"),
        request_id: take_string(&mut map, "request_id"),
        extra: map,
        ..ApiError::default()
    }
}

pub(super) fn project(err: &ApiError) -> ApiError {
    ApiError {
        status: err.status,
        code: err.code.clone(),
        message: err.message.clone(),
        hint: err.hint.clone(),
        retryable: err.retryable,
        request_id: err.request_id.clone(),
        problem: ProblemFields {
            title: title(err),
            ..err.problem.clone()
        },
        extra: err.extra.clone(),
        ..ApiError::default()
    }
}
