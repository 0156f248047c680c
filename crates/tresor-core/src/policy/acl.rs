//! A set of policies compiled for fast, allocation-free checks.
//!
//! Rules are split by shape when the ACL is built, never per request:
//!
//! - **exact** paths live in a `HashMap`: one hash lookup;
//! - **glob** paths (`secret/data/*`, trailing `*` only) live in a byte trie
//!   keyed by the prefix before the `*`; one walk along the request path
//!   finds the longest matching prefix in O(path length), whatever the
//!   number of rules. (A sorted `Vec` cannot answer "longest prefix" in one
//!   binary search, and prefixes are not segment-aligned — `secret/fo*` is
//!   legal — so a segment-keyed map would not do either.)
//! - **segment-wildcard** paths (any segment exactly `+`, optionally ending
//!   in `*`) are kept in a `Vec` sorted by Vault's priority, highest first:
//!   the first one that matches is the best of them, so the scan stops at
//!   the first match — or as soon as the glob found in the trie outranks
//!   the remaining candidates. Each candidate is compared segment by segment
//!   against the request path without splitting it into a `Vec`.
//!
//! Matching follows Vault (`vault/acl.go`): an exact rule wins outright;
//! otherwise the best of the longest glob and the matching `+` rules wins by
//! Vault's documented priority (later first wildcard, then not ending in `*`,
//! then fewer `+`, then longer, then lexicographically greater). Rules for
//! the same path string from several policies are merged first: capabilities
//! are united, `deny` anywhere leaves only `deny`, parameter constraints are
//! merged as Vault does.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tresor_sdk::{Map, Operation};

use super::{Capabilities, PathRules, Policy};

/// The outcome of [`Acl::allow`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AclDecision {
    pub allowed: bool,
    /// The matching rule grants `sudo` (root-protected paths need it), set
    /// even when the operation itself is refused, as in Vault.
    pub sudo: bool,
    /// Capabilities of the rule that matched (empty when none did).
    pub capabilities: Capabilities,
    /// Response wrapping bounds of the matching rule, for the core to enforce
    /// against the request's `X-Vault-Wrap-TTL` (Vault refuses a request that
    /// is not wrapped, or wrapped outside the bounds, when they are set).
    pub min_wrapping_ttl: Option<Duration>,
    pub max_wrapping_ttl: Option<Duration>,
}

impl AclDecision {
    const DENIED: AclDecision = AclDecision {
        allowed: false,
        sudo: false,
        capabilities: Capabilities::NONE,
        min_wrapping_ttl: None,
        max_wrapping_ttl: None,
    };
}

/// Compiled, immutable access rules of a set of policies.
#[derive(Debug, Default)]
pub struct Acl {
    root: bool,
    exact: HashMap<String, Perms>,
    globs: PrefixTrie,
    glob_rules: Vec<(String, Perms)>,
    segment_rules: Vec<SegmentRule>,
}

impl Acl {
    /// Compile `policies`. A policy *named* `root` gets no special powers
    /// here: root is only ever [`Acl::root`], so a name can never smuggle it in.
    pub fn new(policies: &[Arc<Policy>]) -> Acl {
        let mut exact: HashMap<String, Perms> = HashMap::new();
        let mut globs: HashMap<String, Perms> = HashMap::new();
        let mut segments: HashMap<String, Perms> = HashMap::new();
        for policy in policies {
            for rules in &policy.paths {
                let (map, key) = match classify(&rules.path) {
                    Shape::Segment => (&mut segments, rules.path.as_str()),
                    Shape::Glob(prefix) => (&mut globs, prefix),
                    Shape::Exact => (&mut exact, rules.path.as_str()),
                };
                match map.get_mut(key) {
                    Some(existing) => existing.merge(rules),
                    None => {
                        map.insert(key.to_string(), Perms::from_rules(rules));
                    }
                }
            }
        }

        let mut glob_rules: Vec<(String, Perms)> = globs.into_iter().collect();
        glob_rules.sort_by(|a, b| a.0.cmp(&b.0));
        let mut trie = PrefixTrie::default();
        for (i, (prefix, _)) in glob_rules.iter().enumerate() {
            trie.insert(prefix.as_bytes(), i);
        }

        let mut segment_rules: Vec<SegmentRule> = segments
            .into_iter()
            .map(|(path, perms)| SegmentRule::new(&path, perms))
            .collect();
        segment_rules.sort_by(|a, b| b.key().cmp(&a.key()));

        Acl {
            root: false,
            exact,
            globs: trie,
            glob_rules,
            segment_rules,
        }
    }

    /// The root policy: everything, including sudo, everywhere.
    pub fn root() -> Acl {
        Acl {
            root: true,
            ..Acl::default()
        }
    }

    pub fn is_root(&self) -> bool {
        self.root
    }

    /// May `op` on `path` (the full request path, mount included) proceed
    /// with these request parameters?
    pub fn allow(&self, op: Operation, path: &str, params: Option<&Map>) -> AclDecision {
        if self.root {
            return AclDecision {
                allowed: true,
                sudo: true,
                capabilities: Capabilities::ALL,
                min_wrapping_ttl: None,
                max_wrapping_ttl: None,
            };
        }
        let Some(perms) = self.lookup(path, op == Operation::List) else {
            return AclDecision::DENIED;
        };
        let caps = perms.caps;
        let mut decision = AclDecision {
            allowed: false,
            sudo: caps.contains(Capabilities::SUDO),
            capabilities: caps,
            min_wrapping_ttl: perms.min_wrapping_ttl,
            max_wrapping_ttl: perms.max_wrapping_ttl,
        };
        if caps.is_deny() {
            return decision;
        }
        let granted = match op {
            Operation::Create => caps.contains(Capabilities::CREATE),
            Operation::Read => caps.contains(Capabilities::READ),
            Operation::Update => caps.contains(Capabilities::UPDATE),
            Operation::Patch => caps.contains(Capabilities::PATCH),
            Operation::Delete => caps.contains(Capabilities::DELETE),
            Operation::List => caps.contains(Capabilities::LIST),
            // Help reveals only the path's schema: any capability will do.
            Operation::Help => !caps.is_empty(),
            // Internal lease callbacks are writes, as in Vault.
            Operation::Renew | Operation::Revoke => caps.contains(Capabilities::UPDATE),
            // Fail closed on operations added later.
            _ => false,
        };
        if !granted {
            return decision;
        }
        if matches!(op, Operation::Create | Operation::Update | Operation::Patch)
            && !perms.parameters_allowed(params)
        {
            return decision;
        }
        decision.allowed = true;
        decision
    }

    /// What `sys/capabilities` answers for `path`: `["root"]` for root,
    /// `["deny"]` when nothing is granted, else the sorted capability names.
    /// Uses LIST matching, as Vault does, so that `path/` finds `path` rules.
    pub fn capabilities(&self, path: &str) -> Vec<String> {
        if self.root {
            return vec!["root".to_string()];
        }
        let caps = self
            .lookup(path, true)
            .map(|p| p.caps)
            .unwrap_or(Capabilities::NONE);
        if caps.is_empty() || caps.is_deny() {
            return vec!["deny".to_string()];
        }
        caps.names().into_iter().map(str::to_string).collect()
    }

    /// Does any rule grant something at `mount` (`secret/`) or under it?
    /// Vault's `hasMountAccess`: the UI mount listing shows only such
    /// mounts. Answered from the compiled rules, already merged per path.
    pub fn reaches_mount(&self, mount: &str) -> bool {
        if self.root {
            return true;
        }
        let grants = |p: &Perms| !p.caps.is_empty() && !p.caps.is_deny();
        // A rule granting the mount path itself answers at once.
        if self.lookup(mount, true).is_some_and(grants) {
            return true;
        }
        self.exact
            .iter()
            .any(|(path, p)| grants(p) && rule_reaches_under(path, false, mount))
            || self
                .glob_rules
                .iter()
                .any(|(prefix, p)| grants(p) && rule_reaches_under(prefix, true, mount))
            || self
                .segment_rules
                .iter()
                .any(|r| grants(&r.perms) && rule_reaches_under(&r.path, r.is_prefix, mount))
    }

    fn lookup(&self, path: &str, list: bool) -> Option<&Perms> {
        let path = path.trim_start_matches('/');
        if let Some(p) = self.exact.get(path) {
            return Some(p);
        }
        // Vault (VAULT-3825): a LIST of `foo/` is also granted by rules
        // written for `foo`, and those are tried first.
        if list {
            if let Some(trimmed) = path.strip_suffix('/') {
                if let Some(p) = self.exact.get(trimmed) {
                    return Some(p);
                }
                if let Some(p) = self.non_exact(trimmed) {
                    return Some(p);
                }
            }
        }
        self.non_exact(path)
    }

    fn non_exact(&self, path: &str) -> Option<&Perms> {
        let glob = self
            .globs
            .longest(path.as_bytes())
            .and_then(|i| self.glob_rules.get(i));
        if self.segment_rules.is_empty() {
            return glob.map(|(_, p)| p);
        }
        let glob_key = glob.map(|(prefix, _)| PriorityKey {
            first_wildcard: prefix.len(),
            is_prefix: true,
            wildcards: 0,
            path: prefix,
        });
        let parts = path.bytes().filter(|b| *b == b'/').count() + 1;
        for rule in &self.segment_rules {
            if let (Some(key), Some((_, perms))) = (&glob_key, glob) {
                if key.cmp(&rule.key()) == Ordering::Greater {
                    return Some(perms);
                }
            }
            if rule.matches(path, parts) {
                return Some(&rule.perms);
            }
        }
        glob.map(|(_, p)| p)
    }
}

enum Shape<'a> {
    Exact,
    /// Trailing `*`, no `+` segment: the prefix before the `*`.
    Glob(&'a str),
    Segment,
}

/// `+` is a wildcard only as a whole segment (`a/+/b`); `a+b` is a literal.
fn classify(path: &str) -> Shape<'_> {
    if path.split('/').any(|s| s == "+") {
        Shape::Segment
    } else if let Some(prefix) = path.strip_suffix('*') {
        Shape::Glob(prefix)
    } else {
        Shape::Exact
    }
}

// ---------------------------------------------------------------- priority

/// Could the policy path `body` (its trailing `*` removed, `glob` telling
/// whether it had one) match some path under `mount` (`a/b/`)? Plain and
/// glob rules must start with the mount; a rule with `+` segments is
/// compared segment by segment over the mount's segments, a glob's last
/// segment also matching a longer one.
fn rule_reaches_under(body: &str, glob: bool, mount: &str) -> bool {
    if !body.split('/').any(|seg| seg == "+") {
        return body.starts_with(mount);
    }
    let rule_segs: Vec<&str> = body.split('/').collect();
    for (i, m) in mount.trim_end_matches('/').split('/').enumerate() {
        let Some(r) = rule_segs.get(i) else {
            // The rule ends above the mount.
            return false;
        };
        let last = i + 1 == rule_segs.len();
        if last && glob && (*r == "+" || m.starts_with(r)) {
            return true;
        }
        if *r != "+" && *r != m {
            return false;
        }
    }
    true
}

/// Vault's ordering between non-exact rules; `Greater` wins.
#[derive(Debug, PartialEq, Eq)]
struct PriorityKey<'a> {
    /// Byte offset of the first `+` segment, or of the trailing `*`.
    first_wildcard: usize,
    is_prefix: bool,
    wildcards: usize,
    /// The rule's path without its trailing `*`.
    path: &'a str,
}

impl Ord for PriorityKey<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.first_wildcard
            .cmp(&other.first_wildcard)
            .then_with(|| other.is_prefix.cmp(&self.is_prefix))
            .then_with(|| other.wildcards.cmp(&self.wildcards))
            .then_with(|| self.path.len().cmp(&other.path.len()))
            .then_with(|| self.path.cmp(other.path))
    }
}

impl PartialOrd for PriorityKey<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

// ---------------------------------------------------------------- segment rules

#[derive(Debug)]
enum Segment {
    Any,
    Literal(String),
}

#[derive(Debug)]
struct SegmentRule {
    /// The path without its trailing `*`.
    path: String,
    segments: Vec<Segment>,
    is_prefix: bool,
    first_wildcard: usize,
    wildcards: usize,
    perms: Perms,
}

impl SegmentRule {
    fn new(full: &str, perms: Perms) -> SegmentRule {
        let (path, is_prefix) = match full.strip_suffix('*') {
            Some(p) => (p, true),
            None => (full, false),
        };
        let mut segments = Vec::new();
        let mut first_wildcard = None;
        let mut offset = 0;
        for part in path.split('/') {
            if part == "+" {
                first_wildcard.get_or_insert(offset);
                segments.push(Segment::Any);
            } else {
                segments.push(Segment::Literal(part.to_string()));
            }
            offset += part.len() + 1;
        }
        let wildcards = segments
            .iter()
            .filter(|s| matches!(s, Segment::Any))
            .count();
        SegmentRule {
            path: path.to_string(),
            segments,
            is_prefix,
            first_wildcard: first_wildcard.unwrap_or(path.len()),
            wildcards,
            perms,
        }
    }

    fn key(&self) -> PriorityKey<'_> {
        PriorityKey {
            first_wildcard: self.first_wildcard,
            is_prefix: self.is_prefix,
            wildcards: self.wildcards,
            path: &self.path,
        }
    }

    /// `parts` is the number of `/`-separated segments of `path`.
    fn matches(&self, path: &str, parts: usize) -> bool {
        let n = self.segments.len();
        if parts < n || (!self.is_prefix && parts != n) {
            return false;
        }
        for (i, (segment, part)) in self.segments.iter().zip(path.split('/')).enumerate() {
            match segment {
                Segment::Any => {}
                Segment::Literal(lit) if lit == part => {}
                Segment::Literal(lit)
                    if self.is_prefix && i == n - 1 && part.starts_with(lit.as_str()) => {}
                Segment::Literal(_) => return false,
            }
        }
        true
    }
}

// ---------------------------------------------------------------- glob trie

/// A byte trie over glob prefixes; `longest` walks the request path once.
#[derive(Debug)]
struct PrefixTrie {
    nodes: Vec<TrieNode>,
}

#[derive(Debug, Default)]
struct TrieNode {
    /// Sorted by byte, searched by binary search.
    children: Vec<(u8, usize)>,
    rule: Option<usize>,
}

impl Default for PrefixTrie {
    fn default() -> Self {
        PrefixTrie {
            nodes: vec![TrieNode::default()],
        }
    }
}

impl PrefixTrie {
    fn insert(&mut self, key: &[u8], rule: usize) {
        let mut node = 0;
        for &b in key {
            node = match self.nodes[node].children.binary_search_by_key(&b, |c| c.0) {
                Ok(i) => self.nodes[node].children[i].1,
                Err(i) => {
                    let next = self.nodes.len();
                    self.nodes.push(TrieNode::default());
                    self.nodes[node].children.insert(i, (b, next));
                    next
                }
            };
        }
        self.nodes[node].rule = Some(rule);
    }

    /// The rule of the longest inserted key that is a prefix of `path`.
    fn longest(&self, path: &[u8]) -> Option<usize> {
        let mut node = self.nodes.first()?;
        let mut best = node.rule;
        for &b in path {
            match node.children.binary_search_by_key(&b, |c| c.0) {
                Ok(i) => {
                    node = self.nodes.get(node.children[i].1)?;
                    if node.rule.is_some() {
                        best = node.rule;
                    }
                }
                Err(_) => break,
            }
        }
        best
    }
}

// ---------------------------------------------------------------- permissions

/// The merged permissions of every rule written for one path string.
#[derive(Debug, Clone, Default)]
struct Perms {
    caps: Capabilities,
    /// Empty: no constraint.
    allowed: HashMap<String, Vec<Value>>,
    denied: HashMap<String, Vec<Value>>,
    required: Vec<String>,
    min_wrapping_ttl: Option<Duration>,
    max_wrapping_ttl: Option<Duration>,
}

impl Perms {
    fn from_rules(r: &PathRules) -> Perms {
        Perms {
            caps: r.capabilities,
            allowed: r.allowed_parameters.clone().into_iter().collect(),
            denied: r.denied_parameters.clone().into_iter().collect(),
            required: r.required_parameters.clone(),
            min_wrapping_ttl: r.min_wrapping_ttl,
            max_wrapping_ttl: r.max_wrapping_ttl,
        }
    }

    /// Vault's merge (`NewACL`): deny is sticky; otherwise union the
    /// capabilities, keep the tighter wrapping bounds, and merge parameter
    /// lists — an empty list ("any value") absorbs a non-empty one.
    fn merge(&mut self, r: &PathRules) {
        if self.caps.is_deny() {
            return;
        }
        if r.capabilities.is_deny() {
            *self = Perms {
                caps: Capabilities::DENY,
                ..Perms::default()
            };
            return;
        }
        self.caps |= r.capabilities;
        self.min_wrapping_ttl = tighter(self.min_wrapping_ttl, r.min_wrapping_ttl);
        self.max_wrapping_ttl = tighter(self.max_wrapping_ttl, r.max_wrapping_ttl);
        merge_params(&mut self.allowed, &r.allowed_parameters);
        merge_params(&mut self.denied, &r.denied_parameters);
        for p in &r.required_parameters {
            if !self.required.contains(p) {
                self.required.push(p.clone());
            }
        }
    }

    /// Vault's parameter checks, in Vault's order: required, then denied,
    /// then allowed.
    fn parameters_allowed(&self, params: Option<&Map>) -> bool {
        for required in &self.required {
            if !params.is_some_and(|m| m.contains_key(required.as_str())) {
                return false;
            }
        }
        let Some(data) = params.filter(|m| !m.is_empty()) else {
            return true;
        };
        if !self.denied.is_empty() {
            if self.denied.contains_key("*") {
                return false;
            }
            for (key, value) in data {
                if let Some(list) = self.denied.get(lower(key).as_ref()) {
                    if value_in_denied(value, list) {
                        return false;
                    }
                }
            }
        }
        if self.allowed.is_empty() {
            return true;
        }
        let allow_any_key = self.allowed.contains_key("*");
        if allow_any_key && self.allowed.len() == 1 {
            return true;
        }
        for (key, value) in data {
            match self.allowed.get(lower(key).as_ref()) {
                None if !allow_any_key => return false,
                None => {}
                Some(list) if !value_in_allowed(value, list) => return false,
                Some(_) => {}
            }
        }
        true
    }
}

fn tighter(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn merge_params(
    into: &mut HashMap<String, Vec<Value>>,
    from: &std::collections::BTreeMap<String, Vec<Value>>,
) {
    for (key, values) in from {
        match into.get_mut(key) {
            Some(existing) if existing.is_empty() => {}
            Some(existing) if values.is_empty() => existing.clear(),
            Some(existing) => existing.extend(values.iter().cloned()),
            None => {
                into.insert(key.clone(), values.clone());
            }
        }
    }
}

/// Policy parameter keys are lower-cased at parse time; allocate only for
/// the rare request key that has upper-case letters.
fn lower(key: &str) -> Cow<'_, str> {
    if key.chars().any(char::is_uppercase) {
        Cow::Owned(key.to_lowercase())
    } else {
        Cow::Borrowed(key)
    }
}

/// Vault's `GlobbedStringsMatch`: `*` allowed as a prefix and/or suffix.
fn glob_match(pattern: &str, value: &str) -> bool {
    if pattern.len() < 2 {
        return pattern == value;
    }
    match (pattern.strip_prefix('*'), pattern.strip_suffix('*')) {
        (Some(_), Some(_)) => value.contains(&pattern[1..pattern.len() - 1]),
        (Some(suffix), None) => value.ends_with(suffix),
        (None, Some(prefix)) => value.starts_with(prefix),
        (None, None) => pattern == value,
    }
}

fn value_in_list(value: &Value, list: &[Value]) -> bool {
    list.iter().any(|el| match (el, value) {
        (Value::String(pattern), Value::String(v)) => glob_match(pattern, v),
        (el, v) => el == v,
    })
}

/// Comma-separated strings are checked element-wise, as Vault does, because
/// many fields are comma-string slices (`policies = "a,b"`).
fn comma_parts(s: &str) -> Option<impl Iterator<Item = &str>> {
    s.contains(',').then(|| s.split(',').map(str::trim))
}

/// Allowed when the value (or every element of a list / comma string) is
/// listed. Unlike Vault, an empty list or empty string is not vacuously
/// allowed: it must be listed itself.
fn value_in_allowed(value: &Value, list: &[Value]) -> bool {
    if list.is_empty() || value_in_list(value, list) {
        return true;
    }
    match value {
        Value::Array(items) if !items.is_empty() => items.iter().all(|v| value_in_list(v, list)),
        Value::String(s) => comma_parts(s).is_some_and(|mut parts| {
            parts.all(|p| {
                list.iter()
                    .any(|el| matches!(el, Value::String(pat) if glob_match(pat, p)))
            })
        }),
        _ => false,
    }
}

/// Denied when the value, or any element of a list / comma string, is listed.
fn value_in_denied(value: &Value, list: &[Value]) -> bool {
    if list.is_empty() || value_in_list(value, list) {
        return true;
    }
    match value {
        Value::Array(items) => items.iter().any(|v| value_in_list(v, list)),
        Value::String(s) => comma_parts(s).is_some_and(|mut parts| {
            parts.any(|p| {
                list.iter()
                    .any(|el| matches!(el, Value::String(pat) if glob_match(pat, p)))
            })
        }),
        _ => false,
    }
}

#[cfg(test)]
#[path = "acl_tests.rs"]
mod tests;
