//! `tresor read|write|delete|list PATH`: raw access to any API path.

use super::error::{api, CliError};
use super::input::Input;
use super::{CmdResult, Ctx};
use serde_json::Value;

#[derive(Debug, clap::Args)]
pub(crate) struct PathArgs {
    path: String,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ReadArgs {
    path: String,
    /// k=v pairs sent as query parameters.
    params: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct WriteArgs {
    path: String,
    /// k=v, k=@file, k=- (stdin), or - for a JSON object on stdin.
    data: Vec<String>,
    /// Allow writing with no data.
    #[arg(long, short = 'f')]
    force: bool,
}

/// `?k=v&...`, percent-encoding what a URL query cannot carry raw.
fn query_string(params: &[String]) -> Result<String, CliError> {
    let mut parts = Vec::new();
    for p in params {
        let (k, v) = p.split_once('=').ok_or_else(|| {
            CliError::Usage(format!("invalid parameter {p:?}: expected key=value"))
        })?;
        parts.push(format!("{}={}", encode(k), encode(v)));
    }
    Ok(if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    })
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub(crate) async fn read(ctx: &Ctx, a: ReadArgs) -> CmdResult {
    let path = format!("{}{}", a.path, query_string(&a.params)?);
    let env = ctx
        .client
        .read(&path)
        .await
        .map_err(api(format!("Error reading {}", a.path)))?;
    match env {
        Some(env) => ctx.out.envelope(&env),
        None => {
            eprintln!("No value found at {}", a.path);
            Err(CliError::Exit(2))
        }
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct UnwrapArgs {
    /// The wrapping token; without it, the current token is the wrapping token.
    token: Option<String>,
}

/// `tresor unwrap [TOKEN]`: the wrapping token authenticates its own
/// unwrap, so no other token is needed.
pub(crate) async fn unwrap(ctx: &Ctx, a: UnwrapArgs) -> CmdResult {
    // Like Vault's CLI: with a token of our own, the wrapping token goes in
    // the body (a spent one then reads "not valid" rather than 403);
    // without, the wrapping token authenticates its own unwrap.
    let (client, body) = match (&a.token, ctx.client.token()) {
        (Some(t), Some(_)) => (ctx.client.clone(), serde_json::json!({ "token": t })),
        (Some(t), None) => (ctx.client.with_token(t), serde_json::json!({})),
        (None, _) => (ctx.client.clone(), serde_json::json!({})),
    };
    let env = match (client.write("sys/wrapping/unwrap", &body).await, &a.token) {
        // Our own token was refused (a stale ~/.tresor-token, say): the
        // wrapping token can still authenticate its own unwrap.
        (Err(e), Some(t)) if e.status() == Some(403) && ctx.client.token().is_some() => ctx
            .client
            .with_token(t)
            .write("sys/wrapping/unwrap", &serde_json::json!({}))
            .await
            .map_err(api("Error unwrapping"))?,
        (res, _) => res.map_err(api("Error unwrapping"))?,
    };
    match env {
        Some(env) => ctx.out.envelope(&env),
        None => Err(CliError::Msg("Error unwrapping: empty answer".into())),
    }
}

pub(crate) async fn write(ctx: &Ctx, a: WriteArgs) -> CmdResult {
    if a.data.is_empty() && !a.force {
        return Err(CliError::Usage(
            "Must supply data or use -force: tresor write PATH key=value ...".into(),
        ));
    }
    let body = Value::Object(Input::new(&mut std::io::stdin()).parse(&a.data)?);
    let env = ctx
        .client
        .write(&a.path, &body)
        .await
        .map_err(api(format!("Error writing data to {}", a.path)))?;
    super::output::write_answer(&ctx.out, env.as_ref(), &a.path)
}

pub(crate) async fn delete(ctx: &Ctx, a: PathArgs) -> CmdResult {
    ctx.client
        .delete(&a.path)
        .await
        .map_err(api(format!("Error deleting {}", a.path)))?;
    outln!("Success! Data deleted (if it existed) at: {}", a.path);
    Ok(())
}

pub(crate) async fn list(ctx: &Ctx, a: PathArgs) -> CmdResult {
    let env = ctx
        .client
        .list(&a.path)
        .await
        .map_err(api(format!("Error listing {}", a.path)))?;
    match env {
        Some(env) if env.data.as_ref().and_then(|d| d.get("keys")).is_some() => ctx.out.keys(&env),
        _ => {
            eprintln!("No value found at {}", a.path);
            Err(CliError::Exit(2))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_query_strings() {
        assert_eq!(query_string(&[]).unwrap(), "");
        assert_eq!(
            query_string(&["version=2".into(), "a b=c&d".into()]).unwrap(),
            "?version=2&a%20b=c%26d"
        );
        assert!(query_string(&["x".into()]).is_err());
    }
}
