//! `tresor kv ...`: KV v1 and v2 behind one set of commands, the version
//! found per mount like the vault CLI does (`sys/internal/ui/mounts`).

use super::error::{api, CliError};
use super::input::{string_pairs, Input};
use super::output::{self, header, kv_table, print_field, width, Format};
use super::{CmdResult, Ctx};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use tresor_api::Envelope;
use tresor_client::kv_path;

#[derive(Debug, clap::Args)]
pub(crate) struct KvPath {
    /// Mount path of the KV engine; PATH is then relative to it.
    #[arg(long)]
    mount: Option<String>,
    /// Secret path, `secret/foo` (or `foo` with -mount=secret).
    path: String,
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum KvCmd {
    /// Read a secret.
    Get {
        #[command(flatten)]
        p: KvPath,
        /// Version to read (v2; default latest).
        #[arg(long)]
        version: Option<u64>,
    },
    /// Write a secret (replaces all keys): k=v, k=@file, k=-, or - for JSON.
    Put {
        #[command(flatten)]
        p: KvPath,
        /// Check-and-set: write only if the current version is N (0: only if absent).
        #[arg(long)]
        cas: Option<u64>,
        data: Vec<String>,
    },
    /// Merge keys into the latest version (v2).
    Patch {
        #[command(flatten)]
        p: KvPath,
        #[arg(long)]
        cas: Option<u64>,
        data: Vec<String>,
    },
    /// Delete the latest version (or -versions) of a secret.
    Delete {
        #[command(flatten)]
        p: KvPath,
        #[arg(long, value_delimiter = ',')]
        versions: Vec<u64>,
    },
    /// Restore deleted versions (v2).
    Undelete {
        #[command(flatten)]
        p: KvPath,
        #[arg(long, value_delimiter = ',', required = true)]
        versions: Vec<u64>,
    },
    /// Permanently remove versions (v2).
    Destroy {
        #[command(flatten)]
        p: KvPath,
        #[arg(long, value_delimiter = ',', required = true)]
        versions: Vec<u64>,
    },
    /// List keys under a path.
    List {
        #[command(flatten)]
        p: KvPath,
    },
    /// Secret metadata (v2).
    #[command(subcommand)]
    Metadata(MetadataCmd),
    /// Rotate a secret now (v2): by its rotation rule, or regenerate -fields.
    Rotate {
        #[command(flatten)]
        p: KvPath,
        /// Fields to regenerate (default: the rule's), comma-separated.
        #[arg(long, value_delimiter = ',')]
        fields: Vec<String>,
        /// Password policy to generate from (default: the rule's, else Vault's default).
        #[arg(long)]
        password_policy: Option<String>,
        /// How long the previous version stays readable (e.g. 1h).
        #[arg(long)]
        grace_period: Option<String>,
    },
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum MetadataCmd {
    Get {
        #[command(flatten)]
        p: KvPath,
    },
    Put {
        #[command(flatten)]
        p: KvPath,
        #[arg(long)]
        max_versions: Option<u64>,
        /// Bare or `=true`/`=false`, like a Go bool flag (a value needs `=`, so
        /// the path after a bare flag is not taken for one).
        #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
        cas_required: Option<bool>,
        /// Duration after which versions are deleted (e.g. 768h).
        #[arg(long)]
        delete_version_after: Option<String>,
        /// k=v, repeatable.
        #[arg(long)]
        custom_metadata: Vec<String>,
    },
    /// Delete all versions and metadata of a secret.
    Delete {
        #[command(flatten)]
        p: KvPath,
    },
}

/// A KV path resolved against its mount.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    mount: String,
    rel: String,
    version: u8,
}

impl Target {
    /// The path as a user sees it in vault's output (`secret/data/foo`).
    fn shown(&self, seg: &str) -> String {
        if self.version == 2 {
            kv_path(&self.mount, seg, &self.rel)
        } else {
            kv_path(&self.mount, "", &self.rel)
        }
    }
}

/// `path` relative to `mount` (`secret/` + `secret/a/b` → `a/b`).
fn split_kv_path(path: &str, mount: &str) -> Result<String, CliError> {
    let path = path.trim_start_matches('/');
    let mount = mount.trim_matches('/');
    if path == mount {
        return Ok(String::new());
    }
    path.strip_prefix(mount)
        .and_then(|r| r.strip_prefix('/'))
        .map(str::to_string)
        .ok_or_else(|| CliError::Usage(format!("path {path:?} is not under mount {mount}/")))
}

async fn resolve(ctx: &Ctx, p: &KvPath) -> Result<Target, CliError> {
    let probe = match &p.mount {
        Some(m) => m.trim_matches('/').to_string(),
        None => p.path.trim_start_matches('/').to_string(),
    };
    let info = ctx.client.mount_info(&probe).await.map_err(|e| {
        if e.status() == Some(403) && ctx.client.token().is_some() {
            // The server answers 403 both for "no mount there" and "this
            // token may not see it"; a root token only ever gets the first.
            let first = probe.split('/').next().unwrap_or_default();
            CliError::Msg(format!(
                "Error looking up the mount of {probe}: no KV secrets engine is mounted at \
                 {first}/ (or above), or this token may not use it. \
                 tresor secrets list shows the mounts."
            ))
        } else {
            api(format!("Error looking up the mount of {probe}"))(e)
        }
    })?;
    // `generic` is KV v1 under its old name; cubbyhole speaks KV v1 too,
    // and vault's `kv` commands work on it.
    if !matches!(
        info.mount_type.as_str(),
        "kv" | "generic" | "cubbyhole" | ""
    ) {
        return Err(CliError::Usage(format!(
            "{} is a {} secrets engine, not KV: use tresor read/write/list on its paths",
            info.path, info.mount_type
        )));
    }
    let (mount, rel) = match &p.mount {
        Some(m) => (
            m.trim_matches('/').to_string(),
            p.path.trim_start_matches('/').to_string(),
        ),
        None => {
            let mount = if info.path.is_empty() {
                probe.split('/').next().unwrap_or_default().to_string()
            } else {
                info.path.trim_matches('/').to_string()
            };
            let rel = split_kv_path(&p.path, &mount)?;
            (mount, rel)
        }
    };
    Ok(Target {
        mount,
        rel,
        version: info.version,
    })
}

fn v2_only(t: &Target, what: &str) -> CmdResult {
    if t.version == 2 {
        Ok(())
    } else {
        Err(CliError::Usage(format!(
            "{what} is only supported on KV v2 mounts; {}/ is KV v1",
            t.mount
        )))
    }
}

pub(crate) async fn run(ctx: &Ctx, cmd: KvCmd) -> CmdResult {
    let c = &ctx.client;
    match cmd {
        KvCmd::Get { p, version } => {
            let t = resolve(ctx, &p).await?;
            let shown = t.shown("data");
            let ctx_msg = format!("Error reading {shown}");
            let env = if t.version == 2 {
                c.kv2_get(&t.mount, &t.rel, version)
                    .await
                    .map_err(api(ctx_msg))?
            } else {
                c.read(&t.shown("")).await.map_err(api(ctx_msg))?
            };
            let Some(env) = env else {
                eprintln!("No value found at {shown}");
                return Err(CliError::Exit(2));
            };
            print_kv_secret(ctx, &t, &env, &shown)
        }
        KvCmd::Put { p, cas, data } | KvCmd::Patch { p, cas, data } if data.is_empty() => {
            let _ = (p, cas);
            Err(CliError::Usage(
                "Must supply data: tresor kv put PATH key=value ...".into(),
            ))
        }
        KvCmd::Put { p, cas, data } => {
            let t = resolve(ctx, &p).await?;
            let body = Value::Object(Input::new(&mut std::io::stdin()).parse(&data)?);
            let shown = t.shown("data");
            let ctx_msg = format!("Error writing data to {shown}");
            if t.version == 2 {
                let env = c
                    .kv2_put(&t.mount, &t.rel, body, cas)
                    .await
                    .map_err(api(ctx_msg))?;
                print_written(ctx, env.as_ref(), &shown)
            } else {
                if cas.is_some() {
                    return Err(CliError::Usage(
                        "-cas is only supported on KV v2 mounts".into(),
                    ));
                }
                let env = c.write(&shown, &body).await.map_err(api(ctx_msg))?;
                output::write_answer(&ctx.out, env.as_ref(), &shown)
            }
        }
        KvCmd::Patch { p, cas, data } => {
            let t = resolve(ctx, &p).await?;
            v2_only(&t, "kv patch")?;
            let body = Value::Object(Input::new(&mut std::io::stdin()).parse(&data)?);
            let shown = t.shown("data");
            let env = c
                .kv2_patch(&t.mount, &t.rel, body, cas)
                .await
                .map_err(api(format!("Error writing data to {shown}")))?;
            print_written(ctx, env.as_ref(), &shown)
        }
        KvCmd::Delete { p, versions } => {
            let t = resolve(ctx, &p).await?;
            let shown = t.shown("data");
            let res = if t.version == 2 {
                c.kv2_delete(&t.mount, &t.rel, &versions).await
            } else {
                c.delete(&shown).await.map(|_| ())
            };
            res.map_err(api(format!("Error deleting {shown}")))?;
            outln!("Success! Data deleted (if it existed) at: {shown}");
            Ok(())
        }
        KvCmd::Undelete { p, versions } => {
            let t = resolve(ctx, &p).await?;
            v2_only(&t, "kv undelete")?;
            let shown = t.shown("undelete");
            c.kv2_undelete(&t.mount, &t.rel, &versions)
                .await
                .map_err(api(format!("Error writing data to {shown}")))?;
            output::written(&ctx.out, &shown);
            Ok(())
        }
        KvCmd::Destroy { p, versions } => {
            let t = resolve(ctx, &p).await?;
            v2_only(&t, "kv destroy")?;
            let shown = t.shown("destroy");
            c.kv2_destroy(&t.mount, &t.rel, &versions)
                .await
                .map_err(api(format!("Error writing data to {shown}")))?;
            output::written(&ctx.out, &shown);
            Ok(())
        }
        KvCmd::List { p } => {
            let t = resolve(ctx, &p).await?;
            let shown = t.shown("metadata");
            let env = if t.version == 2 {
                c.kv2_list(&t.mount, &t.rel).await
            } else {
                c.list(&shown).await
            }
            .map_err(api(format!("Error listing {shown}")))?;
            match env {
                Some(env) => ctx.out.keys(&env),
                None => {
                    eprintln!("No value found at {shown}");
                    Err(CliError::Exit(2))
                }
            }
        }
        KvCmd::Metadata(m) => metadata(ctx, m).await,
        KvCmd::Rotate {
            p,
            fields,
            password_policy,
            grace_period,
        } => {
            let t = resolve(ctx, &p).await?;
            v2_only(&t, "kv rotate")?;
            let mut body = Map::new();
            if !fields.is_empty() {
                body.insert("fields".into(), json!(fields));
            }
            if let Some(pp) = password_policy {
                body.insert("password_policy".into(), pp.into());
            }
            if let Some(g) = grace_period {
                body.insert("grace_period".into(), g.into());
            }
            let target = t.shown("rotate");
            let env = c
                .write(&target, &Value::Object(body))
                .await
                .map_err(api(format!("Error rotating {}", t.shown("data"))))?;
            print_written(ctx, env.as_ref(), &t.shown("data"))
        }
    }
}

async fn metadata(ctx: &Ctx, cmd: MetadataCmd) -> CmdResult {
    let c = &ctx.client;
    match cmd {
        MetadataCmd::Get { p } => {
            let t = resolve(ctx, &p).await?;
            v2_only(&t, "kv metadata")?;
            let shown = t.shown("metadata");
            let env = c
                .kv2_metadata_get(&t.mount, &t.rel)
                .await
                .map_err(api(format!("Error reading {shown}")))?;
            let Some(env) = env else {
                eprintln!("No value found at {shown}");
                return Err(CliError::Exit(2));
            };
            if ctx.out.field.is_some() || ctx.out.is_json() {
                return ctx.out.envelope(&env);
            }
            let mut meta: BTreeMap<String, Value> = match &env.data {
                Some(Value::Object(o)) => o.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                _ => BTreeMap::new(),
            };
            let versions = meta.remove("versions");
            let mut blocks = vec![
                ("Metadata Path".to_string(), format!("{shown}\n")),
                ("Metadata".to_string(), kv_table(&meta)),
            ];
            if let Some(Value::Object(vs)) = versions {
                let mut vs: Vec<(u64, Value)> = vs
                    .into_iter()
                    .filter_map(|(k, v)| Some((k.parse().ok()?, v)))
                    .collect();
                vs.sort_by_key(|(n, _)| *n);
                for (n, v) in vs {
                    blocks.push((format!("Version {n}"), kv_table(&metadata_rows(&v))));
                }
            }
            out!("{}", sections(&blocks));
            Ok(())
        }
        MetadataCmd::Put {
            p,
            max_versions,
            cas_required,
            delete_version_after,
            custom_metadata,
        } => {
            let t = resolve(ctx, &p).await?;
            v2_only(&t, "kv metadata")?;
            let mut body = Map::new();
            if let Some(m) = max_versions {
                body.insert("max_versions".into(), m.into());
            }
            if let Some(b) = cas_required {
                body.insert("cas_required".into(), b.into());
            }
            if let Some(d) = delete_version_after {
                body.insert("delete_version_after".into(), d.into());
            }
            if !custom_metadata.is_empty() {
                body.insert(
                    "custom_metadata".into(),
                    Value::Object(string_pairs(&custom_metadata)?),
                );
            }
            let shown = t.shown("metadata");
            c.kv2_metadata_put(&t.mount, &t.rel, &Value::Object(body))
                .await
                .map_err(api(format!("Error writing data to {shown}")))?;
            output::written(&ctx.out, &shown);
            Ok(())
        }
        MetadataCmd::Delete { p } => {
            let t = resolve(ctx, &p).await?;
            v2_only(&t, "kv metadata")?;
            let shown = t.shown("metadata");
            c.kv2_metadata_delete(&t.mount, &t.rel)
                .await
                .map_err(api(format!("Error deleting {shown}")))?;
            outln!("Success! Data deleted (if it existed) at: {shown}");
            Ok(())
        }
    }
}

/// `kv get` output: for v2 the secret path, metadata and data blocks.
fn print_kv_secret(ctx: &Ctx, t: &Target, env: &Envelope, shown: &str) -> CmdResult {
    // A wrapped answer holds no secret, only the wrapping token.
    if t.version != 2 || env.wrap_info.is_some() {
        return ctx.out.envelope(env);
    }
    let data = env
        .data
        .as_ref()
        .and_then(|d| d.get("data"))
        .cloned()
        .unwrap_or(Value::Null);
    if let Some(f) = &ctx.out.field {
        let rows = match &data {
            Value::Object(o) => o.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            _ => BTreeMap::new(),
        };
        return print_field(&rows, f);
    }
    if ctx.out.format == Format::Json {
        return output::print_json(env);
    }
    let meta = env
        .data
        .as_ref()
        .and_then(|d| d.get("metadata"))
        .cloned()
        .unwrap_or(Value::Null);
    let mut blocks = vec![
        ("Secret Path".to_string(), format!("{shown}\n")),
        ("Metadata".to_string(), kv_table(&metadata_rows(&meta))),
    ];
    match &data {
        Value::Object(o) => {
            let rows = o.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            blocks.push(("Data".to_string(), kv_table(&rows)));
        }
        _ => {
            out!("{}", sections(&blocks));
            eprintln!(
                "\nThis version of the secret is deleted or destroyed; see its metadata above."
            );
            return Err(CliError::Exit(2));
        }
    }
    out!("{}", sections(&blocks));
    Ok(())
}

/// `kv put`/`kv patch` output on v2: the new version's metadata.
fn print_written(ctx: &Ctx, env: Option<&Envelope>, shown: &str) -> CmdResult {
    let Some(env) = env else {
        output::written(&ctx.out, shown);
        return Ok(());
    };
    if env.wrap_info.is_some() {
        return ctx.out.envelope(env);
    }
    if ctx.out.field.is_some() || ctx.out.is_json() {
        return ctx.out.envelope(env);
    }
    let meta = env.data.clone().unwrap_or(Value::Null);
    let blocks = [
        ("Secret Path".to_string(), format!("{shown}\n")),
        ("Metadata".to_string(), kv_table(&metadata_rows(&meta))),
    ];
    out!("{}", sections(&blocks));
    Ok(())
}

/// Version metadata with vault's `n/a` for a version that was never deleted.
fn metadata_rows(meta: &Value) -> BTreeMap<String, Value> {
    let mut rows: BTreeMap<String, Value> = match meta {
        Value::Object(o) => o.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        _ => BTreeMap::new(),
    };
    if rows
        .get("deletion_time")
        .is_some_and(|v| v.as_str() == Some(""))
    {
        rows.insert("deletion_time".into(), json!("n/a"));
    }
    rows
}

/// Titled blocks separated by blank lines, each title centred over its
/// table; the first block (a bare path) gets the narrowest header, as in vault.
fn sections(blocks: &[(String, String)]) -> String {
    blocks
        .iter()
        .enumerate()
        .map(|(i, (title, body))| {
            let w = if i == 0 { 0 } else { width(body) };
            format!("{}\n{}", header(title, w), body)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_paths_under_their_mount() {
        assert_eq!(
            split_kv_path("secret/foo/bar", "secret/").unwrap(),
            "foo/bar"
        );
        assert_eq!(split_kv_path("/team/kv/a", "team/kv").unwrap(), "a");
        assert_eq!(split_kv_path("secret", "secret/").unwrap(), "");
        assert_eq!(split_kv_path("secret/", "secret/").unwrap(), "");
        assert!(split_kv_path("secretx/a", "secret/").is_err());
    }

    #[test]
    fn shows_v2_paths_with_segment() {
        let t = Target {
            mount: "secret".into(),
            rel: "foo".into(),
            version: 2,
        };
        assert_eq!(t.shown("data"), "secret/data/foo");
        let t = Target { version: 1, ..t };
        assert_eq!(t.shown("data"), "secret/foo");
    }

    #[test]
    fn rotate_paths_use_the_rotate_segment() {
        let t = Target {
            mount: "team/kv".into(),
            rel: "app/db".into(),
            version: 2,
        };
        assert_eq!(t.shown("rotate"), "team/kv/rotate/app/db");
    }

    #[test]
    fn metadata_shows_na_for_no_deletion() {
        let rows = metadata_rows(&json!({"deletion_time": "", "version": 1}));
        assert_eq!(rows["deletion_time"], json!("n/a"));
    }

    #[test]
    fn sections_have_centered_headers() {
        let s = sections(&[
            (
                "Secret Path".into(),
                "secret/data/a-long-path-here\n".into(),
            ),
            (
                "Data".into(),
                "Key    Value\n---    -----\na      b\n".into(),
            ),
        ]);
        assert!(s.starts_with("== Secret Path ==\nsecret"), "{s}");
        assert!(s.contains("\n\n=== Data ===\nKey"), "{s}");
    }
}
