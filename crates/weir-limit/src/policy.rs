//! Policies: which limits apply to a request, and how its scope keys are formed.
//!
//! A request is described by its scopes (organisation, API key, user, client IP, route,
//! method class) and its plan and cost. Every [`LimitDef`] whose filters match is checked
//! at once, all-or-nothing. A limit whose scope needs a dimension the request does not
//! have (no user on an anonymous request, say) does not apply to it.

use crate::quota::Quota;
use std::num::NonZeroU64;

/// The HTTP method classes limits can tell apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MethodClass {
    /// GET, HEAD, OPTIONS (and TRACE).
    Read,
    /// POST, PUT, PATCH, DELETE and anything else.
    Write,
}

impl MethodClass {
    /// Classifies an HTTP method name.
    pub fn of(method: &str) -> MethodClass {
        match method {
            "GET" | "HEAD" | "OPTIONS" | "TRACE" => MethodClass::Read,
            _ => MethodClass::Write,
        }
    }

    /// `read` or `write`.
    pub fn as_str(self) -> &'static str {
        match self {
            MethodClass::Read => "read",
            MethodClass::Write => "write",
        }
    }
}

/// One dimension of a limit's scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dimension {
    /// The organisation (plan limits are shared by all its keys and users).
    Organisation,
    /// The API key (by its id, never the secret).
    ApiKey,
    /// The user.
    User,
    /// The client IP.
    ClientIp,
    /// The route name.
    Route,
    /// The method class (`read`/`write`).
    MethodClass,
}

/// Which method classes a limit applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MethodFilter {
    /// Every request.
    #[default]
    Any,
    /// Only reads.
    Read,
    /// Only writes.
    Write,
}

impl MethodFilter {
    fn admits(self, m: MethodClass) -> bool {
        matches!(
            (self, m),
            (MethodFilter::Any, _)
                | (MethodFilter::Read, MethodClass::Read)
                | (MethodFilter::Write, MethodClass::Write)
        )
    }
}

/// A value that is either fixed or depends on the organisation's plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanValue<T> {
    /// The same for everyone.
    Fixed(T),
    /// By plan name; a request on a plan not listed is not subject to this limit.
    PerPlan(Vec<(String, T)>),
}

impl<T: Copy> PlanValue<T> {
    /// The value for `plan`.
    pub fn resolve(&self, plan: Option<&str>) -> Option<T> {
        match self {
            PlanValue::Fixed(v) => Some(*v),
            PlanValue::PerPlan(list) => {
                let plan = plan?;
                list.iter().find(|(p, _)| p == plan).map(|(_, v)| *v)
            }
        }
    }
}

/// What a limit counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKind {
    /// Requests (or cost units) per window.
    Rate(PlanValue<Quota>),
    /// Requests in flight at once.
    Concurrency(PlanValue<NonZeroU64>),
}

/// One limit of a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitDef {
    /// A stable name: it identifies the limit's state across policy reloads and is what
    /// `RateLimit-Policy` advertises. Printable ASCII.
    pub name: String,
    /// The dimensions its counter is keyed by; empty means one counter for everyone.
    pub scope: Vec<Dimension>,
    /// Which method classes it applies to.
    pub methods: MethodFilter,
    /// The routes it applies to; empty means all.
    pub routes: Vec<String>,
    /// What it counts.
    pub kind: LimitKind,
}

impl LimitDef {
    /// A rate limit with a fixed quota.
    pub fn rate(name: impl Into<String>, scope: &[Dimension], quota: Quota) -> LimitDef {
        LimitDef {
            name: name.into(),
            scope: scope.to_vec(),
            methods: MethodFilter::Any,
            routes: Vec::new(),
            kind: LimitKind::Rate(PlanValue::Fixed(quota)),
        }
    }

    /// A rate limit whose quota depends on the plan.
    pub fn per_plan(
        name: impl Into<String>,
        scope: &[Dimension],
        plans: Vec<(String, Quota)>,
    ) -> LimitDef {
        LimitDef {
            kind: LimitKind::Rate(PlanValue::PerPlan(plans)),
            ..LimitDef::rate(
                name,
                scope,
                Quota::per_second(1).unwrap_or_else(|_| unreachable!()),
            )
        }
    }

    /// A concurrency limit.
    pub fn concurrency(name: impl Into<String>, scope: &[Dimension], max: NonZeroU64) -> LimitDef {
        LimitDef {
            name: name.into(),
            scope: scope.to_vec(),
            methods: MethodFilter::Any,
            routes: Vec::new(),
            kind: LimitKind::Concurrency(PlanValue::Fixed(max)),
        }
    }

    /// Restricts the limit to one method class.
    pub fn for_methods(mut self, methods: MethodFilter) -> LimitDef {
        self.methods = methods;
        self
    }

    /// Restricts the limit to some routes.
    pub fn for_routes(mut self, routes: &[&str]) -> LimitDef {
        self.routes = routes.iter().map(|r| (*r).to_owned()).collect();
        self
    }
}

/// A set of limits checked together.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Policy {
    /// The limits, in the order they are reported.
    pub limits: Vec<LimitDef>,
}

/// A policy that cannot be used.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PolicyError {
    /// Two limits share a name.
    #[error("limit name {0:?} is used twice")]
    DuplicateName(String),
    /// A name that headers cannot carry.
    #[error("limit name {0:?} must be 1-64 printable ASCII characters without '\"' or '\\\\'")]
    BadName(String),
    /// A per-plan limit with no plans.
    #[error("limit {0:?} lists no plans")]
    NoPlans(String),
}

impl Policy {
    /// Validates and builds a policy.
    pub fn new(limits: Vec<LimitDef>) -> Result<Policy, PolicyError> {
        for (i, l) in limits.iter().enumerate() {
            let ok = (1..=64).contains(&l.name.len())
                && l.name
                    .bytes()
                    .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\');
            if !ok {
                return Err(PolicyError::BadName(l.name.clone()));
            }
            if limits[..i].iter().any(|o| o.name == l.name) {
                return Err(PolicyError::DuplicateName(l.name.clone()));
            }
            let empty = match &l.kind {
                LimitKind::Rate(PlanValue::PerPlan(p)) => p.is_empty(),
                LimitKind::Concurrency(PlanValue::PerPlan(p)) => p.is_empty(),
                _ => false,
            };
            if empty {
                return Err(PolicyError::NoPlans(l.name.clone()));
            }
        }
        Ok(Policy { limits })
    }

    /// The limit called `name`.
    pub fn limit(&self, name: &str) -> Option<&LimitDef> {
        self.limits.iter().find(|l| l.name == name)
    }
}

/// One request, as the limiter sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    /// Organisation id.
    pub organisation: Option<&'a str>,
    /// API key id (not the secret).
    pub api_key: Option<&'a str>,
    /// User id.
    pub user: Option<&'a str>,
    /// Client IP, as text.
    pub client_ip: Option<&'a str>,
    /// Route name.
    pub route: Option<&'a str>,
    /// Method class.
    pub method: MethodClass,
    /// The organisation's plan.
    pub plan: Option<&'a str>,
    /// What the request costs (1 for a plain request, the item count for a batch).
    pub cost: u64,
}

impl Default for Request<'_> {
    fn default() -> Self {
        Request {
            organisation: None,
            api_key: None,
            user: None,
            client_ip: None,
            route: None,
            method: MethodClass::Read,
            plan: None,
            cost: 1,
        }
    }
}

/// The separator between dimensions of a composite scope key (ASCII unit separator: it
/// cannot appear in any header-derived value).
pub const SCOPE_SEPARATOR: char = '\u{1f}';

impl<'a> Request<'a> {
    fn dimension(&self, d: Dimension) -> Option<&'a str> {
        match d {
            Dimension::Organisation => self.organisation,
            Dimension::ApiKey => self.api_key,
            Dimension::User => self.user,
            Dimension::ClientIp => self.client_ip,
            Dimension::Route => self.route,
            Dimension::MethodClass => Some(self.method.as_str()),
        }
    }

    /// Whether `limit` applies to this request.
    pub fn matches(&self, limit: &LimitDef) -> bool {
        limit.methods.admits(self.method)
            && (limit.routes.is_empty()
                || self
                    .route
                    .is_some_and(|r| limit.routes.iter().any(|x| x == r)))
            && limit.scope.iter().all(|d| self.dimension(*d).is_some())
    }

    /// The scope key of `limit` for this request; borrowed when it has at most one dimension.
    pub fn scope_key(&self, limit: &LimitDef) -> Option<std::borrow::Cow<'a, str>> {
        match limit.scope.as_slice() {
            [] => Some(std::borrow::Cow::Borrowed("")),
            [d] => self.dimension(*d).map(std::borrow::Cow::Borrowed),
            dims => {
                let mut key = String::with_capacity(64);
                for (i, d) in dims.iter().enumerate() {
                    if i > 0 {
                        key.push(SCOPE_SEPARATOR);
                    }
                    key.push_str(self.dimension(*d)?);
                }
                Some(std::borrow::Cow::Owned(key))
            }
        }
    }
}
