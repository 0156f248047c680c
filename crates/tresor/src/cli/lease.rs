//! `tresor lease lookup|renew|revoke`.

use super::error::{api, CliError};
use super::{CmdResult, Ctx};
use serde_json::json;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum LeaseCmd {
    /// Show a lease's expiry and TTL.
    Lookup { id: String },
    /// Extend a lease.
    Renew {
        id: String,
        /// Requested extension, e.g. 1h.
        #[arg(long)]
        increment: Option<String>,
    },
    /// Revoke a lease, or every lease under a prefix.
    Revoke {
        id: String,
        /// Treat ID as a prefix.
        #[arg(long)]
        prefix: bool,
        /// Remove the leases even if the backend fails to revoke (needs -prefix).
        #[arg(long, short = 'f')]
        force: bool,
        /// Wait for the revocation to finish.
        #[arg(long)]
        sync: bool,
    },
}

pub(crate) async fn run(ctx: &Ctx, cmd: LeaseCmd) -> CmdResult {
    let c = &ctx.client;
    match cmd {
        LeaseCmd::Lookup { id } => {
            let env = c
                .write("sys/leases/lookup", &json!({ "lease_id": id }))
                .await
                .map_err(api(format!("Error looking up lease {id}")))?
                .ok_or_else(|| {
                    CliError::Msg(format!("Error looking up lease {id}: empty answer"))
                })?;
            ctx.out.object(&env.data.unwrap_or_default())
        }
        LeaseCmd::Renew { id, increment } => {
            let mut body = json!({ "lease_id": id });
            if let Some(i) = increment {
                body["increment"] = json!(i);
            }
            let env = c
                .write("sys/leases/renew", &body)
                .await
                .map_err(api(format!("Error renewing lease {id}")))?
                .ok_or_else(|| CliError::Msg(format!("Error renewing lease {id}: empty answer")))?;
            ctx.out.envelope(&env)
        }
        LeaseCmd::Revoke {
            id,
            prefix,
            force,
            sync,
        } => {
            if force && !prefix {
                return Err(CliError::Usage("-force requires -prefix".into()));
            }
            let id_t = id.trim_start_matches('/');
            let res = if force {
                c.write(&format!("sys/leases/revoke-force/{id_t}"), &json!({}))
                    .await
            } else if prefix {
                c.write(
                    &format!("sys/leases/revoke-prefix/{id_t}"),
                    &json!({ "sync": sync }),
                )
                .await
            } else {
                c.write(
                    "sys/leases/revoke",
                    &json!({ "lease_id": id, "sync": sync }),
                )
                .await
            };
            res.map_err(api(format!("Error revoking lease {id}")))?;
            if force {
                outln!("Success! Force revoked any leases with prefix: {id}");
            } else if prefix {
                outln!("Success! Revoked any leases with prefix: {id}");
            } else {
                outln!("Success! Revoked lease: {id}");
            }
            Ok(())
        }
    }
}
