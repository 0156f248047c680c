//! Policy text (HCL or JSON) → [`Policy`].
//!
//! Both syntaxes are first lowered to the same list of stanzas
//! (`path label` + key/value pairs as JSON values), so the validation that
//! follows — which keys exist, what capabilities mean, how parameters and
//! TTLs are written — is written once.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use hcl::eval::{Context, Evaluate};
use hcl::{Body, Structure};
use serde_json::Value;

use super::{Capabilities, PolicyError};

/// A parsed policy: its normalised name, the text it came from, and its
/// rules in source order (rules for the same path are merged only when
/// compiled into an [`super::Acl`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub name: String,
    pub raw: String,
    pub paths: Vec<PathRules>,
}

/// One `path "…" { … }` stanza.
#[derive(Debug, Clone, PartialEq)]
pub struct PathRules {
    /// The path as written, without a leading `/`, trailing `*` kept.
    pub path: String,
    /// `deny` here means exactly `deny`: it is never combined with others.
    pub capabilities: Capabilities,
    /// Parameter name (lower-cased) → permitted values; an empty list means
    /// any value; an empty map means no constraint.
    pub allowed_parameters: BTreeMap<String, Vec<Value>>,
    /// Parameter name (lower-cased) → forbidden values; an empty list means
    /// every value.
    pub denied_parameters: BTreeMap<String, Vec<Value>>,
    /// Lower-cased parameter names that must be present.
    pub required_parameters: Vec<String>,
    pub min_wrapping_ttl: Option<Duration>,
    pub max_wrapping_ttl: Option<Duration>,
}

/// Policy names are case- and surrounding-space-insensitive, as in Vault.
pub fn normalise_name(name: &str) -> String {
    name.trim().to_lowercase()
}

/// Parse a policy in HCL or, when the text starts with `{`, JSON.
pub fn parse_policy(name: &str, text: &str) -> Result<Policy, PolicyError> {
    let stanzas = if text.trim_start().starts_with('{') {
        lower_json(text)?
    } else {
        lower_hcl(text)?
    };
    let paths = stanzas
        .into_iter()
        .map(build_rules)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Policy {
        name: normalise_name(name),
        raw: text.to_string(),
        paths,
    })
}

/// One `path` stanza before validation.
struct Stanza {
    label: String,
    line: Option<usize>,
    entries: Vec<(String, Value)>,
}

// ---------------------------------------------------------------- HCL

fn lower_hcl(text: &str) -> Result<Vec<Stanza>, PolicyError> {
    let body = parse_hcl_body(text)?;
    let ctx = Context::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for structure in body.iter() {
        match structure {
            Structure::Attribute(attr) => match attr.key() {
                "name" => {}
                "path" => {
                    let value = eval(&ctx, attr.expr(), "path", None)?;
                    lower_json_paths(value, &mut out)?;
                }
                other => {
                    return Err(PolicyError::UnknownTopLevelKey {
                        key: other.to_string(),
                        line: find_line(text, other, None),
                    })
                }
            },
            Structure::Block(block) => {
                if block.identifier() != "path" {
                    return Err(PolicyError::UnknownTopLevelKey {
                        key: block.identifier().to_string(),
                        line: find_line(text, block.identifier(), None),
                    });
                }
                let [label] = block.labels() else {
                    return Err(PolicyError::InvalidPath {
                        path: block
                            .labels()
                            .iter()
                            .map(|l| l.as_str())
                            .collect::<Vec<_>>()
                            .join(" "),
                        problem: "a path stanza takes exactly one label".into(),
                        line: None,
                    });
                };
                let label = label.as_str().to_string();
                let nth = seen.entry(label.clone()).or_insert(0);
                let line = find_line(text, &format!("\"{label}\""), Some(*nth));
                *nth += 1;
                let entries = hcl_body_entries(&ctx, block.body(), &label, line)?;
                out.push(Stanza {
                    label,
                    line,
                    entries,
                });
            }
        }
    }
    Ok(out)
}

/// Parse HCL, accepting the one-line stanzas Vault's HCL1 parser allowed
/// (`path "a" { capabilities = ["read"] policy = "x" }`), which HCL2 (hcl-rs)
/// rejects: it wants a newline after a block's `{`, before its `}` and
/// between attributes. The text is parsed as written first; only if that
/// fails is it re-parsed with those newlines added ([`hcl1_newlines`]).
fn parse_hcl_body(text: &str) -> Result<Body, PolicyError> {
    let first = match hcl::parse(text) {
        Ok(body) => return Ok(body),
        Err(e) => e,
    };
    let Some((patched, inserted)) = hcl1_newlines(text) else {
        return Err(PolicyError::Syntax(first.to_string()));
    };
    match hcl::parse(&patched) {
        Ok(body) => Ok(body),
        Err(hcl::Error::Parse(pe)) => {
            // Report the line as the user wrote it.
            let added = inserted
                .iter()
                .filter(|&&at| at < pe.location().offset())
                .count();
            Err(PolicyError::Syntax(format!(
                "line {}: {}",
                pe.location().line().saturating_sub(added),
                pe.message()
            )))
        }
        Err(_) => Err(PolicyError::Syntax(first.to_string())),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Ctx {
    Block,
    Object,
    Other,
}

#[derive(Clone, Copy, PartialEq)]
enum Last {
    /// Start of a line, or after a `,`.
    Separator,
    OpenBlock,
    /// A complete value in value position of a block or object.
    ValueEnd,
    Other,
}

/// Insert the newlines HCL2 needs where HCL1 accepted blanks. A small
/// string- and comment-aware scanner, not a parser: it tracks whether each
/// `{` opens a block body or an object and whether a key or a value is
/// expected. Returns `None` when it changes nothing or meets a construct it
/// does not model (templates, heredocs): the original error then stands.
/// Returns the new text and the offsets of the inserted newlines.
pub(crate) fn hcl1_newlines(text: &str) -> Option<(String, Vec<usize>)> {
    let mut out = String::with_capacity(text.len() + 16);
    let mut inserted = Vec::new();
    // (context, expecting a value) per nesting level; the body is a block.
    let mut stack: Vec<(Ctx, bool)> = vec![(Ctx::Block, false)];
    let mut last = Last::Separator;
    let mut chars = text.char_indices().peekable();

    let newline = |out: &mut String, inserted: &mut Vec<usize>| {
        inserted.push(out.len());
        out.push('\n');
    };

    while let Some((i, c)) = chars.next() {
        let (ctx, _) = *stack.last()?;
        match c {
            '\n' => {
                out.push(c);
                last = Last::Separator;
                if let Some(top) = stack.last_mut() {
                    if top.0 != Ctx::Other {
                        top.1 = false;
                    }
                }
                continue;
            }
            ' ' | '\t' | '\r' => {
                out.push(c);
                continue;
            }
            '#' => {
                out.push(c);
                while let Some(&(_, n)) = chars.peek() {
                    if n == '\n' {
                        break;
                    }
                    out.push(n);
                    chars.next();
                }
                continue;
            }
            '/' if text[i..].starts_with("//") || text[i..].starts_with("/*") => return None,
            '<' if text[i..].starts_with("<<") => return None,
            _ => {}
        }

        let key_start = c == '"' || c.is_alphabetic() || c == '_';
        if ctx != Ctx::Other && last == Last::ValueEnd && key_start {
            newline(&mut out, &mut inserted);
            if let Some(top) = stack.last_mut() {
                top.1 = false;
            }
        } else if ctx == Ctx::Block
            && ((last == Last::OpenBlock && c != '}')
                || (c == '}' && !matches!(last, Last::Separator | Last::OpenBlock)))
        {
            // Content on the line of a block's `{`, or before its `}`.
            newline(&mut out, &mut inserted);
        }
        let in_value = stack.last().is_some_and(|top| top.1);

        match c {
            '"' => {
                out.push(c);
                let mut escaped = false;
                loop {
                    let (_, n) = chars.next()?;
                    out.push(n);
                    if escaped {
                        escaped = false;
                    } else if n == '\\' {
                        escaped = true;
                    } else if (n == '$' || n == '%') && chars.peek().is_some_and(|&(_, m)| m == '{')
                    {
                        return None;
                    } else if n == '"' {
                        break;
                    } else if n == '\n' {
                        return None;
                    }
                }
                last = if in_value {
                    Last::ValueEnd
                } else {
                    Last::Other
                };
            }
            '{' => {
                out.push(c);
                // In a block body, a `{` in key position opens a nested block
                // (after its labels); anywhere else it is an object.
                let object = in_value || ctx == Ctx::Other;
                stack.push(if object {
                    (Ctx::Object, false)
                } else {
                    (Ctx::Block, false)
                });
                last = if object { Last::Other } else { Last::OpenBlock };
            }
            '[' | '(' => {
                out.push(c);
                stack.push((Ctx::Other, true));
                last = Last::Other;
            }
            '}' | ']' | ')' => {
                out.push(c);
                stack.pop();
                if stack.is_empty() {
                    return None;
                }
                let (_, outer_value) = *stack.last()?;
                last = if outer_value {
                    Last::ValueEnd
                } else {
                    Last::Other
                };
            }
            '=' | ':' => {
                out.push(c);
                if let Some(top) = stack.last_mut() {
                    if top.0 != Ctx::Other {
                        top.1 = true;
                    }
                }
                last = Last::Other;
            }
            ',' => {
                out.push(c);
                if let Some(top) = stack.last_mut() {
                    if top.0 != Ctx::Other {
                        top.1 = false;
                    }
                }
                last = Last::Separator;
            }
            c if c.is_alphanumeric() || c == '_' || c == '-' || c == '.' => {
                out.push(c);
                while let Some(&(_, n)) = chars.peek() {
                    if !(n.is_alphanumeric() || n == '_' || n == '-' || n == '.') {
                        break;
                    }
                    out.push(n);
                    chars.next();
                }
                last = if in_value {
                    Last::ValueEnd
                } else {
                    Last::Other
                };
            }
            other => {
                out.push(other);
                last = Last::Other;
            }
        }
    }
    (!inserted.is_empty()).then_some((out, inserted))
}

fn hcl_body_entries(
    ctx: &Context,
    body: &Body,
    label: &str,
    line: Option<usize>,
) -> Result<Vec<(String, Value)>, PolicyError> {
    let mut entries = Vec::new();
    for structure in body.iter() {
        match structure {
            Structure::Attribute(attr) => {
                let value = eval(ctx, attr.expr(), label, line)?;
                entries.push((attr.key().to_string(), value));
            }
            // HCL1 let `allowed_parameters { … }` be written as a block; keep
            // accepting that for blocks without labels.
            Structure::Block(block) if block.labels().is_empty() => {
                let inner = hcl_body_entries(ctx, block.body(), label, line)?;
                entries.push((
                    block.identifier().to_string(),
                    Value::Object(inner.into_iter().collect()),
                ));
            }
            Structure::Block(block) => {
                return Err(PolicyError::UnknownPathKey {
                    path: label.to_string(),
                    key: block.identifier().to_string(),
                    line,
                })
            }
        }
    }
    Ok(entries)
}

fn eval(
    ctx: &Context,
    expr: &hcl::Expression,
    label: &str,
    line: Option<usize>,
) -> Result<Value, PolicyError> {
    let value = expr.evaluate(ctx).map_err(|e| PolicyError::InvalidPath {
        path: label.to_string(),
        problem: format!("cannot evaluate expression: {e}"),
        line,
    })?;
    serde_json::to_value(value).map_err(|e| PolicyError::InvalidPath {
        path: label.to_string(),
        problem: format!("unsupported value: {e}"),
        line,
    })
}

/// hcl-rs does not keep source positions in its `Body`, so the line of a
/// stanza is recovered by looking for its `path "label"` header. It is only
/// a hint in an error message; the `nth` occurrence handles repeated labels.
fn find_line(text: &str, needle: &str, nth: Option<usize>) -> Option<usize> {
    let mut remaining = nth.unwrap_or(0);
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let hit = match nth {
            Some(_) => trimmed.starts_with("path") && trimmed.contains(needle),
            None => trimmed.starts_with(needle),
        };
        if hit {
            if remaining == 0 {
                return Some(i + 1);
            }
            remaining -= 1;
        }
    }
    None
}

// ---------------------------------------------------------------- JSON

fn lower_json(text: &str) -> Result<Vec<Stanza>, PolicyError> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| PolicyError::Syntax(e.to_string()))?;
    let Value::Object(top) = value else {
        return Err(PolicyError::Syntax("policy must be a JSON object".into()));
    };
    let mut out = Vec::new();
    for (key, value) in top {
        match key.as_str() {
            "name" => {}
            "path" => lower_json_paths(value, &mut out)?,
            _ => return Err(PolicyError::UnknownTopLevelKey { key, line: None }),
        }
    }
    Ok(out)
}

/// `"path": {"label": {…}}`, and the HCL1-JSON variants where either level
/// is a list of such objects.
fn lower_json_paths(value: Value, out: &mut Vec<Stanza>) -> Result<(), PolicyError> {
    match value {
        Value::Object(paths) => {
            for (label, rules) in paths {
                lower_json_rules(label, rules, out)?;
            }
            Ok(())
        }
        Value::Array(items) => items
            .into_iter()
            .try_for_each(|item| lower_json_paths(item, out)),
        _ => Err(PolicyError::Syntax(
            "\"path\" must be an object of path → rules".into(),
        )),
    }
}

fn lower_json_rules(label: String, rules: Value, out: &mut Vec<Stanza>) -> Result<(), PolicyError> {
    match rules {
        Value::Object(map) => {
            out.push(Stanza {
                label,
                line: None,
                entries: map.into_iter().collect(),
            });
            Ok(())
        }
        Value::Array(items) => items
            .into_iter()
            .try_for_each(|item| lower_json_rules(label.clone(), item, out)),
        _ => Err(PolicyError::InvalidPath {
            path: label,
            problem: "rules must be an object".into(),
            line: None,
        }),
    }
}

// ---------------------------------------------------------------- validation

fn build_rules(stanza: Stanza) -> Result<PathRules, PolicyError> {
    let Stanza {
        label,
        line,
        entries,
    } = stanza;
    let invalid = |problem: String| PolicyError::InvalidPath {
        path: label.clone(),
        problem,
        line,
    };

    let mut seen_keys: Vec<&str> = Vec::with_capacity(entries.len());
    for (key, _) in &entries {
        if seen_keys.contains(&key.as_str()) {
            return Err(invalid(format!("duplicate key {key:?}")));
        }
        seen_keys.push(key);
    }

    let mut caps = Capabilities::NONE;
    let mut allowed = BTreeMap::new();
    let mut denied = BTreeMap::new();
    let mut required = Vec::new();
    let mut min_ttl = None;
    let mut max_ttl = None;

    for (key, value) in &entries {
        match key.as_str() {
            "comment" => {}
            "policy" => {
                let Value::String(legacy) = value else {
                    return Err(invalid("\"policy\" must be a string".into()));
                };
                caps |= legacy_policy(legacy)
                    .ok_or_else(|| invalid(format!("invalid policy {legacy:?}")))?;
            }
            "capabilities" => {
                for item in as_list(value)
                    .ok_or_else(|| invalid("\"capabilities\" must be a list".into()))?
                {
                    let Value::String(name) = item else {
                        return Err(invalid(format!("capability {item} is not a string")));
                    };
                    caps |= Capabilities::from_name(name).ok_or_else(|| {
                        PolicyError::UnknownCapability {
                            path: label.clone(),
                            capability: name.clone(),
                            line,
                        }
                    })?;
                }
            }
            "allowed_parameters" => allowed = parameter_map(value, key).map_err(invalid)?,
            "denied_parameters" => denied = parameter_map(value, key).map_err(invalid)?,
            "required_parameters" => {
                for item in as_list(value)
                    .ok_or_else(|| invalid("\"required_parameters\" must be a list".into()))?
                {
                    let Value::String(p) = item else {
                        return Err(invalid(format!(
                            "required parameter {item} is not a string"
                        )));
                    };
                    if p.contains('*') {
                        return Err(invalid(format!(
                            "required_parameters: parameter key {p:?}: wildcard is not permitted here"
                        )));
                    }
                    let p = p.to_lowercase();
                    if !required.contains(&p) {
                        required.push(p);
                    }
                }
            }
            "min_wrapping_ttl" => {
                min_ttl = Some(
                    parse_duration(value).map_err(|e| invalid(format!("min_wrapping_ttl: {e}")))?,
                )
            }
            "max_wrapping_ttl" => {
                max_ttl = Some(
                    parse_duration(value).map_err(|e| invalid(format!("max_wrapping_ttl: {e}")))?,
                )
            }
            // Enterprise features: accepting and ignoring them would silently
            // drop a protection the author asked for.
            "mfa_methods" | "control_group" => {
                return Err(invalid(format!("{key:?} is not supported")));
            }
            _ => {
                return Err(PolicyError::UnknownPathKey {
                    path: label.clone(),
                    key: key.clone(),
                    line,
                })
            }
        }
    }

    let path = label.strip_prefix('/').unwrap_or(&label).to_string();
    if path.contains("+*") {
        return Err(invalid(
            "invalid use of wildcards ('+*' is forbidden)".into(),
        ));
    }
    if let (Some(min), Some(max)) = (min_ttl, max_ttl) {
        if !min.is_zero() && !max.is_zero() && max < min {
            return Err(invalid(
                "max_wrapping_ttl cannot be less than min_wrapping_ttl".into(),
            ));
        }
    }

    if caps.is_deny() {
        // As in Vault: a deny stanza is only a deny; its other settings are
        // meaningless and dropped.
        return Ok(PathRules {
            path,
            capabilities: Capabilities::DENY,
            allowed_parameters: BTreeMap::new(),
            denied_parameters: BTreeMap::new(),
            required_parameters: Vec::new(),
            min_wrapping_ttl: None,
            max_wrapping_ttl: None,
        });
    }
    Ok(PathRules {
        path,
        capabilities: caps,
        allowed_parameters: allowed,
        denied_parameters: denied,
        required_parameters: required,
        min_wrapping_ttl: min_ttl.filter(|d| !d.is_zero()),
        max_wrapping_ttl: max_ttl.filter(|d| !d.is_zero()),
    })
}

/// Vault's pre-0.5 `policy = "…"` shorthand.
fn legacy_policy(name: &str) -> Option<Capabilities> {
    use Capabilities as C;
    let write = C::CREATE | C::READ | C::UPDATE | C::DELETE | C::LIST;
    match name {
        "deny" => Some(C::DENY),
        "read" => Some(C::READ | C::LIST),
        "write" => Some(write),
        "sudo" => Some(write | C::SUDO),
        _ => None,
    }
}

fn as_list(value: &Value) -> Option<&[Value]> {
    match value {
        Value::Array(items) => Some(items),
        _ => None,
    }
}

fn parameter_map(value: &Value, what: &str) -> Result<BTreeMap<String, Vec<Value>>, String> {
    let mut out = BTreeMap::new();
    let mut add_object = |map: &serde_json::Map<String, Value>| -> Result<(), String> {
        for (key, values) in map {
            if key.contains('*') && key != "*" {
                return Err(format!(
                    "{what}: parameter key {key:?} cannot contain non-tail wildcards"
                ));
            }
            let Value::Array(values) = values else {
                return Err(format!("{what}: values of {key:?} must be a list"));
            };
            out.insert(key.to_lowercase(), values.clone());
        }
        Ok(())
    };
    match value {
        Value::Object(map) => add_object(map)?,
        // HCL1-JSON may wrap the object in a list.
        Value::Array(items) => {
            for item in items {
                let Value::Object(map) = item else {
                    return Err(format!("{what} must be an object"));
                };
                add_object(map)?;
            }
        }
        _ => return Err(format!("{what} must be an object")),
    }
    Ok(out)
}

/// Vault's `ParseDurationSecond`: a number of seconds, or a string holding
/// either a number of seconds or a Go-style duration (`90s`, `1h30m`, `2d`).
pub(crate) fn parse_duration(value: &Value) -> Result<Duration, String> {
    match value {
        Value::Number(n) => {
            if let Some(secs) = n.as_u64() {
                Ok(Duration::from_secs(secs))
            } else {
                let f = n.as_f64().unwrap_or(-1.0);
                Duration::try_from_secs_f64(f).map_err(|_| format!("invalid duration {n}"))
            }
        }
        Value::String(s) => parse_duration_str(s.trim()),
        other => Err(format!("invalid duration {other}")),
    }
}

fn parse_duration_str(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {s:?}");
    if s.is_empty() {
        return Ok(Duration::ZERO);
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(bad());
        }
        let number: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total += number * scale;
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const DOCS_HCL: &str = r#"
# Normal servers have version 1 of KV mounted at "secret/"
path "secret/foo" {
  capabilities = ["read", "list"]
}

path "secret/super-secret" {
  capabilities = ["deny"]
}

path "secret/restricted" {
  capabilities = ["create"]
  allowed_parameters = {
    "foo" = []
    "bar" = ["zip", "zap"]
  }
  required_parameters = ["Bar"]
  denied_parameters = {
    "baz" = []
  }
  min_wrapping_ttl = "1s"
  max_wrapping_ttl = 90
}

path "/sys/*" {
  policy = "read"
  comment = "legacy"
}
"#;

    #[test]
    fn parses_hcl_sample_from_docs() {
        let p = parse_policy("  My-Policy ", DOCS_HCL).expect("parses");
        assert_eq!(p.name, "my-policy");
        assert_eq!(p.raw, DOCS_HCL);
        assert_eq!(p.paths.len(), 4);
        assert_eq!(p.paths[0].path, "secret/foo");
        assert_eq!(
            p.paths[0].capabilities,
            Capabilities::READ | Capabilities::LIST
        );
        assert_eq!(p.paths[1].capabilities, Capabilities::DENY);
        let r = &p.paths[2];
        assert_eq!(r.capabilities, Capabilities::CREATE);
        assert_eq!(r.allowed_parameters["foo"], Vec::<Value>::new());
        assert_eq!(
            r.allowed_parameters["bar"],
            vec![json!("zip"), json!("zap")]
        );
        assert_eq!(r.denied_parameters["baz"], Vec::<Value>::new());
        assert_eq!(r.required_parameters, vec!["bar".to_string()]);
        assert_eq!(r.min_wrapping_ttl, Some(Duration::from_secs(1)));
        assert_eq!(r.max_wrapping_ttl, Some(Duration::from_secs(90)));
        assert_eq!(p.paths[3].path, "sys/*");
        assert_eq!(
            p.paths[3].capabilities,
            Capabilities::READ | Capabilities::LIST
        );
    }

    #[test]
    fn parses_json_sample_from_docs() {
        let text = r#"
        {
          "path": {
            "secret/foo": { "capabilities": ["create", "read", "update", "patch", "delete", "list"] },
            "secret/+/teamb": { "capabilities": ["read"], "allowed_parameters": {"*": []} },
            "sys/*": { "policy": "sudo" }
          }
        }"#;
        let p = parse_policy("j", text).expect("parses");
        assert_eq!(p.paths.len(), 3);
        let foo = p
            .paths
            .iter()
            .find(|r| r.path == "secret/foo")
            .expect("foo");
        assert!(foo.capabilities.contains(Capabilities::PATCH));
        let sys = p.paths.iter().find(|r| r.path == "sys/*").expect("sys");
        assert!(sys
            .capabilities
            .contains(Capabilities::SUDO | Capabilities::CREATE));
        let teamb = p
            .paths
            .iter()
            .find(|r| r.path == "secret/+/teamb")
            .expect("teamb");
        assert!(teamb.allowed_parameters.contains_key("*"));
    }

    #[test]
    fn json_and_hcl1_json_list_forms() {
        let text = r#"{"path": [{"a/*": [{"capabilities": ["read"]}]}, {"b": {"capabilities": ["list"]}}]}"#;
        let p = parse_policy("x", text).expect("parses");
        assert_eq!(p.paths.len(), 2);
    }

    #[test]
    fn legacy_policy_combines_with_capabilities_and_deny_wins() {
        let p = parse_policy(
            "x",
            r#"path "a" { policy = "read"  capabilities = ["create", "sudo"] }
               path "b" { policy = "write" capabilities = ["deny"] }"#,
        )
        .expect("parses");
        assert_eq!(
            p.paths[0].capabilities,
            Capabilities::READ | Capabilities::LIST | Capabilities::CREATE | Capabilities::SUDO
        );
        assert_eq!(p.paths[1].capabilities, Capabilities::DENY);
    }

    #[test]
    fn errors_name_the_problem() {
        let e = parse_policy("x", "path \"a\" {\n capabilities = [\"read\", \"jump\"]\n}")
            .expect_err("must be refused");
        assert!(
            matches!(&e, PolicyError::UnknownCapability { capability, path, line: Some(1) } if capability == "jump" && path == "a"),
            "{e:?}"
        );
        assert!(e.to_string().contains("\"jump\""), "{e}");

        let e = parse_policy("x", "\n\npath \"a/b\" {\n capabilties = [\"read\"]\n}")
            .expect_err("must be refused");
        assert!(
            matches!(&e, PolicyError::UnknownPathKey { key, path, line: Some(3) } if key == "capabilties" && path == "a/b"),
            "{e:?}"
        );
        assert!(
            e.to_string().contains("capabilties") && e.to_string().contains("a/b"),
            "{e}"
        );

        let e =
            parse_policy("x", "paths \"a\" { capabilities = [] }").expect_err("must be refused");
        assert!(
            matches!(&e, PolicyError::UnknownTopLevelKey { key, .. } if key == "paths"),
            "{e:?}"
        );

        let e = parse_policy(
            "x",
            r#"{"path": {"a": {"capabilities": ["read"], "bogus": 1}}}"#,
        )
        .expect_err("must be refused");
        assert!(
            matches!(&e, PolicyError::UnknownPathKey { key, .. } if key == "bogus"),
            "{e:?}"
        );

        let e = parse_policy("x", r#"{"pathz": {}}"#).expect_err("must be refused");
        assert!(
            matches!(&e, PolicyError::UnknownTopLevelKey { key, .. } if key == "pathz"),
            "{e:?}"
        );

        let e = parse_policy("x", "path \"a\" {\n capabilities = [\"read\"\n")
            .expect_err("must be refused");
        assert!(matches!(e, PolicyError::Syntax(_)), "{e:?}");

        let e = parse_policy("x", r#"path "a" { policy = "admin" }"#).expect_err("must be refused");
        assert!(e.to_string().contains("invalid policy \"admin\""), "{e}");

        let e = parse_policy("x", r#"path "a/+*" { capabilities = ["read"] }"#)
            .expect_err("must be refused");
        assert!(e.to_string().contains("'+*' is forbidden"), "{e}");

        let e = parse_policy("x", r#"path "a" { allowed_parameters = { "fo*" = [] } }"#)
            .expect_err("must be refused");
        assert!(e.to_string().contains("non-tail wildcards"), "{e}");

        let e = parse_policy(
            "x",
            r#"path "a" { allowed_parameters = { "foo" = "bar" } }"#,
        )
        .expect_err("must be refused");
        assert!(e.to_string().contains("must be a list"), "{e}");

        let e = parse_policy("x", r#"path "a" { control_group = { ttl = "1h" } }"#)
            .expect_err("must be refused");
        assert!(e.to_string().contains("not supported"), "{e}");

        let e = parse_policy(
            "x",
            r#"path "a" { min_wrapping_ttl = "10m" max_wrapping_ttl = "1m" }"#,
        )
        .expect_err("must be refused");
        assert!(e.to_string().contains("max_wrapping_ttl"), "{e}");

        let e = parse_policy("x", r#"path "a" { min_wrapping_ttl = "soon" }"#)
            .expect_err("must be refused");
        assert!(e.to_string().contains("min_wrapping_ttl"), "{e}");

        let e = parse_policy("x", r#"path "a" "b" { capabilities = [] }"#)
            .expect_err("must be refused");
        assert!(e.to_string().contains("exactly one label"), "{e}");

        let e = parse_policy(
            "x",
            "path \"a\" {\n capabilities = [\"read\"]\n capabilities = [\"list\"]\n}",
        )
        .expect_err("must be refused");
        assert!(
            e.to_string().contains("line 3") && e.to_string().contains("redefined"),
            "{e}"
        );
        let e = parse_policy(
            "x",
            r#"{"path": {"a": [{"capabilities": ["read"]}]}, "path": {}}"#,
        );
        assert!(e.is_ok(), "serde_json keeps the last duplicate; harmless");
    }

    #[test]
    fn policy_error_maps_to_bad_request() {
        let e = parse_policy("x", "nope \"a\" {}").expect_err("must be refused");
        let core: crate::CoreError = e.into();
        assert!(matches!(core, crate::CoreError::BadRequest(m) if m.contains("nope")));
    }

    #[test]
    fn empty_policy_and_heredoc() {
        assert!(parse_policy("x", "").expect("empty").paths.is_empty());
        assert!(parse_policy("x", "  # nothing\n")
            .expect("comment")
            .paths
            .is_empty());
        let p = parse_policy(
            "x",
            "name = \"n\"\npath \"a\" { capabilities = [\"read\"] }",
        )
        .expect("name ok");
        assert_eq!(p.paths.len(), 1);
    }

    #[test]
    fn hcl1_one_line_stanzas() {
        let p = parse_policy(
            "x",
            r#"path "secret/data/*" { capabilities = ["read","list"]  allowed_parameters = { "k" = ["v1","v2"], "*" = [] }  denied_parameters = { "d" = [] } required_parameters = ["a"] }
path "b" { policy = "read" }"#,
        )
        .expect("one-line stanza parses");
        assert_eq!(p.paths.len(), 2);
        assert_eq!(p.paths[0].required_parameters, vec!["a".to_string()]);
        assert_eq!(p.paths[0].allowed_parameters.len(), 2);
        // A real error after a fix-up still reports the user's line.
        let e = parse_policy("x", "path \"a\" { policy = \"read\" capabilities = [\"read\"] }\npath \"b\" { capabilities = [\"read\" }").expect_err("must be refused");
        assert!(
            matches!(&e, PolicyError::Syntax(m) if m.starts_with("line 2:")),
            "{e:?}"
        );
    }

    #[test]
    fn hcl1_one_line_with_comments_and_nested_objects() {
        let p = parse_policy(
            "x",
            "# header\npath \"a\" { capabilities = [\"read\"] # trailing\n allowed_parameters = { \"k\" = [\"v\"] \"j\" = [] } }",
        )
        .expect("parses");
        assert_eq!(p.paths[0].allowed_parameters.len(), 2);
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_policy_like_text(text in "[ \n\"{}\\[\\]=,:#a-z0-9_*+/.$%<-]{0,160}") {
            let _ = parse_policy("x", &text);
        }

        #[test]
        fn never_panics_on_any_text(text in proptest::prelude::any::<String>()) {
            let _ = parse_policy("x", &text);
        }
    }

    #[test]
    fn durations() {
        let d = |s: &str| parse_duration(&json!(s));
        assert_eq!(d("300"), Ok(Duration::from_secs(300)));
        assert_eq!(d("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(d("2d"), Ok(Duration::from_secs(172800)));
        assert_eq!(d("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(d("-1s").is_err());
        assert!(d("5x").is_err());
        assert!(d("h").is_err());
        assert_eq!(parse_duration(&json!(12)), Ok(Duration::from_secs(12)));
        assert!(parse_duration(&json!(-3)).is_err());
        assert!(parse_duration(&json!(true)).is_err());
    }
}
