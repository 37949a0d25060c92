//! Key naming for the Redis store.
//!
//! `<prefix>:{<tag>}:<limit>:<scope>`. The `{…}` part is a Redis Cluster hash tag: every
//! key of one decision must live in one slot for the Lua script to touch them atomically,
//! so every key carries the same tag.
//!
//! **What is co-located, and what that costs.** With the default [`HashTag::Constant`] all
//! of a deployment's counters share one slot: limits on different scopes (org, IP, user)
//! are exact and global, but one Cluster node carries all of weir's load (a Cluster still
//! gives failover, and other applications' keys spread as usual). [`HashTag::PerScope`] tags
//! keys by the *first* item's scope value of each decision (the organisation, when the
//! policy lists the org limit first): load spreads over the Cluster by tenant, and every
//! other limit is then counted per (tenant, scope) — a per-IP limit becomes per org and IP.
//! Choose it only when that is the semantics you want.

/// How keys are tagged for Redis Cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashTag {
    /// One tag for every key (exact global limits; one slot).
    Constant(String),
    /// The first item's scope value (spreads tenants; other limits become per tenant).
    PerScope,
}

impl Default for HashTag {
    fn default() -> Self {
        HashTag::Constant("weir".to_owned())
    }
}

/// The tag of one decision.
pub(crate) fn tag<'a>(mode: &'a HashTag, first_scope: &'a str) -> &'a str {
    match mode {
        HashTag::Constant(t) => t,
        HashTag::PerScope if first_scope.is_empty() => "global",
        HashTag::PerScope => first_scope,
    }
}

/// Characters that cannot appear inside a tag (they would end or open it).
fn clean(s: &str, out: &mut String) {
    for c in s.chars() {
        out.push(match c {
            '{' | '}' => '_',
            c => c,
        });
    }
}

/// The key of one counter.
pub(crate) fn key(prefix: &str, tag: &str, limit: &str, scope: &str) -> String {
    let mut k = String::with_capacity(prefix.len() + tag.len() + limit.len() + scope.len() + 6);
    k.push_str(prefix);
    k.push_str(":{");
    clean(tag, &mut k);
    k.push_str("}:");
    k.push_str(limit);
    k.push(':');
    k.push_str(scope);
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_tag_and_cannot_escape_it() {
        assert_eq!(
            key("weir", "weir", "org-minute", "acme"),
            "weir:{weir}:org-minute:acme"
        );
        assert_eq!(key("w", "a}b{", "l", "s"), "w:{a_b_}:l:s");
    }
}
