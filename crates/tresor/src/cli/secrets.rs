//! Mount tables: `tresor secrets ...`, `tresor auth ...`, `tresor audit ...`.

use super::error::api;
use super::input::string_pairs;
use super::output::{columns_table, fmt_duration, fmt_value, print_json};
use super::{CmdResult, Ctx};
use serde_json::{json, Map, Value};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum SecretsCmd {
    /// Enable a secrets engine (kv, kv-v2, transit, pki, database, ...).
    Enable {
        #[arg(value_name = "TYPE")]
        engine: String,
        /// Mount path (default: the type).
        #[arg(long)]
        path: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// KV version (shorthand for -options=version=N).
        #[arg(long)]
        version: Option<u8>,
        #[command(flatten)]
        tuning: MountTuning,
        /// Engine options k=v, repeatable.
        #[arg(long)]
        options: Vec<String>,
        #[arg(long)]
        local: bool,
        #[arg(long)]
        seal_wrap: bool,
    },
    /// Disable the engine at PATH, revoking its leases and deleting its data.
    Disable { path: String },
    /// List enabled engines.
    List {
        #[arg(long)]
        detailed: bool,
    },
    /// Change an engine's TTLs or description.
    Tune {
        path: String,
        #[command(flatten)]
        tuning: MountTuning,
        #[arg(long)]
        description: Option<String>,
        #[arg(long)]
        options: Vec<String>,
    },
    /// Move an engine to a new path (sys/remount).
    Move { source: String, destination: String },
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum AuthCmd {
    /// Enable an auth method (userpass, approle, jwt, kubernetes, ...).
    Enable {
        #[arg(value_name = "TYPE")]
        method: String,
        #[arg(long)]
        path: Option<String>,
        #[arg(long)]
        description: Option<String>,
        #[command(flatten)]
        tuning: MountTuning,
        #[arg(long)]
        local: bool,
    },
    /// Disable the auth method at PATH, revoking its tokens.
    Disable { path: String },
    /// List enabled auth methods.
    List {
        #[arg(long)]
        detailed: bool,
    },
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum AuditCmd {
    /// Enable an audit device: `tresor audit enable file file_path=/var/log/tresor_audit.log`.
    Enable {
        #[arg(value_name = "TYPE")]
        device: String,
        #[arg(long)]
        path: Option<String>,
        #[arg(long)]
        description: Option<String>,
        #[arg(long)]
        local: bool,
        /// Device options k=v.
        options: Vec<String>,
    },
    /// Disable the audit device at PATH.
    Disable { path: String },
    /// List audit devices.
    List {
        #[arg(long)]
        detailed: bool,
    },
}

/// `foo` → `foo/`: mount paths are shown and compared with the slash.
fn with_slash(p: &str) -> String {
    format!("{}/", p.trim_matches('/'))
}

/// The mount settings `secrets enable` and `secrets tune` share.
#[derive(Debug, clap::Args)]
pub(crate) struct MountTuning {
    #[arg(long)]
    default_lease_ttl: Option<String>,
    #[arg(long)]
    max_lease_ttl: Option<String>,
    /// `unauth` lists the mount to callers without a token.
    #[arg(long)]
    listing_visibility: Option<String>,
    /// A request header handed to the engine; repeatable.
    #[arg(long)]
    passthrough_request_headers: Vec<String>,
}

impl MountTuning {
    fn config(self) -> Map<String, Value> {
        let mut cfg = Map::new();
        if let Some(t) = self.default_lease_ttl {
            cfg.insert("default_lease_ttl".into(), json!(t));
        }
        if let Some(t) = self.max_lease_ttl {
            cfg.insert("max_lease_ttl".into(), json!(t));
        }
        if let Some(v) = self.listing_visibility {
            cfg.insert("listing_visibility".into(), json!(v));
        }
        if !self.passthrough_request_headers.is_empty() {
            cfg.insert(
                "passthrough_request_headers".into(),
                json!(self.passthrough_request_headers),
            );
        }
        cfg
    }
}

/// The mount table of a `sys/mounts`-style answer: Vault repeats it at the
/// top level and under `data`; entries are the values that carry a `type`.
fn mount_entries(raw: Option<Value>) -> Vec<(String, Value)> {
    let raw = raw.unwrap_or(Value::Null);
    let table = match raw.get("data") {
        Some(Value::Object(d)) => d.clone(),
        _ => raw.as_object().cloned().unwrap_or_default(),
    };
    let mut out: Vec<(String, Value)> = table
        .into_iter()
        .filter(|(_, v)| v.get("type").is_some())
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn s(v: &Value, ptr: &str) -> String {
    match v.pointer(ptr) {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => fmt_value(other),
    }
}

fn ttl(v: &Value, ptr: &str) -> String {
    match v.pointer(ptr).and_then(Value::as_u64) {
        Some(0) | None => "system".into(),
        Some(n) => fmt_duration(n),
    }
}

fn mounts_table(entries: &[(String, Value)], detailed: bool, with_version: bool) -> String {
    if detailed {
        let mut headers = vec![
            "Path",
            "Type",
            "Accessor",
            "Default TTL",
            "Max TTL",
            "Local",
            "Seal Wrap",
        ];
        if with_version {
            headers.push("Options");
        }
        headers.push("Description");
        let rows: Vec<Vec<String>> = entries
            .iter()
            .map(|(p, m)| {
                let mut r = vec![
                    p.clone(),
                    s(m, "/type"),
                    s(m, "/accessor"),
                    ttl(m, "/config/default_lease_ttl"),
                    ttl(m, "/config/max_lease_ttl"),
                    s(m, "/local"),
                    s(m, "/seal_wrap"),
                ];
                if with_version {
                    r.push(
                        m.get("options")
                            .filter(|o| !o.is_null())
                            .map(fmt_value)
                            .unwrap_or_else(|| "map[]".into()),
                    );
                }
                r.push(s(m, "/description"));
                r
            })
            .collect();
        return columns_table(&headers, &rows);
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|(p, m)| {
            vec![
                p.clone(),
                s(m, "/type"),
                s(m, "/accessor"),
                s(m, "/description"),
            ]
        })
        .collect();
    columns_table(&["Path", "Type", "Accessor", "Description"], &rows)
}

fn print_mounts(ctx: &Ctx, raw: Option<Value>, detailed: bool, with_version: bool) -> CmdResult {
    let entries = mount_entries(raw);
    if ctx.out.is_json() {
        let m: Map<String, Value> = entries.into_iter().collect();
        return print_json(&m);
    }
    out!("{}", mounts_table(&entries, detailed, with_version));
    Ok(())
}

pub(crate) async fn run_secrets(ctx: &Ctx, cmd: SecretsCmd) -> CmdResult {
    let c = &ctx.client;
    match cmd {
        SecretsCmd::Enable {
            engine,
            path,
            description,
            version,
            tuning,
            options,
            local,
            seal_wrap,
        } => {
            let mount = with_slash(path.as_deref().unwrap_or(&engine));
            // vault accepts `kv-v2` as "kv with version 2".
            let (engine, mut version) = match engine.as_str() {
                "kv-v2" => ("kv".to_string(), version.or(Some(2))),
                _ => (engine, version),
            };
            let mut opts = string_pairs(&options)?;
            if let Some(v) = version.take() {
                opts.insert("version".into(), json!(v.to_string()));
            }
            let mut body = json!({
                "type": engine,
                "config": tuning.config(),
                "local": local,
                "seal_wrap": seal_wrap,
            });
            if let Some(d) = description {
                body["description"] = json!(d);
            }
            if !opts.is_empty() {
                body["options"] = Value::Object(opts);
            }
            c.write(
                &format!("sys/mounts/{}", mount.trim_end_matches('/')),
                &body,
            )
            .await
            .map_err(api(format!("Error enabling {engine} at {mount}")))?;
            outln!("Success! Enabled the {engine} secrets engine at: {mount}");
            Ok(())
        }
        SecretsCmd::Disable { path } => {
            let mount = with_slash(&path);
            c.delete(&format!("sys/mounts/{}", mount.trim_end_matches('/')))
                .await
                .map_err(api(format!("Error disabling secrets engine at {mount}")))?;
            outln!("Success! Disabled the secrets engine (if it existed) at: {mount}");
            Ok(())
        }
        SecretsCmd::List { detailed } => {
            let raw = c
                .read_raw("sys/mounts")
                .await
                .map_err(api("Error listing secrets engines"))?;
            print_mounts(ctx, raw, detailed, true)
        }
        SecretsCmd::Tune {
            path,
            tuning,
            description,
            options,
        } => {
            let mount = with_slash(&path);
            let mut body = Value::Object(tuning.config());
            if let Some(d) = description {
                body["description"] = json!(d);
            }
            if !options.is_empty() {
                body["options"] = Value::Object(string_pairs(&options)?);
            }
            c.write(
                &format!("sys/mounts/{}/tune", mount.trim_end_matches('/')),
                &body,
            )
            .await
            .map_err(api(format!("Error tuning secrets engine {mount}")))?;
            outln!("Success! Tuned the secrets engine at: {mount}");
            Ok(())
        }
        SecretsCmd::Move {
            source,
            destination,
        } => {
            let (from, to) = (with_slash(&source), with_slash(&destination));
            let env = c
                .write("sys/remount", &json!({ "from": from, "to": to }))
                .await
                .map_err(api(format!("Error moving secrets engine {from} to {to}")))?;
            let migration = env.and_then(|e| e.data).and_then(|d| {
                d.get("migration_id")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            });
            match migration {
                Some(id) => {
                    outln!("Started moving secrets engine {from} to {to}, with migration ID: {id}")
                }
                None => outln!("Success! Moved secrets engine {from} to: {to}"),
            }
            Ok(())
        }
    }
}

pub(crate) async fn run_auth(ctx: &Ctx, cmd: AuthCmd) -> CmdResult {
    let c = &ctx.client;
    match cmd {
        AuthCmd::Enable {
            method,
            path,
            description,
            tuning,
            local,
        } => {
            let mount = with_slash(path.as_deref().unwrap_or(&method));
            let mut body = json!({
                "type": method,
                "config": tuning.config(),
                "local": local,
            });
            if let Some(d) = description {
                body["description"] = json!(d);
            }
            c.write(&format!("sys/auth/{}", mount.trim_end_matches('/')), &body)
                .await
                .map_err(api(format!("Error enabling {method} auth at {mount}")))?;
            outln!("Success! Enabled {method} auth method at: {mount}");
            Ok(())
        }
        AuthCmd::Disable { path } => {
            let mount = with_slash(&path);
            c.delete(&format!("sys/auth/{}", mount.trim_end_matches('/')))
                .await
                .map_err(api(format!("Error disabling auth method at {mount}")))?;
            outln!("Success! Disabled the auth method (if it existed) at: {mount}");
            Ok(())
        }
        AuthCmd::List { detailed } => {
            let raw = c
                .read_raw("sys/auth")
                .await
                .map_err(api("Error listing auth methods"))?;
            print_mounts(ctx, raw, detailed, false)
        }
    }
}

pub(crate) async fn run_audit(ctx: &Ctx, cmd: AuditCmd) -> CmdResult {
    let c = &ctx.client;
    match cmd {
        AuditCmd::Enable {
            device,
            path,
            description,
            local,
            options,
        } => {
            let mount = with_slash(path.as_deref().unwrap_or(&device));
            let mut body = json!({
                "type": device,
                "options": Value::Object(string_pairs(&options)?),
                "local": local,
            });
            if let Some(d) = description {
                body["description"] = json!(d);
            }
            c.write(&format!("sys/audit/{}", mount.trim_end_matches('/')), &body)
                .await
                .map_err(api(format!(
                    "Error enabling audit device {device} at {mount}"
                )))?;
            outln!("Success! Enabled the {device} audit device at: {mount}");
            Ok(())
        }
        AuditCmd::Disable { path } => {
            let mount = with_slash(&path);
            c.delete(&format!("sys/audit/{}", mount.trim_end_matches('/')))
                .await
                .map_err(api(format!("Error disabling audit device at {mount}")))?;
            outln!("Success! Disabled audit device (if it was enabled) at: {mount}");
            Ok(())
        }
        AuditCmd::List { detailed } => {
            let raw = c
                .read_raw("sys/audit")
                .await
                .map_err(api("Error listing audit devices"))?;
            let entries = mount_entries(raw);
            if ctx.out.is_json() {
                let m: Map<String, Value> = entries.into_iter().collect();
                return print_json(&m);
            }
            if entries.is_empty() {
                outln!("No audit devices are enabled.");
                return Ok(());
            }
            let (headers, rows): (Vec<&str>, Vec<Vec<String>>) = if detailed {
                (
                    vec!["Path", "Type", "Description", "Replication", "Options"],
                    entries
                        .iter()
                        .map(|(p, m)| {
                            let repl = if m.get("local").and_then(Value::as_bool).unwrap_or(false) {
                                "local"
                            } else {
                                "replicated"
                            };
                            vec![
                                p.clone(),
                                s(m, "/type"),
                                s(m, "/description"),
                                repl.into(),
                                s(m, "/options"),
                            ]
                        })
                        .collect(),
                )
            } else {
                (
                    vec!["Path", "Type", "Description"],
                    entries
                        .iter()
                        .map(|(p, m)| vec![p.clone(), s(m, "/type"), s(m, "/description")])
                        .collect(),
                )
            };
            out!("{}", columns_table(&headers, &rows));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mount_tables_in_both_shapes() {
        let raw = json!({
            "secret/": {"type": "kv", "accessor": "kv_1", "description": "", "options": {"version": "2"}},
            "request_id": "x",
            "data": {
                "secret/": {"type": "kv", "accessor": "kv_1", "description": "", "options": {"version": "2"}},
                "cubbyhole/": {"type": "cubbyhole", "accessor": "c_1", "description": "per-token"}
            }
        });
        let e = mount_entries(Some(raw));
        assert_eq!(
            e.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(),
            ["cubbyhole/", "secret/"]
        );
        let t = mounts_table(&e, false, true);
        assert!(
            t.starts_with("Path          Type         Accessor    Description\n"),
            "{t}"
        );
        let flat = mount_entries(Some(json!({"token/": {"type": "token"}})));
        assert_eq!(flat.len(), 1);
    }

    #[test]
    fn mount_paths_get_one_slash() {
        assert_eq!(with_slash("/kv"), "kv/");
        assert_eq!(with_slash("kv/"), "kv/");
    }
}
