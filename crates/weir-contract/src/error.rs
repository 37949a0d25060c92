//! The one error model every dialect renders from and parses into.
//!
//! Fields are optional where some dialect leaves them out (problem+json has no mandatory
//! `code`; a FastAPI `{"detail":"text"}` has no code either). Members a dialect does not
//! define are kept in `extra`, so a gateway that normalises an upstream error into another
//! dialect, or relays it, loses nothing.

use serde_json::{Map, Value};

/// One level of a Microsoft-style nested `innerError` chain.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct InnerError {
    /// The more specific code this level adds, when it adds one.
    pub code: Option<String>,
    /// Every other member of this level (`client-request-id`, service-defined members).
    pub extra: Map<String, Value>,
}

/// The RFC 9457 members that have no counterpart in the other dialects.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProblemFields {
    /// `type`: the problem type URI. Absent means `about:blank`.
    pub type_uri: Option<String>,
    /// `title`: the short summary of the problem type.
    pub title: Option<String>,
    /// `instance`: the URI of this occurrence.
    pub instance: Option<String>,
}

/// An API error, independent of the envelope it travels in.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ApiError {
    /// The HTTP status (from the status line, or a problem body's `status` member).
    pub status: Option<u16>,
    /// The outermost machine-readable code.
    pub code: Option<String>,
    /// Human-readable message (problem+json `detail`).
    pub message: Option<String>,
    /// How to fix it, when the server says.
    pub hint: Option<String>,
    /// The server's own verdict on retrying (MCP `retryable`). Wins over the status.
    pub retryable: Option<bool>,
    /// The server's request id (`innerError.request-id`, `request_id` extension).
    pub request_id: Option<String>,
    /// When the error happened, as the server wrote it (`innerError.date`, RFC 3339).
    pub date: Option<String>,
    /// What the error is about, e.g. a property name (`error.target`).
    pub target: Option<String>,
    /// The nested `innerError` chain, outermost first.
    pub inner: Vec<InnerError>,
    /// Distinct related errors (`error.details`).
    pub details: Vec<ApiError>,
    /// problem+json members.
    pub problem: ProblemFields,
    /// Members no dialect defines, kept verbatim.
    pub extra: Map<String, Value>,
}

impl ApiError {
    /// An error with a status, code and message; everything else empty.
    pub fn new(status: u16, code: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            status: Some(status),
            code: Some(code.into()),
            message: Some(message.into()),
            ..ApiError::default()
        }
    }

    /// An error for a catalogue code, with its default status and message and its
    /// `retryable` flag set from the catalogue.
    pub fn from_code(info: &crate::CodeInfo) -> Self {
        ApiError {
            retryable: Some(info.retryable),
            ..ApiError::new(info.status, info.code, info.message)
        }
    }

    /// Sets the hint.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Sets the request id.
    pub fn with_request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = Some(id.into());
        self
    }

    /// Every code in the error, outermost first: the top-level code, then each
    /// `innerError` level that refines it.
    pub fn code_chain(&self) -> impl Iterator<Item = &str> {
        self.code
            .as_deref()
            .into_iter()
            .chain(self.inner.iter().filter_map(|i| i.code.as_deref()))
    }

    /// The deepest code in the chain: the most specific thing the server said.
    pub fn deepest_code(&self) -> Option<&str> {
        self.code_chain().last()
    }

    /// The deepest code the caller understands, as the Microsoft guidelines require
    /// clients to pick ("traverse through all of the nested innererrors and choose the
    /// deepest one that they understand").
    pub fn most_specific_code(&self, understands: impl Fn(&str) -> bool) -> Option<&str> {
        self.code_chain().filter(|c| understands(c)).last()
    }
}
