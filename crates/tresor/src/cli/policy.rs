//! `tresor policy ...`; `fmt` works offline on the file.

use super::error::{api, CliError};
use super::input::read_file;
use super::output::print_json;
use super::{CmdResult, Ctx};
use hcl::format::Format as _;
use serde_json::{json, Value};
use std::io::Read;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum PolicyCmd {
    /// List policy names.
    List,
    /// Print a policy's rules.
    Read { name: String },
    /// Upload a policy from FILE (or `-` for stdin).
    Write { name: String, file: String },
    /// Delete a policy.
    Delete { name: String },
    /// Rewrite an HCL policy file in canonical format (`-`: stdin to stdout).
    Fmt(FmtArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct FmtArgs {
    file: String,
}

fn read_source(file: &str) -> Result<String, CliError> {
    if file == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| CliError::Msg(format!("reading stdin: {e}")))?;
        Ok(s)
    } else {
        read_file(file)
    }
}

/// Parse and re-print HCL; a syntax error is reported, nothing rewritten.
fn format_hcl(src: &str) -> Result<String, CliError> {
    let body =
        hcl::parse(src).map_err(|e| CliError::Msg(format!("failed to parse policy: {e}")))?;
    // Vault's canonical policy style keeps capability lists on one line.
    let mut f = hcl::format::Formatter::builder()
        .compact_arrays(true)
        .build_vec();
    let mut out = body
        .format_string(&mut f)
        .map_err(|e| CliError::Msg(format!("failed to format policy: {e}")))?;
    if !out.ends_with('\n') {
        out.push('\n');
    }
    Ok(out)
}

pub(crate) fn fmt(a: &FmtArgs) -> CmdResult {
    let src = read_source(&a.file)?;
    let out = format_hcl(&src)?;
    if a.file == "-" {
        out!("{out}");
        return Ok(());
    }
    std::fs::write(&a.file, out).map_err(|e| CliError::Msg(format!("writing {}: {e}", a.file)))?;
    outln!("Success! Formatted policy: {}", a.file);
    Ok(())
}

pub(crate) async fn run(ctx: &Ctx, cmd: PolicyCmd) -> CmdResult {
    let c = &ctx.client;
    match cmd {
        PolicyCmd::List => {
            let env = c
                .list("sys/policies/acl")
                .await
                .map_err(api("Error listing policies"))?;
            let mut names: Vec<String> = match env
                .and_then(|e| e.data)
                .and_then(|d| d.get("keys").cloned())
            {
                Some(Value::Array(a)) => a
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect(),
                // Older servers only have sys/policy.
                _ => {
                    let env = c
                        .read("sys/policy")
                        .await
                        .map_err(api("Error listing policies"))?;
                    let d = env.and_then(|e| e.data).unwrap_or(Value::Null);
                    d.get("policies")
                        .or_else(|| d.get("keys"))
                        .and_then(Value::as_array)
                        .map(|a| {
                            a.iter()
                                .filter_map(Value::as_str)
                                .map(str::to_string)
                                .collect()
                        })
                        .unwrap_or_default()
                }
            };
            names.sort();
            if ctx.out.is_json() {
                return print_json(&names);
            }
            for n in names {
                outln!("{n}");
            }
            Ok(())
        }
        PolicyCmd::Read { name } => {
            let env = c
                .read(&format!("sys/policies/acl/{name}"))
                .await
                .map_err(api(format!("Error reading policy named {name}")))?;
            let Some(env) = env else {
                eprintln!("No policy named: {name}");
                return Err(CliError::Exit(2));
            };
            if ctx.out.is_json() || ctx.out.field.is_some() {
                return ctx.out.envelope(&env);
            }
            let d = env.data.unwrap_or(Value::Null);
            let rules = d
                .get("policy")
                .or_else(|| d.get("rules"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            outln!("{}", rules.trim_end());
            Ok(())
        }
        PolicyCmd::Write { name, file } => {
            let rules = read_source(&file)?;
            c.write(
                &format!("sys/policies/acl/{name}"),
                &json!({ "policy": rules }),
            )
            .await
            .map_err(api(format!("Error uploading policy {name}")))?;
            outln!("Success! Uploaded policy: {name}");
            Ok(())
        }
        PolicyCmd::Delete { name } => {
            c.delete(&format!("sys/policies/acl/{name}"))
                .await
                .map_err(api(format!("Error deleting {name}")))?;
            outln!("Success! Deleted policy: {name}");
            Ok(())
        }
        // Handled in cli::main without a client.
        PolicyCmd::Fmt(a) => fmt(&a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_policy_hcl() {
        let src = "path \"secret/*\" {capabilities=[\"read\",\"list\"]}\n";
        let out = format_hcl(src).unwrap();
        assert!(out.contains("path \"secret/*\" {"), "{out}");
        assert!(out.contains("capabilities = [\"read\", \"list\"]"), "{out}");
        assert!(format_hcl("path {").is_err());
    }
}
