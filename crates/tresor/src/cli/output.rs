//! Rendering answers the way the vault CLI does: `Key/Value` tables by
//! default, pretty JSON with `-format=json`, one raw value with `-field`.

use super::error::CliError;
use serde_json::Value;
use std::collections::BTreeMap;
use tresor_api::Envelope;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    Table,
    Json,
}

/// The global output options every command renders through.
#[derive(Debug, Clone)]
pub(crate) struct Out {
    pub(crate) format: Format,
    pub(crate) field: Option<String>,
}

impl Out {
    /// Print a generic secret: `-field`, JSON envelope, or a table.
    pub(crate) fn envelope(&self, env: &Envelope) -> Result<(), CliError> {
        if let Some(f) = &self.field {
            return print_field(&secret_rows(env), f);
        }
        match self.format {
            Format::Json => print_json(env),
            Format::Table => {
                out!("{}", secret_table(env));
                Ok(())
            }
        }
    }

    /// Print a plain object (a `data` map or a sys answer).
    pub(crate) fn object(&self, v: &Value) -> Result<(), CliError> {
        if let Some(f) = &self.field {
            return print_field(&object_rows(v), f);
        }
        match self.format {
            Format::Json => print_json(v),
            Format::Table => {
                out!("{}", kv_table(&object_rows(v)));
                Ok(())
            }
        }
    }

    /// Print a list answer's `keys`.
    pub(crate) fn keys(&self, env: &Envelope) -> Result<(), CliError> {
        let keys = env
            .data
            .as_ref()
            .and_then(|d| d.get("keys"))
            .cloned()
            .unwrap_or(Value::Array(vec![]));
        match self.format {
            Format::Json => print_json(&keys),
            Format::Table => {
                let keys: Vec<String> = keys
                    .as_array()
                    .map(|a| a.iter().map(fmt_value).collect())
                    .unwrap_or_default();
                out!("{}", list_table(&keys));
                Ok(())
            }
        }
    }

    pub(crate) fn is_json(&self) -> bool {
        self.format == Format::Json
    }

    /// True when the user asked for `-format=json` or `-field`: commands
    /// that print one bare value by default render the answer instead.
    pub(crate) fn structured(&self) -> bool {
        self.is_json() || self.field.is_some()
    }
}

/// "Success! Data written to: PATH" for a write that answered nothing;
/// vault prints it only as a table, so `-format=json | jq` sees no prose.
pub(crate) fn written(out: &Out, path: &str) {
    if !out.is_json() {
        outln!("Success! Data written to: {path}");
    }
}

/// A write's answer: shown when it carries something (or with
/// -format=json), else the [`written`] line.
pub(crate) fn write_answer(out: &Out, env: Option<&Envelope>, path: &str) -> Result<(), CliError> {
    match env {
        Some(env)
            if env.data.is_some()
                || env.auth.is_some()
                || env.wrap_info.is_some()
                || out.is_json() =>
        {
            out.envelope(env)
        }
        _ => {
            written(out, path);
            Ok(())
        }
    }
}

pub(crate) fn print_json<T: serde::Serialize + ?Sized>(v: &T) -> Result<(), CliError> {
    let s = serde_json::to_string_pretty(v)
        .map_err(|e| CliError::Msg(format!("encoding JSON: {e}")))?;
    outln!("{s}");
    Ok(())
}

/// Print one value raw; a missing field is an error like vault's.
pub(crate) fn print_field(rows: &BTreeMap<String, Value>, field: &str) -> Result<(), CliError> {
    match rows.get(field) {
        Some(v) => {
            outln!("{}", fmt_value(v));
            Ok(())
        }
        None => Err(CliError::Msg(format!(
            "Field \"{field}\" not present in secret"
        ))),
    }
}

/// Go's `%v` rendering, which is what vault's tables show: users compare.
pub(crate) fn fmt_value(v: &Value) -> String {
    match v {
        Value::Null => "<nil>".into(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(fmt_value).collect::<Vec<_>>().join(" ")
        ),
        Value::Object(o) => format!(
            "map[{}]",
            o.iter()
                .map(|(k, v)| format!("{k}:{}", fmt_value(v)))
                .collect::<Vec<_>>()
                .join(" ")
        ),
    }
}

/// Seconds as a short Go-style duration: `768h`, `1h30m`, `45s`.
pub(crate) fn fmt_duration(secs: u64) -> String {
    if secs == 0 {
        return "0s".into();
    }
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 {
        out.push_str(&format!("{s}s"));
    }
    out
}

fn object_rows(v: &Value) -> BTreeMap<String, Value> {
    match v {
        Value::Object(o) => o.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        other => BTreeMap::from([("value".to_string(), other.clone())]),
    }
}

/// The rows vault shows for a secret: lease, auth and wrap info, then data.
pub(crate) fn secret_rows(env: &Envelope) -> BTreeMap<String, Value> {
    let mut rows = BTreeMap::new();
    if env.lease_duration > 0 {
        if env.lease_id.is_empty() {
            rows.insert(
                "refresh_interval".into(),
                fmt_duration(env.lease_duration).into(),
            );
        } else {
            rows.insert("lease_id".into(), env.lease_id.clone().into());
            rows.insert(
                "lease_duration".into(),
                fmt_duration(env.lease_duration).into(),
            );
            rows.insert("lease_renewable".into(), env.renewable.into());
        }
    }
    if let Some(a) = &env.auth {
        rows.insert("token".into(), a.client_token.clone().into());
        rows.insert("token_accessor".into(), a.accessor.clone().into());
        let dur = if a.lease_duration == 0 {
            "∞".to_string()
        } else {
            fmt_duration(a.lease_duration)
        };
        rows.insert("token_duration".into(), dur.into());
        rows.insert("token_renewable".into(), a.renewable.into());
        rows.insert("token_policies".into(), a.token_policies.clone().into());
        rows.insert(
            "identity_policies".into(),
            a.identity_policies.clone().unwrap_or_default().into(),
        );
        rows.insert("policies".into(), a.policies.clone().into());
        for (k, v) in a.metadata.iter().flatten() {
            rows.insert(format!("token_meta_{k}"), v.clone().into());
        }
    }
    if let Some(w) = &env.wrap_info {
        rows.insert("wrapping_token".into(), w.token.clone().into());
        rows.insert("wrapping_accessor".into(), w.accessor.clone().into());
        rows.insert("wrapping_token_ttl".into(), fmt_duration(w.ttl).into());
        rows.insert(
            "wrapping_token_creation_time".into(),
            w.creation_time.clone().into(),
        );
        rows.insert(
            "wrapping_token_creation_path".into(),
            w.creation_path.clone().into(),
        );
    }
    if let Some(Value::Object(d)) = &env.data {
        for (k, v) in d {
            rows.insert(k.clone(), v.clone());
        }
    }
    rows
}

/// The table for a secret, followed by any warnings.
pub(crate) fn secret_table(env: &Envelope) -> String {
    let mut s = kv_table(&secret_rows(env));
    for_warnings(env, &mut s);
    s
}

fn for_warnings(env: &Envelope, s: &mut String) {
    if let Some(w) = env.warnings.as_ref().filter(|w| !w.is_empty()) {
        s.push_str("\nWARNING! The following warnings were returned from the server:\n\n");
        for line in w {
            s.push_str(&format!("  * {line}\n"));
        }
    }
}

/// `Key/Value` table, keys sorted (the map is ordered).
pub(crate) fn kv_table(rows: &BTreeMap<String, Value>) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|(k, v)| vec![k.clone(), fmt_value(v)])
        .collect();
    columns_table(&["Key", "Value"], &rows)
}

/// One-column `Keys` table for list answers.
pub(crate) fn list_table(keys: &[String]) -> String {
    let rows: Vec<Vec<String>> = keys.iter().map(|k| vec![k.clone()]).collect();
    columns_table(&["Keys"], &rows)
}

/// Vault's tables: no borders, columns four spaces apart, a dashed rule
/// under the header. comfy-table does the width arithmetic (incl. unicode).
pub(crate) fn columns_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    t.set_content_arrangement(comfy_table::ContentArrangement::Disabled);
    t.add_row(headers.to_vec());
    t.add_row(
        headers
            .iter()
            .map(|h| "-".repeat(h.chars().count()))
            .collect::<Vec<_>>(),
    );
    for r in rows {
        t.add_row(r.clone());
    }
    let last = headers.len().saturating_sub(1);
    for i in 0..headers.len() {
        if let Some(c) = t.column_mut(i) {
            c.set_padding((0, if i == last { 0 } else { 4 }));
        }
    }
    let mut out = String::new();
    for line in t.to_string().lines() {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `=== Title ===` centred over a block of `width` columns, as vault does.
pub(crate) fn header(title: &str, width: usize) -> String {
    let pad = width.saturating_sub(title.chars().count() + 2) / 2;
    let pad = pad.max(2);
    format!("{eq} {title} {eq}", eq = "=".repeat(pad))
}

/// Width of the widest line of a rendered block.
pub(crate) fn width(block: &str) -> usize {
    block.lines().map(|l| l.chars().count()).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kv_table_is_vault_shaped_and_sorted() {
        let rows = object_rows(&json!({"zeta": "z", "alpha": 1, "list": ["a", "b"]}));
        let t = kv_table(&rows);
        assert_eq!(
            t,
            "Key      Value\n---      -----\nalpha    1\nlist     [a b]\nzeta     z\n"
        );
    }

    #[test]
    fn list_table_has_keys_header() {
        assert_eq!(
            list_table(&["a".into(), "b/".into()]),
            "Keys\n----\na\nb/\n"
        );
    }

    #[test]
    fn values_render_like_go() {
        assert_eq!(fmt_value(&Value::Null), "<nil>");
        assert_eq!(
            fmt_value(&json!({"a": 1, "b": [true]})),
            "map[a:1 b:[true]]"
        );
        assert_eq!(fmt_duration(2_764_800), "768h");
        assert_eq!(fmt_duration(5400), "1h30m");
        assert_eq!(fmt_duration(0), "0s");
    }

    #[test]
    fn secret_rows_include_lease_and_auth() {
        let env = Envelope {
            lease_duration: 3600,
            data: Some(json!({"foo": "bar"})),
            auth: Some(tresor_api::AuthInfo {
                client_token: "hvs.x".into(),
                policies: vec!["default".into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        let rows = secret_rows(&env);
        assert_eq!(rows["refresh_interval"], json!("1h"));
        assert_eq!(rows["token"], json!("hvs.x"));
        assert_eq!(rows["token_duration"], json!("∞"));
        assert_eq!(rows["foo"], json!("bar"));
    }

    #[test]
    fn header_is_centered() {
        assert_eq!(header("Data", 12), "=== Data ===");
        assert_eq!(header("Secret Path", 4), "== Secret Path ==");
    }
}
