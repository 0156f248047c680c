//! `tresor password generate POLICY`: a password from a password policy
//! (`sys/policies/password/<policy>/generate`), printed alone so that
//! scripts can capture it (`PW=$(tresor password generate db)`).

use serde_json::Value;

use super::error::{api, CliError};
use super::{CmdResult, Ctx};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum PasswordCmd {
    /// Generate a password from a password policy; prints only the password
    /// (the API's answer with -format=json).
    Generate {
        /// Name of the policy (sys/policies/password/<policy>).
        policy: String,
    },
}

pub(crate) async fn run(ctx: &Ctx, cmd: PasswordCmd) -> CmdResult {
    match cmd {
        PasswordCmd::Generate { policy } => {
            let name = policy.trim_matches('/');
            if name.is_empty() || name.contains('/') {
                return Err(CliError::Usage(format!(
                    "invalid password policy name {policy:?}"
                )));
            }
            let path = format!("sys/policies/password/{name}/generate");
            let env = ctx.client.read(&path).await.map_err(api(format!(
                "Error generating a password from policy {name}"
            )))?;
            let data = env.as_ref().and_then(|e| e.data.as_ref());
            if let (true, Some(d)) = (ctx.out.structured(), data) {
                return ctx.out.object(d);
            }
            let password = data
                .and_then(|d| d.get("password"))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    CliError::Msg(format!(
                        "Error generating a password from policy {name}: no password in the answer"
                    ))
                })?;
            outln!("{password}");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct T {
        #[command(subcommand)]
        cmd: PasswordCmd,
    }

    #[test]
    fn parses_generate() {
        let t = T::try_parse_from(["t", "generate", "db"]).unwrap();
        assert!(matches!(t.cmd, PasswordCmd::Generate { policy } if policy == "db"));
    }
}
