//! `tresor approle rotate-secret-id ROLE`: the one AppRole chore deployment
//! scripts run, so it prints nothing but the new secret ID.

use super::error::{api, CliError};
use super::{CmdResult, Ctx};
use serde_json::{json, Value};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum ApproleCmd {
    /// Generate a new secret ID for ROLE and print only it (with -wrap-ttl,
    /// only the wrapping token); with --destroy-old-accessor, destroy the
    /// previous one afterwards.
    RotateSecretId(RotateArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct RotateArgs {
    role: String,
    /// Path the approle method is mounted at (without `auth/`).
    #[arg(long, default_value = "approle")]
    mount: String,
    /// Accessor of the secret ID to destroy once the new one exists.
    #[arg(long)]
    destroy_old_accessor: Option<String>,
}

pub(crate) async fn run(ctx: &Ctx, c: ApproleCmd) -> CmdResult {
    match c {
        ApproleCmd::RotateSecretId(a) => rotate(ctx, a).await,
    }
}

async fn rotate(ctx: &Ctx, a: RotateArgs) -> CmdResult {
    let mount = a.mount.trim_matches('/');
    let base = format!("auth/{mount}/role/{}", a.role);
    let env = ctx
        .client
        .write(&format!("{base}/secret-id"), &json!({}))
        .await
        .map_err(api(format!(
            "Error generating a secret ID for role {:?}",
            a.role
        )))?
        .ok_or_else(|| CliError::Msg("Error generating a secret ID: empty answer".into()))?;
    // With -wrap-ttl the answer is a wrapping token around the secret ID:
    // that token is what the script hands on, so it is what we print.
    let printed = match &env.wrap_info {
        Some(w) => w.token.clone(),
        None => env
            .data
            .as_ref()
            .and_then(|d| d.get("secret_id"))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                CliError::Msg("Error generating a secret ID: no secret_id in the answer".into())
            })?
            .to_string(),
    };
    let new_accessor = env
        .data
        .as_ref()
        .and_then(|d| d.get("secret_id_accessor"))
        .and_then(Value::as_str)
        .unwrap_or("(wrapped)")
        .to_string();
    // The old secret ID goes only after the new one exists, so a failure
    // never leaves the application with none.
    if let Some(old) = &a.destroy_old_accessor {
        ctx.client
            .without_wrap()
            .write(
                &format!("{base}/secret-id-accessor/destroy"),
                &json!({ "secret_id_accessor": old }),
            )
            .await
            .map_err(api(format!(
                "Error destroying the old secret ID (the new one, accessor {new_accessor}, was created and not printed)"
            )))?;
    }
    if ctx.out.structured() {
        return ctx.out.envelope(&env);
    }
    outln!("{printed}");
    Ok(())
}
