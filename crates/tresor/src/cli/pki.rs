//! `tresor pki issue ROLE CN --out-dir DIR`: issue a certificate and write
//! `cert.pem`, `key.pem` (0600) and `ca.pem`.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::error::{api, CliError};
use super::{CmdResult, Ctx};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum PkiCmd {
    /// Issue a certificate from a role and write it, its key and the CA.
    Issue(IssueArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct IssueArgs {
    /// Role to issue from.
    role: String,
    /// Common name of the certificate.
    common_name: String,
    /// Mount path of the PKI engine.
    #[arg(long, default_value = "pki")]
    mount: String,
    /// Requested lifetime, e.g. 24h.
    #[arg(long)]
    ttl: Option<String>,
    /// Extra DNS names or emails, comma-separated.
    #[arg(long)]
    alt_names: Option<String>,
    /// Extra IP SANs, comma-separated.
    #[arg(long)]
    ip_sans: Option<String>,
    /// Directory for cert.pem, key.pem and ca.pem (created if missing).
    #[arg(long)]
    out_dir: PathBuf,
}

pub(crate) async fn run(ctx: &Ctx, cmd: PkiCmd) -> CmdResult {
    match cmd {
        PkiCmd::Issue(a) => issue(ctx, a).await,
    }
}

async fn issue(ctx: &Ctx, a: IssueArgs) -> CmdResult {
    let mut body = json!({ "common_name": a.common_name });
    if let Some(t) = &a.ttl {
        body["ttl"] = json!(t);
    }
    if let Some(n) = &a.alt_names {
        body["alt_names"] = json!(n);
    }
    if let Some(n) = &a.ip_sans {
        body["ip_sans"] = json!(n);
    }
    let mount = a.mount.trim_matches('/');
    let path = format!("{mount}/issue/{}", a.role);
    let env = ctx
        .client
        .write(&path, &body)
        .await
        .map_err(api(format!("Error issuing from {path}")))?
        .ok_or_else(|| CliError::Msg(format!("Error issuing from {path}: empty answer")))?;
    let data = env.data.unwrap_or_default();
    let field = |k: &str| -> Result<String, CliError> {
        data.get(k)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| CliError::Msg(format!("Error issuing from {path}: answer has no {k}")))
    };
    let cert = field("certificate")?;
    let key = field("private_key")?;
    let chain = match data.get("ca_chain").and_then(Value::as_array) {
        Some(c) if !c.is_empty() => c
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join("\n"),
        _ => field("issuing_ca")?,
    };
    std::fs::create_dir_all(&a.out_dir)
        .map_err(|e| CliError::Msg(format!("creating {}: {e}", a.out_dir.display())))?;
    write_file(&a.out_dir.join("key.pem"), &key, true)?;
    write_file(&a.out_dir.join("cert.pem"), &cert, false)?;
    write_file(&a.out_dir.join("ca.pem"), &chain, false)?;
    outln!(
        "Wrote cert.pem, key.pem and ca.pem to {} (serial {})",
        a.out_dir.display(),
        field("serial_number").unwrap_or_default()
    );
    Ok(())
}

/// Writes `text` with a final newline; a private key is created 0600 from
/// the start, so it is never readable by others even for a moment.
fn write_file(path: &Path, text: &str, private: bool) -> Result<(), CliError> {
    let err = |e: std::io::Error| CliError::Msg(format!("writing {}: {e}", path.display()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        if private {
            opts.mode(0o600);
        }
        let mut f = opts.open(path).map_err(err)?;
        if private {
            // An existing file keeps its old mode through open(); fix it.
            f.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(err)?;
        }
        f.write_all(format!("{}\n", text.trim_end()).as_bytes())
            .map_err(err)?;
    }
    #[cfg(not(unix))]
    {
        let _ = private;
        let mut f = opts.open(path).map_err(err)?;
        f.write_all(format!("{}\n", text.trim_end()).as_bytes())
            .map_err(err)?;
    }
    Ok(())
}
