//! `tresor login` and `tresor token ...`.

use super::error::{api, CliError};
use super::input::{secret_prompt, string_pairs, Input};
use super::output::{fmt_duration, kv_table};
use super::{CmdResult, Ctx};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use tresor_api::Envelope;
use tresor_client::aws::{AwsCredentials, AwsIamLogin};

#[derive(Debug, clap::Args)]
pub(crate) struct LoginArgs {
    /// Token (method token), read from the terminal when missing or `-`.
    token: Option<String>,
    /// Auth method: token (default), userpass, ldap, approle, aws (IAM:
    /// role=R [header_value=V] [region=R]; signs with AWS_* credentials), or
    /// any other method whose login takes k=v fields.
    #[arg(long, default_value = "token")]
    method: String,
    /// Mount path of the auth method (default: the method name).
    #[arg(long)]
    path: Option<String>,
    /// Do not save the token in ~/.tresor-token.
    #[arg(long)]
    no_store: bool,
    /// Save the token but do not display it.
    #[arg(long)]
    no_print: bool,
    /// Print only the token, and do not save it (-field=token -no-store).
    #[arg(long)]
    token_only: bool,
    /// Extra k=v login fields (username=..., password=..., role_id=...).
    /// Flags may come after them (`login -method=approle role_id=.. -no-store`).
    fields: Vec<String>,
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum TokenCmd {
    /// Create a token.
    Create(CreateArgs),
    /// Show a token's properties (default: the current token).
    Lookup {
        token: Option<String>,
        /// Treat the argument as an accessor.
        #[arg(long)]
        accessor: bool,
    },
    /// Extend a token's lease (default: the current token).
    Renew {
        token: Option<String>,
        /// Requested extension, e.g. 1h.
        #[arg(long)]
        increment: Option<String>,
        #[arg(long)]
        accessor: bool,
    },
    /// Revoke a token and (unless -mode=orphan) its children.
    Revoke {
        token: Option<String>,
        #[arg(long)]
        accessor: bool,
        /// Revoke the current token.
        #[arg(long = "self")]
        self_: bool,
        /// `orphan` keeps the children alive.
        #[arg(long)]
        mode: Option<String>,
    },
    /// Show the capabilities of a token on a path.
    Capabilities {
        /// [TOKEN] PATH
        #[arg(num_args = 1..=2, required = true)]
        args: Vec<String>,
    },
}

#[derive(Debug, clap::Args)]
pub(crate) struct CreateArgs {
    /// Policies (repeatable or comma-separated).
    #[arg(long, value_delimiter = ',')]
    policy: Vec<String>,
    #[arg(long)]
    ttl: Option<String>,
    #[arg(long)]
    explicit_max_ttl: Option<String>,
    #[arg(long)]
    period: Option<String>,
    #[arg(long)]
    num_uses: Option<u64>,
    /// Create without a parent, so it outlives the creating token.
    #[arg(long)]
    orphan: bool,
    #[arg(long)]
    no_default_policy: bool,
    #[arg(long)]
    display_name: Option<String>,
    /// k=v, repeatable.
    #[arg(long)]
    metadata: Vec<String>,
    /// Bare or `=true`/`=false`, like a Go bool flag.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    renewable: Option<bool>,
    /// Create against a token role.
    #[arg(long)]
    role: Option<String>,
    /// Token type: service or batch.
    #[arg(long = "type")]
    token_type: Option<String>,
    /// Explicit token ID (root only).
    #[arg(long)]
    id: Option<String>,
}

fn create_body(a: &CreateArgs) -> Result<Value, CliError> {
    let mut b = Map::new();
    if !a.policy.is_empty() {
        b.insert("policies".into(), json!(a.policy));
    }
    let opt = |b: &mut Map<String, Value>, k: &str, v: &Option<String>| {
        if let Some(v) = v {
            b.insert(k.into(), json!(v));
        }
    };
    opt(&mut b, "ttl", &a.ttl);
    opt(&mut b, "explicit_max_ttl", &a.explicit_max_ttl);
    opt(&mut b, "period", &a.period);
    opt(&mut b, "display_name", &a.display_name);
    opt(&mut b, "type", &a.token_type);
    opt(&mut b, "id", &a.id);
    if let Some(n) = a.num_uses {
        b.insert("num_uses".into(), json!(n));
    }
    if a.orphan {
        b.insert("no_parent".into(), json!(true));
    }
    if a.no_default_policy {
        b.insert("no_default_policy".into(), json!(true));
    }
    if let Some(r) = a.renewable {
        b.insert("renewable".into(), json!(r));
    }
    if !a.metadata.is_empty() {
        b.insert("meta".into(), Value::Object(string_pairs(&a.metadata)?));
    }
    Ok(Value::Object(b))
}

pub(crate) async fn run(ctx: &Ctx, cmd: TokenCmd) -> CmdResult {
    let c = &ctx.client;
    match cmd {
        TokenCmd::Create(a) => {
            let path = match &a.role {
                Some(r) => format!("auth/token/create/{r}"),
                None => "auth/token/create".into(),
            };
            let env = c
                .write(&path, &create_body(&a)?)
                .await
                .map_err(api("Error creating token"))?;
            let env =
                env.ok_or_else(|| CliError::Msg("Error creating token: empty answer".into()))?;
            ctx.out.envelope(&env)
        }
        TokenCmd::Lookup { token, accessor } => {
            let env = match (token, accessor) {
                (Some(a), true) => {
                    c.write("auth/token/lookup-accessor", &json!({ "accessor": a }))
                        .await
                }
                (None, true) => {
                    return Err(CliError::Usage(
                        "-accessor needs an accessor argument".into(),
                    ))
                }
                (Some(t), false) => c.write("auth/token/lookup", &json!({ "token": t })).await,
                (None, false) => c.lookup_self().await.map(Some),
            }
            .map_err(api("Error looking up token"))?;
            let env =
                env.ok_or_else(|| CliError::Msg("Error looking up token: empty answer".into()))?;
            ctx.out.envelope(&env)
        }
        TokenCmd::Renew {
            token,
            increment,
            accessor,
        } => {
            let mut body = Map::new();
            if let Some(i) = &increment {
                body.insert("increment".into(), json!(i));
            }
            let env = match (token, accessor) {
                (Some(a), true) => {
                    body.insert("accessor".into(), json!(a));
                    c.write("auth/token/renew-accessor", &Value::Object(body))
                        .await
                }
                (None, true) => {
                    return Err(CliError::Usage(
                        "-accessor needs an accessor argument".into(),
                    ))
                }
                (Some(t), false) => {
                    body.insert("token".into(), json!(t));
                    c.write("auth/token/renew", &Value::Object(body)).await
                }
                (None, false) => c.renew_self(increment.as_deref()).await.map(Some),
            }
            .map_err(api("Error renewing token"))?;
            let env =
                env.ok_or_else(|| CliError::Msg("Error renewing token: empty answer".into()))?;
            ctx.out.envelope(&env)
        }
        TokenCmd::Revoke {
            token,
            accessor,
            self_,
            mode,
        } => {
            let orphan = match mode.as_deref() {
                None | Some("") | Some("path") => false,
                Some("orphan") => true,
                Some(m) => return Err(CliError::Usage(format!("unknown -mode {m:?}: use orphan"))),
            };
            let res = match (token, self_, accessor) {
                (None, true, false) => c.write("auth/token/revoke-self", &json!({})).await,
                (Some(a), false, true) => {
                    c.write("auth/token/revoke-accessor", &json!({ "accessor": a }))
                        .await
                }
                (Some(t), false, false) if orphan => {
                    c.write("auth/token/revoke-orphan", &json!({ "token": t }))
                        .await
                }
                (Some(t), false, false) => {
                    c.write("auth/token/revoke", &json!({ "token": t })).await
                }
                _ => {
                    return Err(CliError::Usage(
                        "give exactly one of: TOKEN, -accessor ACCESSOR, -self".into(),
                    ))
                }
            };
            res.map_err(api("Error revoking token"))?;
            outln!("Success! Revoked token (if it existed)");
            Ok(())
        }
        TokenCmd::Capabilities { args } => {
            let (token, path) = match args.as_slice() {
                [p] => (None, p.clone()),
                [t, p] => (Some(t.clone()), p.clone()),
                _ => {
                    return Err(CliError::Usage(
                        "usage: tresor token capabilities [TOKEN] PATH".into(),
                    ))
                }
            };
            let env = match &token {
                Some(t) => {
                    c.write("sys/capabilities", &json!({ "token": t, "paths": [path] }))
                        .await
                }
                None => {
                    c.write("sys/capabilities-self", &json!({ "paths": [path] }))
                        .await
                }
            }
            .map_err(api("Error checking capabilities"))?;
            let data = env.and_then(|e| e.data).unwrap_or(Value::Null);
            let caps = data
                .get(path.as_str())
                .or_else(|| data.get("capabilities"))
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            if ctx.out.is_json() {
                return super::output::print_json(&caps);
            }
            let mut caps = caps;
            caps.sort();
            outln!(
                "{}",
                if caps.is_empty() {
                    "deny".to_string()
                } else {
                    caps.join(", ")
                }
            );
            Ok(())
        }
    }
}

pub(crate) async fn login(ctx: &Ctx, a: LoginArgs) -> CmdResult {
    if a.method == "token" {
        let token = match a.token.as_deref() {
            None | Some("-") => secret_prompt("Token (will be hidden): ")?,
            Some(t) => t.to_string(),
        };
        // Verify before saving, so a typo does not replace a working token.
        let env = ctx
            .client
            .with_token(&token)
            .lookup_self()
            .await
            .map_err(|e| {
                if e.status() == Some(403) {
                    // The only reason lookup-self refuses a token.
                    CliError::Msg(
                        "Error authenticating: the token is not valid (mistyped, expired or \
                         revoked); nothing was saved"
                            .into(),
                    )
                } else {
                    api("Error authenticating")(e)
                }
            })?;
        let rows = token_rows_from_lookup(&token, &env);
        return finish_login(ctx, &a, &token, &rows, &env);
    }
    let mount = a.path.clone().unwrap_or_else(|| a.method.clone());
    let mut fields = a.fields.clone();
    if let Some(t) = &a.token {
        fields.insert(0, t.clone());
    }
    let body = Input::new(&mut std::io::stdin()).parse(&fields)?;
    let env = if a.method == "aws" {
        let (login, creds, mount_field) = aws_login_args(body, |k| std::env::var(k).ok())?;
        // `mount=` is how Vault's CLI handler names the mount; -path wins.
        let mount = match (&a.path, mount_field) {
            (None, Some(m)) => m,
            _ => mount,
        };
        ctx.client
            .login_aws_iam(&mount, &login, &creds)
            .await
            .map_err(api("Error authenticating"))?
    } else {
        login_write(ctx, &a, &mount, body).await?
    };
    let auth = env
        .auth
        .clone()
        .ok_or_else(|| CliError::Msg("Error authenticating: no auth in answer".into()))?;
    let rows = super::output::secret_rows(&env);
    finish_login(ctx, &a, &auth.client_token, &rows, &env)
}

/// The plain login: the k=v fields written to the method's login path.
async fn login_write(
    ctx: &Ctx,
    a: &LoginArgs,
    mount: &str,
    mut body: Map<String, Value>,
) -> Result<Envelope, CliError> {
    let path = match a.method.as_str() {
        "userpass" | "ldap" | "okta" | "radius" => {
            let user = body
                .remove("username")
                .and_then(|v| v.as_str().map(str::to_string))
                .ok_or_else(|| {
                    CliError::Usage(format!("-method={} needs username=NAME", a.method))
                })?;
            if !body.contains_key("password") {
                body.insert(
                    "password".into(),
                    json!(secret_prompt("Password (will be hidden): ")?),
                );
            }
            format!("auth/{}/login/{user}", mount.trim_matches('/'))
        }
        _ => format!("auth/{}/login", mount.trim_matches('/')),
    };
    ctx.client
        .with_token("")
        .write(&path, &Value::Object(body))
        .await
        .map_err(api("Error authenticating"))?
        .ok_or_else(|| CliError::Msg("Error authenticating: empty answer".into()))
}

/// The k=v fields of `login -method=aws`, as Vault's CLI handler reads
/// them: `role`, `header_value`, `region` (`auto`: from AWS_REGION or
/// AWS_DEFAULT_REGION), `mount`, and explicit credentials
/// (`aws_access_key_id`, `aws_secret_access_key`, `aws_security_token`),
/// else the AWS_* environment (read through `env`). Returns the mount given
/// as `mount=`, if any.
fn aws_login_args(
    mut body: Map<String, Value>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(AwsIamLogin, AwsCredentials, Option<String>), CliError> {
    let mut take = |k: &str| -> Result<Option<String>, CliError> {
        match body.remove(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(CliError::Usage(format!(
                "-method=aws: {k} must be a string"
            ))),
        }
    };
    let role = take("role")?;
    let server_id = take("header_value")?;
    let mut region = take("region")?;
    let mount = take("mount")?;
    let key_id = take("aws_access_key_id")?;
    let secret = take("aws_secret_access_key")?;
    let session = take("aws_security_token")?;
    // Accepted for compatibility with Vault's handler; we log nothing here.
    take("log_level")?;
    if let Some(unknown) = body.keys().next() {
        return Err(CliError::Usage(format!(
            "-method=aws: unknown field {unknown:?}; expected role, header_value, region, mount, \
             aws_access_key_id, aws_secret_access_key, aws_security_token"
        )));
    }
    if region.as_deref() == Some("auto") {
        region = env("AWS_REGION")
            .filter(|r| !r.is_empty())
            .or_else(|| env("AWS_DEFAULT_REGION").filter(|r| !r.is_empty()));
    }
    let creds = match (key_id, secret) {
        (Some(id), Some(secret)) => AwsCredentials::new(id, secret, session),
        (None, None) => AwsCredentials::from_env_with(env).map_err(api("Error authenticating"))?,
        _ => {
            return Err(CliError::Usage(
                "-method=aws: give both aws_access_key_id and aws_secret_access_key, or neither \
                 (to use AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
                    .into(),
            ))
        }
    };
    let login = AwsIamLogin {
        role,
        server_id,
        region,
    };
    Ok((login, creds, mount))
}

fn finish_login(
    ctx: &Ctx,
    a: &LoginArgs,
    token: &str,
    rows: &BTreeMap<String, Value>,
    env: &Envelope,
) -> CmdResult {
    // Vault: -token-only is a shortcut for -field=token -no-store.
    if a.token_only {
        outln!("{token}");
        return Ok(());
    }
    if !a.no_store {
        tresor_client::store_token(token)
            .map_err(|e| CliError::Msg(format!("Error saving token: {e}")))?;
    }
    if a.no_print {
        return Ok(());
    }
    if let Some(f) = &ctx.out.field {
        return super::output::print_field(rows, f);
    }
    if ctx.out.is_json() {
        return super::output::print_json(env);
    }
    if a.no_store {
        outln!("Success! You are now authenticated. The token was not stored (-no-store).\n");
    } else {
        outln!(
            "Success! You are now authenticated. The token information displayed below\n\
             is already stored in ~/.tresor-token. You do NOT need to run \"tresor login\"\n\
             again. Future requests will automatically use this token.\n"
        );
    }
    out!("{}", kv_table(rows));
    Ok(())
}

/// The login table for a token checked with lookup-self (whose answer is
/// token data, not an `auth` block).
fn token_rows_from_lookup(token: &str, env: &Envelope) -> BTreeMap<String, Value> {
    let d = env.data.clone().unwrap_or(Value::Null);
    let get = |k: &str| d.get(k).cloned().unwrap_or(Value::Null);
    let ttl = d.get("ttl").and_then(Value::as_u64).unwrap_or(0);
    let mut rows = BTreeMap::new();
    rows.insert("token".into(), json!(token));
    rows.insert("token_accessor".into(), get("accessor"));
    rows.insert(
        "token_duration".into(),
        json!(if ttl == 0 {
            "∞".into()
        } else {
            fmt_duration(ttl)
        }),
    );
    rows.insert(
        "token_renewable".into(),
        d.get("renewable").cloned().unwrap_or(json!(false)),
    );
    rows.insert(
        "token_policies".into(),
        d.get("policies").cloned().unwrap_or(json!([])),
    );
    rows.insert(
        "identity_policies".into(),
        d.get("identity_policies").cloned().unwrap_or(json!([])),
    );
    rows.insert(
        "policies".into(),
        d.get("policies").cloned().unwrap_or(json!([])),
    );
    if let Some(Value::Object(m)) = d.get("meta") {
        for (k, v) in m {
            rows.insert(format!("token_meta_{k}"), v.clone());
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_body_maps_vault_flags() {
        let a = CreateArgs {
            policy: vec!["a".into(), "b".into()],
            ttl: Some("1h".into()),
            explicit_max_ttl: None,
            period: None,
            num_uses: Some(3),
            orphan: true,
            no_default_policy: false,
            display_name: None,
            metadata: vec!["team=x".into()],
            renewable: Some(false),
            role: None,
            token_type: None,
            id: None,
        };
        assert_eq!(
            create_body(&a).unwrap(),
            json!({"policies": ["a", "b"], "ttl": "1h", "num_uses": 3, "no_parent": true, "renewable": false, "meta": {"team": "x"}})
        );
    }

    fn fields(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn aws_login_fields_like_vaults_handler() {
        let env = |k: &str| match k {
            "AWS_ACCESS_KEY_ID" => Some("AKIDENV".to_string()),
            "AWS_SECRET_ACCESS_KEY" => Some("env-secret".to_string()),
            "AWS_REGION" => Some("eu-central-1".to_string()),
            _ => None,
        };
        let (login, creds, mount) = aws_login_args(
            fields(json!({"role": "dev", "header_value": "tresor.example.com", "mount": "aws2"})),
            env,
        )
        .unwrap();
        assert_eq!(login.role.as_deref(), Some("dev"));
        assert_eq!(login.server_id.as_deref(), Some("tresor.example.com"));
        assert_eq!(login.region(), "us-east-1");
        assert_eq!(creds.access_key_id(), "AKIDENV");
        assert_eq!(mount.as_deref(), Some("aws2"));

        // Explicit credentials win over the environment; region=auto reads it.
        let (login, creds, _) = aws_login_args(
            fields(json!({"aws_access_key_id": "AKIDARG", "aws_secret_access_key": "s", "region": "auto"})),
            env,
        )
        .unwrap();
        assert_eq!(creds.access_key_id(), "AKIDARG");
        assert_eq!(login.region(), "eu-central-1");

        for bad in [
            json!({"role": "dev", "headervalue": "x"}),
            json!({"aws_access_key_id": "AKIDARG"}),
            json!({"role": ["dev"]}),
        ] {
            assert!(
                matches!(
                    aws_login_args(fields(bad.clone()), env),
                    Err(CliError::Usage(_))
                ),
                "{bad}"
            );
        }
        assert!(aws_login_args(fields(json!({"role": "dev"})), |_| None).is_err());
    }

    #[test]
    fn login_rows_from_lookup() {
        let env = Envelope {
            data: Some(
                json!({"accessor": "acc", "ttl": 0, "policies": ["root"], "meta": {"a": "b"}}),
            ),
            ..Default::default()
        };
        let rows = token_rows_from_lookup("root", &env);
        assert_eq!(rows["token"], json!("root"));
        assert_eq!(rows["token_duration"], json!("∞"));
        assert_eq!(rows["token_meta_a"], json!("b"));
    }
}
