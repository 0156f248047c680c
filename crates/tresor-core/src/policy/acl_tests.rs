use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::policy::parse_policy;

fn policy(name: &str, text: &str) -> Arc<Policy> {
    Arc::new(parse_policy(name, text).expect("test policy parses"))
}

fn acl(texts: &[&str]) -> Acl {
    let policies: Vec<_> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| policy(&format!("p{i}"), t))
        .collect();
    Acl::new(&policies)
}

fn params(v: serde_json::Value) -> Map {
    match v {
        serde_json::Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn can(acl: &Acl, op: Operation, path: &str) -> bool {
    acl.allow(op, path, None).allowed
}

#[test]
fn exact_beats_glob() {
    // Vault docs: "secret/foo" gets only read although "secret/*" grants create.
    let a = acl(&[r#"
        path "secret/*" { capabilities = ["create"] }
        path "secret/foo" { capabilities = ["read"] }
    "#]);
    assert!(can(&a, Operation::Read, "secret/foo"));
    assert!(!can(&a, Operation::Create, "secret/foo"));
    assert!(can(&a, Operation::Create, "secret/bar"));
    assert!(!can(&a, Operation::Read, "secret/bar"));
    assert!(!can(&a, Operation::Read, "secret"));
}

#[test]
fn longest_glob_wins_and_deny_blocks() {
    let a = acl(&[r#"
        path "secret/*" { capabilities = ["read"] }
        path "secret/super-secret*" { capabilities = ["deny"] }
        path "secret/super" { capabilities = ["read"] }
    "#]);
    assert!(can(&a, Operation::Read, "secret/other"));
    assert!(can(&a, Operation::Read, "secret/super"));
    assert!(!can(&a, Operation::Read, "secret/super-secret"));
    assert!(!can(&a, Operation::Read, "secret/super-secret/x"));
    assert_eq!(a.capabilities("secret/super-secret/x"), vec!["deny"]);
}

#[test]
fn same_path_merges_across_policies_and_deny_wins() {
    let a = acl(&[
        r#"path "secret/foo" { capabilities = ["read"] }"#,
        r#"path "secret/foo" { capabilities = ["update", "sudo"] }
           path "secret/bar" { capabilities = ["deny"] }"#,
        r#"path "secret/bar" { capabilities = ["read", "list"] }"#,
    ]);
    let d = a.allow(Operation::Update, "secret/foo", None);
    assert!(d.allowed && d.sudo);
    assert_eq!(
        d.capabilities,
        Capabilities::READ | Capabilities::UPDATE | Capabilities::SUDO
    );
    assert!(can(&a, Operation::Read, "secret/foo"));
    assert!(!can(&a, Operation::Read, "secret/bar"));
    assert!(!can(&a, Operation::List, "secret/bar"));
    assert_eq!(a.capabilities("secret/foo"), vec!["read", "sudo", "update"]);
    assert_eq!(a.capabilities("secret/bar"), vec!["deny"]);

    // Deny first, grant later: still deny.
    let a = acl(&[
        r#"path "x/*" { capabilities = ["deny"] }"#,
        r#"path "x/*" { capabilities = ["read"] }"#,
    ]);
    assert!(!can(&a, Operation::Read, "x/y"));
}

#[test]
fn plus_is_one_segment() {
    let a = acl(&[r#"
        path "secret/+/teamb" { capabilities = ["read"] }
        path "+/data/*" { capabilities = ["list"] }
        path "kv/+" { capabilities = ["update"] }
    "#]);
    assert!(can(&a, Operation::Read, "secret/x/teamb"));
    assert!(can(&a, Operation::Read, "secret//teamb"));
    assert!(!can(&a, Operation::Read, "secret/teamb"));
    assert!(!can(&a, Operation::Read, "secret/x/y/teamb"));
    assert!(!can(&a, Operation::Read, "secret/x/teamb/z"));
    assert!(can(&a, Operation::List, "kv2/data/a/b"));
    assert!(!can(&a, Operation::List, "kv2/data"));
    assert!(can(&a, Operation::Update, "kv/a"));
    assert!(!can(&a, Operation::Update, "kv/a/b"));
    assert!(!can(&a, Operation::Update, "kv"));
    // "a+b" is a literal, not a wildcard.
    let a = acl(&[r#"path "a+b/c" { capabilities = ["read"] }"#]);
    assert!(can(&a, Operation::Read, "a+b/c"));
    assert!(!can(&a, Operation::Read, "ax/c"));
}

/// The priority examples from Vault's `CheckAllowedFromNonExactPaths`
/// and the policy documentation: the first rule of each pair wins.
#[test]
fn vault_priority_examples() {
    let cases = [
        // later first wildcard wins
        ("foo/a*", "foo/+", "foo/ab"),
        ("foo/bar/+/baz", "foo/+/bar/baz", "foo/bar/bar/baz"),
        // not ending in * wins
        ("foo/+/bar", "foo/+/ba*", "foo/x/bar"),
        ("foo/+", "foo/*", "foo/x"),
        // fewer + wins
        ("a/+/c/+", "a/+/+/d*", "a/b/c/d"),
        // longer wins
        ("foo/+/bar/ba*", "foo/+/bar/b*", "foo/x/bar/baz"),
        // same first wildcard position: the one not ending in * wins...
        ("secret/+/teamb", "secret/*", "secret/a/teamb"),
        // ...and between two globs, fewer + wins, even if longer
        ("secret/*", "secret/+/teamb/*", "secret/a/teamb/x"),
    ];
    for (winner, loser, path) in cases {
        for order in [[winner, loser], [loser, winner]] {
            let a = acl(&[&format!(
                r#"path "{}" {{ capabilities = ["{}"] }}
                   path "{}" {{ capabilities = ["{}"] }}"#,
                order[0],
                if order[0] == winner { "read" } else { "list" },
                order[1],
                if order[1] == winner { "read" } else { "list" },
            )]);
            assert!(
                can(&a, Operation::Read, path),
                "{winner} should beat {loser} on {path}"
            );
            assert!(
                !can(&a, Operation::List, path),
                "{winner} should beat {loser} on {path}"
            );
        }
    }
}

#[test]
fn list_with_trailing_slash_matches_rules_without_it() {
    let a = acl(&[r#"
        path "secret/metadata/foo" { capabilities = ["list"] }
        path "+/sys/policies/acl" { capabilities = ["list"] }
        path "kv/metadata/*" { capabilities = ["list"] }
    "#]);
    assert!(can(&a, Operation::List, "secret/metadata/foo/"));
    assert!(can(&a, Operation::List, "ns1/sys/policies/acl/"));
    assert!(can(&a, Operation::List, "kv/metadata/"));
    assert!(!can(&a, Operation::Read, "secret/metadata/foo/"));
    assert_eq!(a.capabilities("ns1/sys/policies/acl/"), vec!["list"]);
}

#[test]
fn leading_slashes_are_ignored() {
    let a = acl(&[r#"path "/secret/foo" { capabilities = ["read"] }"#]);
    assert!(can(&a, Operation::Read, "secret/foo"));
    assert!(can(&a, Operation::Read, "//secret/foo"));
}

#[test]
fn operations_map_to_capabilities() {
    let a = acl(&[r#"
        path "w" { capabilities = ["update"] }
        path "p" { capabilities = ["patch"] }
        path "d" { capabilities = ["delete"] }
        path "c" { capabilities = ["create"] }
        path "none" { capabilities = [] }
    "#]);
    assert!(can(&a, Operation::Update, "w"));
    assert!(can(&a, Operation::Renew, "w"));
    assert!(can(&a, Operation::Revoke, "w"));
    assert!(!can(&a, Operation::Create, "w"));
    assert!(can(&a, Operation::Patch, "p"));
    assert!(!can(&a, Operation::Update, "p"));
    assert!(can(&a, Operation::Delete, "d"));
    assert!(can(&a, Operation::Create, "c"));
    // Help: any capability on the path.
    assert!(can(&a, Operation::Help, "d"));
    assert!(!can(&a, Operation::Help, "none"));
    assert!(!can(&a, Operation::Help, "unknown"));
    assert_eq!(a.capabilities("none"), vec!["deny"]);
    assert_eq!(a.capabilities("unknown"), vec!["deny"]);
}

#[test]
fn root_acl_allows_everything() {
    let a = Acl::root();
    for op in [
        Operation::Read,
        Operation::Delete,
        Operation::Help,
        Operation::Revoke,
    ] {
        let d = a.allow(op, "sys/raw/anything", Some(&params(json!({"x": 1}))));
        assert!(d.allowed && d.sudo);
        assert!(d.capabilities.contains(Capabilities::SUDO));
    }
    assert_eq!(a.capabilities("x"), vec!["root"]);
    assert!(a.is_root());
    // A policy merely named root is nothing special.
    let named = Acl::new(&[policy("root", "")]);
    assert!(!named.is_root());
    assert!(!can(&named, Operation::Read, "x"));
}

#[test]
fn empty_acl_denies() {
    let a = Acl::new(&[]);
    assert_eq!(a.allow(Operation::Read, "x", None), AclDecision::DENIED);
    assert_eq!(a.capabilities("x"), vec!["deny"]);
}

#[test]
fn sudo_flag_follows_the_rule() {
    let a = acl(&[r#"
        path "sys/audit/*" { capabilities = ["update", "sudo"] }
        path "sys/mounts/*" { capabilities = ["update"] }
    "#]);
    let d = a.allow(Operation::Update, "sys/audit/file", None);
    assert!(d.allowed && d.sudo);
    let d = a.allow(Operation::Read, "sys/audit/file", None);
    assert!(
        !d.allowed && d.sudo,
        "sudo reported even when the op is refused"
    );
    let d = a.allow(Operation::Update, "sys/mounts/x", None);
    assert!(d.allowed && !d.sudo);
}

const PARAMS_POLICY: &str = r#"
path "allowed" {
  capabilities = ["create", "update", "read"]
  allowed_parameters = {
    "name" = []
    "env"  = ["dev", "stag*", "*-test", "*mid*"]
    "num"  = [1, 2]
  }
}
path "allowed-any" {
  capabilities = ["update"]
  allowed_parameters = { "*" = [], "env" = ["dev"] }
}
path "denied" {
  capabilities = ["update"]
  denied_parameters = { "admin" = [], "role" = ["root", "sudo*"] }
}
path "denied-all" {
  capabilities = ["update"]
  denied_parameters = { "*" = [] }
}
path "required" {
  capabilities = ["update", "patch"]
  required_parameters = ["Owner", "ttl"]
}
"#;

#[test]
fn allowed_parameters() {
    let a = acl(&[PARAMS_POLICY]);
    let ok = |path: &str, v: serde_json::Value| {
        a.allow(Operation::Update, path, Some(&params(v))).allowed
    };
    assert!(ok("allowed", json!({})));
    assert!(a.allow(Operation::Update, "allowed", None).allowed);
    assert!(ok("allowed", json!({"name": "anything", "env": "dev"})));
    assert!(ok("allowed", json!({"env": "staging"})));
    assert!(ok("allowed", json!({"env": "unit-test"})));
    assert!(ok("allowed", json!({"env": "amidb"})));
    assert!(
        ok("allowed", json!({"ENV": "dev"})),
        "keys are case-insensitive"
    );
    assert!(ok("allowed", json!({"num": 2})));
    assert!(ok("allowed", json!({"env": ["dev", "stage"]})));
    assert!(ok("allowed", json!({"env": "dev, stage"})));
    assert!(!ok("allowed", json!({"env": "prod"})));
    assert!(!ok("allowed", json!({"env": ["dev", "prod"]})));
    assert!(!ok("allowed", json!({"env": "dev,prod"})));
    assert!(!ok("allowed", json!({"env": ""})));
    assert!(!ok("allowed", json!({"env": []})));
    assert!(!ok("allowed", json!({"num": 3})));
    assert!(!ok("allowed", json!({"num": "1"})));
    assert!(!ok("allowed", json!({"other": 1})));
    // Parameters are not checked on read.
    assert!(
        a.allow(
            Operation::Read,
            "allowed",
            Some(&params(json!({"other": 1})))
        )
        .allowed
    );

    assert!(ok("allowed-any", json!({"whatever": 1, "env": "dev"})));
    assert!(!ok("allowed-any", json!({"whatever": 1, "env": "prod"})));
}

#[test]
fn denied_parameters() {
    let a = acl(&[PARAMS_POLICY]);
    let ok = |path: &str, v: serde_json::Value| {
        a.allow(Operation::Update, path, Some(&params(v))).allowed
    };
    assert!(ok("denied", json!({"role": "reader"})));
    assert!(!ok("denied", json!({"admin": false})));
    assert!(!ok("denied", json!({"Admin": "x"})));
    assert!(!ok("denied", json!({"role": "root"})));
    assert!(!ok("denied", json!({"role": "sudoer"})));
    assert!(!ok("denied", json!({"role": ["reader", "root"]})));
    assert!(!ok("denied", json!({"role": "reader,root"})));
    assert!(ok("denied-all", json!({})));
    assert!(!ok("denied-all", json!({"a": 1})));
}

#[test]
fn required_parameters() {
    let a = acl(&[PARAMS_POLICY]);
    let ok = |op, v: serde_json::Value| a.allow(op, "required", Some(&params(v))).allowed;
    assert!(ok(Operation::Update, json!({"owner": "me", "ttl": 1})));
    assert!(ok(
        Operation::Patch,
        json!({"owner": "me", "ttl": 1, "x": 2})
    ));
    assert!(!ok(Operation::Update, json!({"owner": "me"})));
    assert!(!ok(Operation::Update, json!({})));
    assert!(!a.allow(Operation::Update, "required", None).allowed);
}

#[test]
fn parameter_constraints_merge_like_vault() {
    let a = acl(&[
        r#"path "m" { capabilities = ["update"] allowed_parameters = { "a" = ["1"], "b" = [] } }"#,
        r#"path "m" { capabilities = ["create"] allowed_parameters = { "a" = ["2"], "b" = ["x"], "c" = [] } required_parameters = ["a"] }"#,
    ]);
    let ok = |v: serde_json::Value| a.allow(Operation::Update, "m", Some(&params(v))).allowed;
    assert!(ok(json!({"a": "1"})));
    assert!(ok(json!({"a": "2", "b": "anything", "c": 5})));
    assert!(!ok(json!({"a": "3"})));
    assert!(!ok(json!({"b": "y"})), "a is now required");
    assert!(!ok(json!({"a": "1", "d": 1})));
}

#[test]
fn wrapping_ttls_are_reported_and_tightened_on_merge() {
    let a = acl(&[
        r#"path "w" { capabilities = ["read"] min_wrapping_ttl = "1m" max_wrapping_ttl = "1h" }"#,
        r#"path "w" { capabilities = ["read"] min_wrapping_ttl = "30s" max_wrapping_ttl = "10m" }"#,
    ]);
    let d = a.allow(Operation::Read, "w", None);
    assert!(d.allowed);
    assert_eq!(d.min_wrapping_ttl, Some(Duration::from_secs(30)));
    assert_eq!(d.max_wrapping_ttl, Some(Duration::from_secs(600)));
}

#[test]
fn glob_match_semantics() {
    assert!(glob_match("*", "*"));
    assert!(!glob_match("*", "x"));
    assert!(glob_match("a*", "abc"));
    assert!(glob_match("*c", "abc"));
    assert!(glob_match("*b*", "abc"));
    assert!(!glob_match("*x*", "abc"));
    assert!(glob_match("abc", "abc"));
}

#[test]
fn prefix_trie_longest() {
    let mut t = PrefixTrie::default();
    t.insert(b"", 0);
    t.insert(b"se", 1);
    t.insert(b"secret/", 2);
    assert_eq!(t.longest(b"x"), Some(0));
    assert_eq!(t.longest(b"sec"), Some(1));
    assert_eq!(t.longest(b"secret/a"), Some(2));
    assert_eq!(t.longest(b"secret"), Some(1));
    let empty = PrefixTrie::default();
    assert_eq!(empty.longest(b"x"), None);
}

// ---------------------------------------------------------------- reference model

/// A deliberately naive model of Vault's matching, written from the
/// documentation rather than from `Acl`'s data structures: every rule is
/// tried against the path and the winner picked by sorting with Vault's
/// "less" function.
mod reference {
    use super::*;

    fn has_plus_segment(p: &str) -> bool {
        let b = p.as_bytes();
        (0..b.len()).any(|i| {
            b[i] == b'+' && (i == 0 || b[i - 1] == b'/') && (i + 1 == b.len() || b[i + 1] == b'/')
        })
    }

    fn first_plus(p: &str) -> usize {
        let b = p.as_bytes();
        (0..b.len())
            .find(|&i| {
                b[i] == b'+'
                    && (i == 0 || b[i - 1] == b'/')
                    && (i + 1 == b.len() || b[i + 1] == b'/')
            })
            .unwrap_or(usize::MAX)
    }

    struct Cand {
        first: usize,
        prefix: bool,
        wildcards: usize,
        path: String,
        caps: Capabilities,
    }

    /// Vault's `less`: is `i` lower priority than `j`?
    fn less(i: &Cand, j: &Cand) -> bool {
        if i.first != j.first {
            return i.first < j.first;
        }
        if i.prefix != j.prefix {
            return i.prefix;
        }
        if i.wildcards != j.wildcards {
            return i.wildcards > j.wildcards;
        }
        if i.path.len() != j.path.len() {
            return i.path.len() < j.path.len();
        }
        i.path < j.path
    }

    pub(super) fn merged(
        policies: &[Vec<(String, Capabilities)>],
    ) -> BTreeMap<String, Capabilities> {
        let mut out: BTreeMap<String, Capabilities> = BTreeMap::new();
        for p in policies {
            for (path, caps) in p {
                // Policies drop one leading `/` from a rule's path.
                let path = path.strip_prefix('/').unwrap_or(path);
                let e = out.entry(path.to_string()).or_insert(Capabilities::NONE);
                if e.is_deny() || caps.is_deny() {
                    *e = Capabilities::DENY;
                } else {
                    *e |= *caps;
                }
            }
        }
        out
    }

    fn non_exact(rules: &BTreeMap<String, Capabilities>, path: &str) -> Option<Capabilities> {
        let mut cands = Vec::new();
        for (rule, caps) in rules {
            let plus = has_plus_segment(rule);
            let star = rule.ends_with('*');
            if !plus && !star {
                continue;
            }
            let stripped = rule.strip_suffix('*').unwrap_or(rule);
            let matched = if !plus {
                path.starts_with(stripped)
            } else {
                let pat: Vec<&str> = stripped.split('/').collect();
                let parts: Vec<&str> = path.split('/').collect();
                parts.len() >= pat.len()
                    && (star || parts.len() == pat.len())
                    && pat.iter().enumerate().all(|(i, seg)| {
                        *seg == "+"
                            || *seg == parts[i]
                            || (star && i == pat.len() - 1 && parts[i].starts_with(seg))
                    })
            };
            if matched {
                cands.push(Cand {
                    first: if plus {
                        first_plus(stripped)
                    } else {
                        stripped.len()
                    },
                    prefix: star,
                    wildcards: stripped.split('/').filter(|s| *s == "+").count(),
                    path: stripped.to_string(),
                    caps: *caps,
                });
            }
        }
        cands.sort_by(|a, b| {
            if less(a, b) {
                std::cmp::Ordering::Less
            } else if less(b, a) {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        });
        cands.last().map(|c| c.caps)
    }

    pub(super) fn lookup(
        rules: &BTreeMap<String, Capabilities>,
        path: &str,
        list: bool,
    ) -> Option<Capabilities> {
        let path = path.trim_start_matches('/');
        let exact = |p: &str| {
            rules
                .get(p)
                .filter(|_| !has_plus_segment(p) && !p.ends_with('*'))
                .copied()
        };
        if let Some(c) = exact(path) {
            return Some(c);
        }
        if list && path.ends_with('/') {
            let t = &path[..path.len() - 1];
            if let Some(c) = exact(t) {
                return Some(c);
            }
            if let Some(c) = non_exact(rules, t) {
                return Some(c);
            }
        }
        non_exact(rules, path)
    }
}

fn arb_rule_path() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(prop::sample::select(vec!["a", "b", "ab", "", "+"]), 1..4),
        any::<bool>(),
    )
        .prop_map(|(segs, star)| {
            let mut p = segs.join("/");
            if star && !p.ends_with('+') {
                p.push('*');
            }
            p
        })
}

fn arb_caps() -> impl Strategy<Value = Capabilities> {
    prop_oneof![
        1 => Just(Capabilities::DENY),
        6 => (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(r, l, u)| {
            let mut c = Capabilities::NONE;
            if r { c |= Capabilities::READ; }
            if l { c |= Capabilities::LIST; }
            if u { c |= Capabilities::UPDATE; }
            c
        }),
    ]
}

fn arb_request_path() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(
            prop::sample::select(vec!["a", "b", "ab", "abc", "ba", ""]),
            1..5,
        ),
        any::<bool>(),
    )
        .prop_map(|(segs, slash)| {
            let mut p = segs.join("/");
            if slash {
                p.push('/');
            }
            p
        })
}

fn render(rules: &[(String, Capabilities)]) -> String {
    rules
        .iter()
        .map(|(p, c)| {
            let caps: Vec<String> = c.names().iter().map(|n| format!("{n:?}")).collect();
            format!("path {p:?} {{ capabilities = [{}] }}\n", caps.join(", "))
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn acl_matches_reference_model(
        policies in prop::collection::vec(
            prop::collection::vec((arb_rule_path(), arb_caps()), 0..6), 1..4),
        paths in prop::collection::vec(arb_request_path(), 1..12),
    ) {
        let compiled: Vec<Arc<Policy>> = policies
            .iter()
            .enumerate()
            .map(|(i, rules)| policy(&format!("p{i}"), &render(rules)))
            .collect();
        let acl = Acl::new(&compiled);
        let merged = reference::merged(&policies);

        for path in &paths {
            for (op, cap, list) in [
                (Operation::Read, Capabilities::READ, false),
                (Operation::Update, Capabilities::UPDATE, false),
                (Operation::List, Capabilities::LIST, true),
            ] {
                let want = reference::lookup(&merged, path, list);
                let got = acl.allow(op, path, None);
                let want_caps = want.unwrap_or(Capabilities::NONE);
                prop_assert_eq!(got.capabilities, want_caps, "op {:?} path {:?}", op, path);
                prop_assert_eq!(
                    got.allowed,
                    !want_caps.is_deny() && want_caps.contains(cap),
                    "op {:?} path {:?}", op, path
                );
            }
            let want = reference::lookup(&merged, path, true).unwrap_or(Capabilities::NONE);
            let want_names: Vec<String> = if want.is_empty() || want.is_deny() {
                vec!["deny".to_string()]
            } else {
                want.names().into_iter().map(str::to_string).collect()
            };
            prop_assert_eq!(acl.capabilities(path), want_names);
        }
    }
}

#[test]
fn rules_reaching_under_a_mount() {
    // The rule as written in a policy, `*` and all.
    let rule_reaches_under = |rule: &str, mount: &str| match rule.strip_suffix('*') {
        Some(body) => super::rule_reaches_under(body, true, mount),
        None => super::rule_reaches_under(rule, false, mount),
    };
    let yes = [
        ("secret/data/app/*", "secret/"),
        ("secret/data/app", "secret/"),
        ("secret/*", "secret/"),
        ("+/data/*", "secret/"),
        ("+/*", "kv/"),
        ("a/+/c*", "a/x/cat/"),
        ("a/+/c*", "a/x/"),
        ("+/data/*", "a/data/b/"),
        ("auth/+/login", "auth/userpass/"),
    ];
    for (rule, mount) in yes {
        assert!(rule_reaches_under(rule, mount), "{rule} under {mount}");
    }
    let no = [
        ("secretive/*", "secret/"),
        ("other/*", "secret/"),
        ("+/data/*", "a/b/"),
        ("+/x", "a/x/y/"),
        ("a/+/c*", "a/x/dog/"),
        ("segs/+/only/*", "hidden/"),
        // Rules covering the mount itself are the ACL's to answer.
        ("sec*", "secret/"),
    ];
    for (rule, mount) in no {
        assert!(!rule_reaches_under(rule, mount), "{rule} under {mount}");
    }
}
