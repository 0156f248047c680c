//! `tresor transit encrypt|decrypt`: the Transit engine for humans. The
//! API takes and gives base64; these commands take and print text, and do
//! the base64 on the user's side.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use clap::Subcommand;
use serde_json::{json, Value};

use super::error::{api, CliError};
use super::{CmdResult, Ctx};

#[derive(Debug, Subcommand)]
pub(crate) enum TransitCmd {
    /// Encrypt text with a named key; prints the ciphertext (vault:v1:...),
    /// or the API's answer with -format=json.
    Encrypt(EncryptArgs),
    /// Decrypt a ciphertext with a named key; prints the text, or the API's
    /// answer (base64 plaintext) with -format=json.
    Decrypt(DecryptArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct EncryptArgs {
    /// Key name (created on first use, as Vault's encrypt does).
    key: String,
    /// The text to encrypt.
    text: String,
    /// Mount path of the transit engine.
    #[arg(long, default_value = "transit")]
    mount: String,
    /// Key-derivation context (plain text), for derived keys.
    #[arg(long)]
    context: Option<String>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct DecryptArgs {
    /// Key name.
    key: String,
    /// The ciphertext, as encrypt printed it.
    ciphertext: String,
    /// Mount path of the transit engine.
    #[arg(long, default_value = "transit")]
    mount: String,
    /// Key-derivation context (plain text), for derived keys.
    #[arg(long)]
    context: Option<String>,
}

pub(crate) async fn run(ctx: &Ctx, cmd: TransitCmd) -> CmdResult {
    match cmd {
        TransitCmd::Encrypt(a) => {
            let mut body = json!({ "plaintext": B64.encode(a.text.as_bytes()) });
            if let Some(c) = &a.context {
                body["context"] = json!(B64.encode(c.as_bytes()));
            }
            let path = format!("{}/encrypt/{}", a.mount.trim_matches('/'), a.key);
            let data = call(
                ctx,
                &path,
                &body,
                &format!("Error encrypting with key {}", a.key),
            )
            .await?;
            if ctx.out.structured() {
                return ctx.out.object(&data);
            }
            let ct = field(&data, "ciphertext")?;
            outln!("{ct}");
            Ok(())
        }
        TransitCmd::Decrypt(a) => {
            let mut body = json!({ "ciphertext": a.ciphertext });
            if let Some(c) = &a.context {
                body["context"] = json!(B64.encode(c.as_bytes()));
            }
            let path = format!("{}/decrypt/{}", a.mount.trim_matches('/'), a.key);
            let data = call(
                ctx,
                &path,
                &body,
                &format!("Error decrypting with key {}", a.key),
            )
            .await?;
            // -format=json and -field show the API's answer (base64 plaintext).
            if ctx.out.structured() {
                return ctx.out.object(&data);
            }
            let bytes = B64.decode(field(&data, "plaintext")?).map_err(|_| {
                CliError::Msg("the server answered a plaintext that is not base64".into())
            })?;
            match String::from_utf8(bytes) {
                Ok(text) => outln!("{text}"),
                // Not text: print what the API gave rather than mangle it.
                Err(e) => outln!("{}", B64.encode(e.into_bytes())),
            }
            Ok(())
        }
    }
}

async fn call(ctx: &Ctx, path: &str, body: &Value, context: &str) -> Result<Value, CliError> {
    ctx.client
        .write(path, body)
        .await
        .map_err(api(context))?
        .and_then(|env| env.data)
        .ok_or_else(|| CliError::Msg(format!("{context}: the server answered no data")))
}

fn field<'a>(data: &'a Value, name: &str) -> Result<&'a str, CliError> {
    data.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| CliError::Msg(format!("the server's answer has no {name}")))
}
