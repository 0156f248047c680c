//! Password policies (`sys/policies/password/*`) and the generator behind
//! `SystemView::generate_password`.
//!
//! A policy is Vault's HCL:
//!
//! ```hcl
//! length = 20
//! rule "charset" {
//!   charset   = "abcdefghijklmnopqrstuvwxyz"
//!   min-chars = 1
//! }
//! ```
//!
//! Generation follows Vault: every character is drawn uniformly from the
//! union of the charsets, the candidate is checked against each rule's
//! `min-chars`, and a failing candidate is thrown away whole. Accepting or
//! rejecting whole candidates keeps the result uniform over the passwords
//! that satisfy the policy. Indices are drawn by rejection sampling from
//! the OS CSPRNG, so no character is favoured by a modulo. Vault bounds the
//! retries with a timeout; here they are bounded by a count, after which a
//! constructive fallback (required characters first, the rest from the
//! union, then an unbiased Fisher–Yates shuffle) always succeeds for a
//! policy that passed validation. The fallback is only reached for policies
//! whose rules a random candidate almost never meets.

use std::collections::HashMap;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tresor_sdk::{Storage, StorageExt};
use zeroize::{Zeroize, Zeroizing};

use crate::CoreError;

/// Vault's bounds on `length`.
const MIN_LENGTH: usize = 4;
const MAX_LENGTH: usize = 100;
/// A policy document larger than this is refused before parsing.
const MAX_POLICY_BYTES: usize = 64 * 1024;
/// Whole candidates tried before the constructive fallback.
const MAX_ATTEMPTS: usize = 1000;

/// One `rule "charset"` block.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CharsetRule {
    /// Distinct characters, in the order first written.
    charset: Vec<char>,
    min_chars: usize,
}

/// A parsed, validated password policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PasswordPolicy {
    length: usize,
    rules: Vec<CharsetRule>,
    /// The union of every rule's charset, without duplicates: each distinct
    /// character is equally likely, however many rules name it.
    charset: Vec<char>,
}

fn dedup(chars: impl Iterator<Item = char>) -> Vec<char> {
    let mut out: Vec<char> = Vec::new();
    for c in chars {
        if !out.contains(&c) {
            out.push(c);
        }
    }
    out
}

fn bad(msg: impl Into<String>) -> CoreError {
    CoreError::BadRequest(msg.into())
}

fn expr_kind(e: &hcl::Expression) -> &'static str {
    match e {
        hcl::Expression::Null => "null",
        hcl::Expression::Bool(_) => "a boolean",
        hcl::Expression::Number(_) => "a number",
        hcl::Expression::String(_) => "a string",
        hcl::Expression::Array(_) => "a list",
        hcl::Expression::Object(_) => "an object",
        _ => "an expression",
    }
}

fn uint_attr(what: &str, e: &hcl::Expression) -> Result<usize, CoreError> {
    match e {
        hcl::Expression::Number(n) => n
            .as_u64()
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| bad(format!("{what}: must be a non-negative integer, got {n}"))),
        other => Err(bad(format!(
            "{what}: must be a non-negative integer, got {}",
            expr_kind(other)
        ))),
    }
}

impl PasswordPolicy {
    /// Vault's default: 20 characters of lower, upper, digits and `-`, at
    /// least one of each.
    pub(crate) fn vault_default() -> Self {
        let rules: Vec<CharsetRule> = [
            "abcdefghijklmnopqrstuvwxyz",
            "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
            "0123456789",
            "-",
        ]
        .iter()
        .map(|s| CharsetRule {
            charset: s.chars().collect(),
            min_chars: 1,
        })
        .collect();
        let charset = dedup(rules.iter().flat_map(|r| r.charset.iter().copied()));
        PasswordPolicy {
            length: 20,
            rules,
            charset,
        }
    }

    /// Parse and validate a policy document: HCL, or HCL in base64 (Vault
    /// accepts both).
    pub(crate) fn parse(text: &str) -> Result<Self, CoreError> {
        if text.len() > MAX_POLICY_BYTES {
            return Err(bad(format!(
                "policy: document is larger than {MAX_POLICY_BYTES} bytes"
            )));
        }
        if text.trim().is_empty() {
            return Err(bad("policy: missing policy document"));
        }
        // One-line blocks (`rule "charset" { charset = "ab" min-chars = 1 }`)
        // are HCL1, which Vault accepts: retry with the newlines HCL2 needs.
        let parsed = hcl::parse(text).or_else(|e| {
            crate::policy::hcl1_newlines(text)
                .and_then(|(t, _)| hcl::parse(&t).ok())
                .ok_or(e)
        });
        let body = match parsed {
            Ok(b) => b,
            Err(e) => {
                let decoded = B64
                    .decode(text.trim())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok());
                match decoded.and_then(|d| hcl::parse(&d).ok()) {
                    Some(b) => b,
                    None => return Err(bad(format!("policy: invalid HCL: {e}"))),
                }
            }
        };
        Self::from_body(&body)
    }

    fn from_body(body: &hcl::Body) -> Result<Self, CoreError> {
        let mut length: Option<usize> = None;
        let mut rules = Vec::new();
        for s in body.iter() {
            match s {
                hcl::Structure::Attribute(a) => match a.key.as_str() {
                    "length" => {
                        if length.is_some() {
                            return Err(bad("policy: 'length' is set twice"));
                        }
                        length = Some(uint_attr("policy: 'length'", &a.expr)?);
                    }
                    other => {
                        return Err(bad(format!(
                        "policy: unknown attribute {other:?} (expected 'length' and 'rule' blocks)"
                    )))
                    }
                },
                hcl::Structure::Block(b) => {
                    if b.identifier.as_str() != "rule" {
                        return Err(bad(format!(
                            "policy: unknown block {:?} (expected 'rule')",
                            b.identifier.as_str()
                        )));
                    }
                    let kind = match b.labels.as_slice() {
                        [l] => l.as_str().to_string(),
                        _ => return Err(bad(
                            "policy: a 'rule' block takes exactly one label, e.g. rule \"charset\"",
                        )),
                    };
                    if kind != "charset" {
                        return Err(bad(format!(
                            "policy: unknown rule type {kind:?} (supported: \"charset\")"
                        )));
                    }
                    rules.push(Self::charset_rule(rules.len() + 1, &b.body)?);
                }
            }
        }
        let length = length.ok_or_else(|| bad("policy: missing 'length'"))?;
        Self::new(length, rules)
    }

    fn charset_rule(n: usize, body: &hcl::Body) -> Result<CharsetRule, CoreError> {
        let mut charset: Option<Vec<char>> = None;
        let mut min_chars = 0;
        for s in body.iter() {
            let hcl::Structure::Attribute(a) = s else {
                return Err(bad(format!(
                    "policy: rule \"charset\" #{n}: nested blocks are not allowed"
                )));
            };
            match a.key.as_str() {
                "charset" => match &a.expr {
                    hcl::Expression::String(s) => charset = Some(dedup(s.chars())),
                    other => {
                        return Err(bad(format!(
                            "policy: rule \"charset\" #{n}: 'charset' must be a string, got {}",
                            expr_kind(other)
                        )))
                    }
                },
                "min-chars" | "min_chars" => {
                    min_chars = uint_attr(
                        &format!("policy: rule \"charset\" #{n}: 'min-chars'"),
                        &a.expr,
                    )?;
                }
                other => {
                    return Err(bad(format!(
                        "policy: rule \"charset\" #{n}: unknown attribute {other:?} (expected 'charset', 'min-chars')"
                    )))
                }
            }
        }
        let charset = charset
            .ok_or_else(|| bad(format!("policy: rule \"charset\" #{n}: missing 'charset'")))?;
        if charset.is_empty() {
            return Err(bad(format!(
                "policy: rule \"charset\" #{n}: 'charset' must not be empty"
            )));
        }
        if let Some(c) = charset.iter().find(|c| c.is_control()) {
            return Err(bad(format!(
                "policy: rule \"charset\" #{n}: 'charset' contains the control character {c:?}"
            )));
        }
        Ok(CharsetRule { charset, min_chars })
    }

    fn new(length: usize, rules: Vec<CharsetRule>) -> Result<Self, CoreError> {
        if !(MIN_LENGTH..=MAX_LENGTH).contains(&length) {
            return Err(bad(format!(
                "policy: 'length' must be between {MIN_LENGTH} and {MAX_LENGTH}, got {length}"
            )));
        }
        if rules.is_empty() {
            return Err(bad(
                "policy: at least one rule \"charset\" block is required",
            ));
        }
        // The constructive fallback places each rule's minimum separately,
        // so this bound is what makes every accepted policy satisfiable.
        let required: usize = rules.iter().map(|r| r.min_chars).sum();
        if required > length {
            return Err(bad(format!(
                "policy: unsatisfiable: the rules require {required} characters in total (sum of 'min-chars') but 'length' is {length}"
            )));
        }
        let charset = dedup(rules.iter().flat_map(|r| r.charset.iter().copied()));
        Ok(PasswordPolicy {
            length,
            rules,
            charset,
        })
    }

    fn satisfied(&self, candidate: &[char]) -> bool {
        self.rules
            .iter()
            .all(|r| candidate.iter().filter(|c| r.charset.contains(c)).count() >= r.min_chars)
    }

    /// A new password from the OS CSPRNG.
    pub(crate) fn generate(&self) -> Result<Zeroizing<String>, CoreError> {
        self.generate_with(&mut OsEntropy::default())
    }

    fn generate_with(&self, rng: &mut impl Entropy) -> Result<Zeroizing<String>, CoreError> {
        let mut candidate: Zeroizing<Vec<char>> = Zeroizing::new(Vec::with_capacity(self.length));
        for _ in 0..MAX_ATTEMPTS {
            candidate.clear();
            for _ in 0..self.length {
                candidate.push(self.charset[uniform(rng, self.charset.len())?]);
            }
            if self.satisfied(&candidate) {
                return Ok(Zeroizing::new(candidate.iter().collect()));
            }
        }
        candidate.clear();
        for r in &self.rules {
            for _ in 0..r.min_chars {
                candidate.push(r.charset[uniform(rng, r.charset.len())?]);
            }
        }
        while candidate.len() < self.length {
            candidate.push(self.charset[uniform(rng, self.charset.len())?]);
        }
        for i in (1..candidate.len()).rev() {
            let j = uniform(rng, i + 1)?;
            candidate.swap(i, j);
        }
        Ok(Zeroizing::new(candidate.iter().collect()))
    }
}

/// A source of uniformly random 32-bit words.
trait Entropy {
    fn next_u32(&mut self) -> Result<u32, CoreError>;
}

/// The OS CSPRNG (through aws-lc-rs), read in blocks to spare system calls.
#[derive(Default)]
struct OsEntropy {
    buf: Zeroizing<Vec<u8>>,
    pos: usize,
}

impl Entropy for OsEntropy {
    fn next_u32(&mut self) -> Result<u32, CoreError> {
        if self.pos + 4 > self.buf.len() {
            self.buf.resize(256, 0);
            aws_lc_rs::rand::fill(&mut self.buf)
                .map_err(|_| CoreError::Internal("password generation: rng failed".into()))?;
            self.pos = 0;
        }
        let mut w = [0u8; 4];
        w.copy_from_slice(&self.buf[self.pos..self.pos + 4]);
        self.buf[self.pos..self.pos + 4].zeroize();
        self.pos += 4;
        Ok(u32::from_le_bytes(w))
    }
}

/// A uniform index in `0..n`: words from the top partial block of the
/// 2^32 range are redrawn, so every residue has the same number of
/// preimages.
fn uniform(rng: &mut impl Entropy, n: usize) -> Result<usize, CoreError> {
    let n64 = u64::try_from(n)
        .ok()
        .filter(|&v| v > 0 && v <= u64::from(u32::MAX))
        .ok_or_else(|| CoreError::Internal("password generation: bad charset size".into()))?;
    const RANGE: u64 = 1 << 32;
    let zone = RANGE - RANGE % n64;
    loop {
        let x = u64::from(rng.next_u32()?);
        if x < zone {
            return usize::try_from(x % n64)
                .map_err(|_| CoreError::Internal("password generation: index".into()));
        }
    }
}

/// A stored policy: the document as written, so GET answers it unchanged.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredPolicy {
    policy: String,
}

struct Cached {
    raw: String,
    parsed: PasswordPolicy,
}

/// The policies of `sys/policies/password/`, in the barrier under
/// `sys/password_policy/` and parsed once into memory.
pub(crate) struct PasswordPolicies {
    storage: Arc<dyn Storage>,
    cache: RwLock<HashMap<String, Arc<Cached>>>,
}

fn check_name(name: &str) -> Result<(), CoreError> {
    if name.is_empty()
        || name.len() > 128
        || name.contains('/')
        || name.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(bad(format!("invalid password policy name {name:?}")));
    }
    Ok(())
}

impl PasswordPolicies {
    pub(crate) async fn load(storage: Arc<dyn Storage>) -> Result<Self, CoreError> {
        let mut cache = HashMap::new();
        for name in storage.list("").await? {
            if name.ends_with('/') {
                continue;
            }
            let Some(stored) = storage.get_json::<StoredPolicy>(&name).await? else {
                continue;
            };
            match PasswordPolicy::parse(&stored.policy) {
                Ok(parsed) => {
                    cache.insert(
                        name,
                        Arc::new(Cached {
                            raw: stored.policy,
                            parsed,
                        }),
                    );
                }
                // Kept in storage for the operator to fix; generating from
                // it fails as "not found" rather than with a half-read policy.
                Err(e) => {
                    tracing::warn!(policy = %name, error = %e, "stored password policy is invalid; ignored")
                }
            }
        }
        Ok(PasswordPolicies {
            storage,
            cache: RwLock::new(cache),
        })
    }

    pub(crate) async fn put(&self, name: &str, text: &str) -> Result<(), CoreError> {
        check_name(name)?;
        let parsed = PasswordPolicy::parse(text)?;
        // Vault proves a policy by generating from it once before saving.
        parsed.generate()?;
        self.storage
            .put_json(
                name,
                &StoredPolicy {
                    policy: text.to_string(),
                },
            )
            .await?;
        self.cache.write().insert(
            name.to_string(),
            Arc::new(Cached {
                raw: text.to_string(),
                parsed,
            }),
        );
        Ok(())
    }

    pub(crate) fn get(&self, name: &str) -> Option<String> {
        self.cache.read().get(name).map(|c| c.raw.clone())
    }

    pub(crate) fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.cache.read().keys().cloned().collect();
        v.sort();
        v
    }

    pub(crate) async fn delete(&self, name: &str) -> Result<(), CoreError> {
        check_name(name)?;
        self.storage.delete(name).await?;
        self.cache.write().remove(name);
        Ok(())
    }

    /// A password from the policy `name`, or from Vault's default policy.
    pub(crate) fn generate(&self, name: Option<&str>) -> Result<Zeroizing<String>, CoreError> {
        match name.filter(|n| !n.is_empty()) {
            None => PasswordPolicy::vault_default().generate(),
            Some(n) => {
                let cached = self
                    .cache
                    .read()
                    .get(n)
                    .cloned()
                    .ok_or_else(|| bad(format!("password policy {n:?} does not exist")))?;
                cached.parsed.generate()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(r: Result<PasswordPolicy, CoreError>) -> String {
        match r {
            Err(CoreError::BadRequest(m)) => m,
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn one_line_rule_blocks_parse_like_vault() {
        let p = PasswordPolicy::parse(
            "length = 24\nrule \"charset\" { charset = \"abcdef0123\" min-chars = 2 }\n",
        )
        .expect("one-line block");
        assert_eq!(p.length, 24);
    }

    #[test]
    fn parses_vault_document() {
        let p = PasswordPolicy::parse(
            r#"
            length = 20
            rule "charset" {
              charset = "abcdefghijklmnopqrstuvwxyz"
              min-chars = 1
            }
            rule "charset" {
              charset = "0123456789"
              min-chars = 2
            }
            "#,
        )
        .expect("parse");
        assert_eq!(p.length, 20);
        assert_eq!(p.rules.len(), 2);
        assert_eq!(p.charset.len(), 36);
        let pw = p.generate().expect("generate");
        assert_eq!(pw.chars().count(), 20);
        assert!(pw.chars().filter(char::is_ascii_digit).count() >= 2);
    }

    #[test]
    fn base64_document_is_accepted() {
        let text = B64.encode("length = 8\nrule \"charset\" { charset = \"ab\" }\n");
        assert_eq!(PasswordPolicy::parse(&text).expect("parse").length, 8);
    }

    #[test]
    fn errors_name_the_problem() {
        assert!(msg(PasswordPolicy::parse("length = ")).contains("invalid HCL"));
        assert!(msg(PasswordPolicy::parse(
            "rule \"charset\" { charset = \"a\" }"
        ))
        .contains("missing 'length'"));
        assert!(msg(PasswordPolicy::parse(
            "length = 3\nrule \"charset\" { charset = \"ab\" }"
        ))
        .contains("'length' must be between 4 and 100"));
        assert!(msg(PasswordPolicy::parse(
            "length = 101\nrule \"charset\" { charset = \"ab\" }"
        ))
        .contains("'length'"));
        assert!(msg(PasswordPolicy::parse(
            "length = 10\nrule \"charset\" { charset = \"\" }"
        ))
        .contains("'charset' must not be empty"));
        assert!(
            msg(PasswordPolicy::parse("length = 10\nrule \"charset\" { }"))
                .contains("missing 'charset'")
        );
        assert!(msg(PasswordPolicy::parse(
            "length = 10\nrule \"nope\" { charset = \"a\" }"
        ))
        .contains("unknown rule type \"nope\""));
        assert!(msg(PasswordPolicy::parse(
            "length = 10\nrule \"charset\" {\n charset = \"a\"\n min-chars = \"x\"\n}"
        ))
        .contains("'min-chars'"));
        assert!(msg(PasswordPolicy::parse("length = 10\ncolour = \"blue\"")).contains("colour"));
        assert!(msg(PasswordPolicy::parse("length = 10")).contains("at least one rule"));
    }

    #[test]
    fn unsatisfiable_policy_is_refused() {
        let m = msg(PasswordPolicy::parse(
            "length = 4\nrule \"charset\" {\n charset = \"ab\"\n min-chars = 3\n}\nrule \"charset\" {\n charset = \"cd\"\n min-chars = 2\n}",
        ));
        assert!(m.contains("unsatisfiable"), "{m}");
    }

    #[test]
    fn min_chars_are_respected() {
        let p = PasswordPolicy::parse(
            "length = 6\nrule \"charset\" { charset = \"abcdefghijklmnopqrstuvwxyz\" }\nrule \"charset\" {\n charset = \"!\"\n min-chars = 3\n}",
        )
        .expect("parse");
        for _ in 0..200 {
            let pw = p.generate().expect("generate");
            assert_eq!(pw.chars().count(), 6);
            assert!(pw.chars().filter(|c| *c == '!').count() >= 3, "{}", *pw);
        }
        let d = PasswordPolicy::vault_default();
        for _ in 0..200 {
            let pw = d.generate().expect("generate");
            assert_eq!(pw.len(), 20);
            assert!(pw.chars().any(|c| c.is_ascii_lowercase()));
            assert!(pw.chars().any(|c| c.is_ascii_uppercase()));
            assert!(pw.chars().any(|c| c.is_ascii_digit()));
            assert!(pw.contains('-'));
        }
    }

    /// A policy a random candidate almost never meets still generates,
    /// through the fallback, and meets its rules.
    #[test]
    fn hard_policy_terminates_and_holds() {
        let p = PasswordPolicy::parse(
            "length = 4\nrule \"charset\" { charset = \"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\" }\nrule \"charset\" {\n charset = \"!\"\n min-chars = 2\n}\nrule \"charset\" {\n charset = \"?\"\n min-chars = 2\n}",
        )
        .expect("parse");
        for _ in 0..20 {
            let pw = p.generate().expect("generate");
            assert_eq!(pw.chars().filter(|c| *c == '!').count(), 2);
            assert_eq!(pw.chars().filter(|c| *c == '?').count(), 2);
        }
    }

    struct Scripted(Vec<u32>);

    impl Entropy for Scripted {
        fn next_u32(&mut self) -> Result<u32, CoreError> {
            if self.0.is_empty() {
                return Err(CoreError::Internal("script exhausted".into()));
            }
            Ok(self.0.remove(0))
        }
    }

    #[test]
    fn words_in_the_partial_block_are_redrawn() {
        // 2^32 = 3 * 1431655765 + 1: u32::MAX is the one word that would
        // favour residue 0, so it must be skipped.
        let mut r = Scripted(vec![u32::MAX, u32::MAX, 7]);
        assert_eq!(uniform(&mut r, 3).expect("draw"), 1);
        let mut r = Scripted(vec![u32::MAX - 1]);
        assert_eq!(
            uniform(&mut r, 3).expect("draw"),
            (u32::MAX - 1) as usize % 3
        );
    }

    /// Chi-square over a small charset: with 5 symbols (4 degrees of
    /// freedom) a statistic above 40 happens by chance with p < 1e-7.
    #[test]
    fn characters_are_uniform() {
        let p = PasswordPolicy::parse("length = 100\nrule \"charset\" { charset = \"abcde\" }")
            .expect("parse");
        let mut counts: HashMap<char, u64> = HashMap::new();
        let rounds = 500;
        for _ in 0..rounds {
            for c in p.generate().expect("generate").chars() {
                *counts.entry(c).or_default() += 1;
            }
        }
        let total = (rounds * 100) as f64;
        let expected = total / 5.0;
        assert_eq!(counts.len(), 5);
        let chi2: f64 = counts
            .values()
            .map(|&o| (o as f64 - expected).powi(2) / expected)
            .sum();
        assert!(chi2 < 40.0, "chi-square {chi2} for {counts:?}");
    }

    /// Positions are uniform too: the fallback's shuffle and the retry loop
    /// must not pin required characters to one place.
    #[test]
    fn required_characters_are_not_pinned() {
        let p = PasswordPolicy::parse(
            "length = 4\nrule \"charset\" { charset = \"abcdefghijklmnopqrstuvwxyz\" }\nrule \"charset\" {\n charset = \"!\"\n min-chars = 1\n}",
        )
        .expect("parse");
        let mut at = [0u32; 4];
        for _ in 0..2000 {
            let pw = p.generate().expect("generate");
            for (i, c) in pw.chars().enumerate() {
                if c == '!' {
                    at[i] += 1;
                }
            }
        }
        for n in at {
            assert!(n > 300, "{at:?}");
        }
    }

    #[tokio::test]
    async fn store_round_trip_and_unknown_policy() {
        let storage: Arc<dyn Storage> = Arc::new(tresor_sdk::testing::MemoryStorage::new());
        let s = PasswordPolicies::load(storage.clone()).await.expect("load");
        let doc = "length = 12\nrule \"charset\" { charset = \"xyz\" }";
        s.put("short", doc).await.expect("put");
        assert_eq!(s.get("short").as_deref(), Some(doc));
        assert_eq!(s.names(), vec!["short".to_string()]);
        let pw = s.generate(Some("short")).expect("generate");
        assert!(pw.chars().all(|c| "xyz".contains(c)) && pw.len() == 12);
        assert!(matches!(
            s.generate(Some("missing")),
            Err(CoreError::BadRequest(m)) if m.contains("does not exist")
        ));
        assert_eq!(s.generate(None).expect("default").len(), 20);
        // A new instance on the same storage sees the policy.
        let again = PasswordPolicies::load(storage).await.expect("reload");
        assert_eq!(again.get("short").as_deref(), Some(doc));
        again.delete("short").await.expect("delete");
        assert!(again.get("short").is_none());
        assert!(s.put("a/b", doc).await.is_err());
    }
}
