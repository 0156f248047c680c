//! `tresor status` and `tresor operator ...`: init, unseal, seal, rotate,
//! key-status, rekey, generate-root.

use super::error::{api, CliError};
use super::input::secret_prompt;
use super::output::{columns_table, print_json};
use super::{CmdResult, Ctx};
use base64::Engine as _;
use serde_json::json;
use tresor_api::sys::{GenerateRootStatus, InitRequest, RekeyStatus, SealStatus};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum OperatorCmd {
    /// Initialize a new server: prints the unseal keys and root token.
    Init {
        #[arg(long, default_value_t = 5)]
        key_shares: u8,
        #[arg(long, default_value_t = 3)]
        key_threshold: u8,
        /// Only report whether the server is initialized (exit 2 if not).
        #[arg(long)]
        status: bool,
    },
    /// Submit an unseal key share (hidden prompt when KEY is omitted).
    Unseal {
        key: Option<String>,
        /// Discard the shares submitted so far.
        #[arg(long)]
        reset: bool,
    },
    /// Seal the server.
    Seal,
    /// Rotate the barrier encryption key.
    Rotate,
    /// Show the current barrier key term.
    KeyStatus,
    /// Replace the unseal keys.
    Rekey(RekeyArgs),
    /// Generate a new root token from unseal key shares.
    GenerateRoot(GenerateRootArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct RekeyArgs {
    /// Unseal key share (prompted for when omitted).
    key: Option<String>,
    #[arg(long)]
    init: bool,
    #[arg(long)]
    cancel: bool,
    #[arg(long)]
    status: bool,
    /// Nonce of the rekey in progress.
    #[arg(long)]
    nonce: Option<String>,
    #[arg(long, default_value_t = 5)]
    key_shares: u8,
    #[arg(long, default_value_t = 3)]
    key_threshold: u8,
}

#[derive(Debug, clap::Args)]
pub(crate) struct GenerateRootArgs {
    /// Unseal key share (prompted for when omitted).
    key: Option<String>,
    #[arg(long)]
    init: bool,
    #[arg(long)]
    cancel: bool,
    #[arg(long)]
    status: bool,
    #[arg(long)]
    nonce: Option<String>,
    /// One-time password that encodes the new root token.
    #[arg(long)]
    otp: Option<String>,
    #[arg(long)]
    pgp_key: Option<String>,
    /// Decode this encoded root token with -otp.
    #[arg(long)]
    decode: Option<String>,
}

fn seal_rows(s: &SealStatus) -> Vec<Vec<String>> {
    let mut rows = vec![
        vec!["Seal Type".into(), s.seal_type.clone()],
        vec!["Initialized".into(), s.initialized.to_string()],
        vec!["Sealed".into(), s.sealed.to_string()],
        vec!["Total Shares".into(), s.n.to_string()],
        vec!["Threshold".into(), s.t.to_string()],
    ];
    if s.sealed {
        rows.push(vec![
            "Unseal Progress".into(),
            format!("{}/{}", s.progress, s.t),
        ]);
        rows.push(vec![
            "Unseal Nonce".into(),
            if s.nonce.is_empty() {
                "n/a".into()
            } else {
                s.nonce.clone()
            },
        ]);
    }
    rows.push(vec!["Version".into(), s.version.clone()]);
    rows.push(vec!["Build Date".into(), s.build_date.clone()]);
    rows.push(vec!["Storage Type".into(), s.storage_type.clone()]);
    if let Some(n) = &s.cluster_name {
        rows.push(vec!["Cluster Name".into(), n.clone()]);
    }
    if let Some(i) = &s.cluster_id {
        rows.push(vec!["Cluster ID".into(), i.clone()]);
    }
    rows
}

fn print_seal_status(ctx: &Ctx, s: &SealStatus) -> CmdResult {
    if let Some(f) = &ctx.out.field {
        let v = serde_json::to_value(s).map_err(|e| CliError::Msg(e.to_string()))?;
        let rows = v
            .as_object()
            .map(|o| o.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        return super::output::print_field(&rows, f);
    }
    if ctx.out.is_json() {
        return print_json(s);
    }
    out!("{}", columns_table(&["Key", "Value"], &seal_rows(s)));
    Ok(())
}

/// Vault's `status` exits 2 when sealed so scripts can test it.
pub(crate) async fn status(ctx: &Ctx) -> CmdResult {
    let s = ctx
        .client
        .seal_status()
        .await
        .map_err(api("Error checking seal status"))?;
    print_seal_status(ctx, &s)?;
    if s.sealed {
        return Err(CliError::Exit(2));
    }
    Ok(())
}

pub(crate) async fn run(ctx: &Ctx, cmd: OperatorCmd) -> CmdResult {
    let c = &ctx.client;
    match cmd {
        OperatorCmd::Init {
            key_shares,
            key_threshold,
            status,
        } => {
            if status {
                let s = c
                    .init_status()
                    .await
                    .map_err(api("Error checking init status"))?;
                if s.initialized {
                    outln!("tresor is initialized");
                    return Ok(());
                }
                outln!("tresor is not initialized");
                return Err(CliError::Exit(2));
            }
            if key_threshold == 0 || key_threshold > key_shares {
                return Err(CliError::Usage(format!(
                    "-key-threshold must be between 1 and -key-shares ({key_shares})"
                )));
            }
            let req = InitRequest {
                secret_shares: key_shares,
                secret_threshold: key_threshold,
                ..Default::default()
            };
            let r = c.init(&req).await.map_err(api("Error initializing"))?;
            if ctx.out.is_json() {
                return print_json(&json!({
                    "unseal_keys_b64": r.keys_base64,
                    "unseal_keys_hex": r.keys,
                    "unseal_shares": key_shares,
                    "unseal_threshold": key_threshold,
                    "root_token": r.root_token,
                }));
            }
            let keys = if r.keys_base64.is_empty() {
                &r.keys
            } else {
                &r.keys_base64
            };
            for (i, k) in keys.iter().enumerate() {
                outln!("Unseal Key {}: {k}", i + 1);
            }
            outln!("\nInitial Root Token: {}\n", r.root_token);
            outln!(
                "tresor initialized with {key_shares} key shares and a key threshold of {key_threshold}. Please\n\
                 securely distribute the key shares printed above. When the server is\n\
                 re-sealed or restarted, it will be sealed again: provide at least\n\
                 {key_threshold} of these keys to unseal it (tresor operator unseal).\n\n\
                 The server does not store the generated root key. Without at least\n\
                 {key_threshold} keys to reconstruct the root key, it will remain permanently sealed!"
            );
            Ok(())
        }
        OperatorCmd::Unseal { key, reset } => {
            let s = if reset {
                c.unseal_reset().await
            } else {
                let key = match key.as_deref() {
                    None | Some("-") => secret_prompt("Unseal Key (will be hidden): ")?,
                    Some(k) => k.to_string(),
                };
                c.unseal(&key).await
            }
            .map_err(api("Error unsealing"))?;
            print_seal_status(ctx, &s)
        }
        OperatorCmd::Seal => {
            c.seal().await.map_err(api("Error sealing"))?;
            outln!("Success! tresor is sealed.");
            Ok(())
        }
        OperatorCmd::Rotate => {
            c.rotate().await.map_err(api("Error rotating key"))?;
            let ks = c
                .key_status()
                .await
                .map_err(api("Error reading key status"))?;
            if ctx.out.is_json() {
                return print_json(&ks);
            }
            outln!("Success! Rotated key\n");
            out!("{}", columns_table(&["Key", "Value"], &key_rows(&ks)));
            Ok(())
        }
        OperatorCmd::KeyStatus => {
            let ks = c
                .key_status()
                .await
                .map_err(api("Error reading key status"))?;
            if ctx.out.is_json() {
                return print_json(&ks);
            }
            out!("{}", columns_table(&["Key", "Value"], &key_rows(&ks)));
            Ok(())
        }
        OperatorCmd::Rekey(a) => rekey(ctx, a).await,
        OperatorCmd::GenerateRoot(a) => generate_root(ctx, a).await,
    }
}

fn key_rows(ks: &serde_json::Value) -> Vec<Vec<String>> {
    let s = |k: &str| {
        ks.get(k)
            .map(super::output::fmt_value)
            .unwrap_or_else(|| "n/a".into())
    };
    vec![
        vec!["Key Term".into(), s("term")],
        vec!["Install Time".into(), s("install_time")],
        vec!["Encryption Count".into(), s("encryptions")],
    ]
}

fn rekey_rows(s: &RekeyStatus) -> Vec<Vec<String>> {
    vec![
        vec!["Nonce".into(), s.nonce.clone()],
        vec!["Started".into(), s.started.to_string()],
        vec![
            "Rekey Progress".into(),
            format!("{}/{}", s.progress, s.required),
        ],
        vec!["New Shares".into(), s.n.to_string()],
        vec!["New Threshold".into(), s.t.to_string()],
        vec![
            "Verification Required".into(),
            s.verification_required.to_string(),
        ],
    ]
}

fn print_rekey(ctx: &Ctx, s: &RekeyStatus) -> CmdResult {
    if ctx.out.is_json() {
        return print_json(s);
    }
    out!("{}", columns_table(&["Key", "Value"], &rekey_rows(s)));
    Ok(())
}

async fn rekey(ctx: &Ctx, a: RekeyArgs) -> CmdResult {
    let c = &ctx.client;
    if a.cancel {
        c.rekey_cancel()
            .await
            .map_err(api("Error canceling rekey"))?;
        outln!("Success! Canceled rekeying (if it was started)");
        return Ok(());
    }
    if a.status {
        let s = c
            .rekey_status()
            .await
            .map_err(api("Error reading rekey status"))?;
        return print_rekey(ctx, &s);
    }
    if a.init {
        let s = c
            .rekey_init(a.key_shares, a.key_threshold)
            .await
            .map_err(api("Error initializing rekey"))?;
        return print_rekey(ctx, &s);
    }
    let nonce = match a.nonce {
        Some(n) => n,
        None => {
            c.rekey_status()
                .await
                .map_err(api("Error reading rekey status"))?
                .nonce
        }
    };
    if nonce.is_empty() {
        return Err(CliError::Usage(
            "no rekey in progress: start one with tresor operator rekey -init".into(),
        ));
    }
    let key = match a.key.as_deref() {
        None | Some("-") => secret_prompt("Unseal Key (will be hidden): ")?,
        Some(k) => k.to_string(),
    };
    let s = c
        .rekey_update(&key, &nonce)
        .await
        .map_err(api("Error posting unseal key"))?;
    if s.complete == Some(true) || s.keys.as_ref().is_some_and(|k| !k.is_empty()) {
        if ctx.out.is_json() {
            return print_json(&s);
        }
        let keys = s
            .keys_base64
            .clone()
            .filter(|k| !k.is_empty())
            .or(s.keys.clone())
            .unwrap_or_default();
        for (i, k) in keys.iter().enumerate() {
            outln!("Key {}: {k}", i + 1);
        }
        outln!(
            "\nOperation nonce: {nonce}\n\nThe unseal keys were rekeyed: {} new shares, threshold {}.\n\
             The old keys no longer unseal the server.",
            keys.len(),
            s.t
        );
        return Ok(());
    }
    print_rekey(ctx, &s)
}

fn gen_root_rows(s: &GenerateRootStatus) -> Vec<Vec<String>> {
    let mut rows = vec![
        vec!["Nonce".into(), s.nonce.clone()],
        vec!["Started".into(), s.started.to_string()],
        vec!["Progress".into(), format!("{}/{}", s.progress, s.required)],
        vec!["Complete".into(), s.complete.to_string()],
    ];
    if !s.encoded_token.is_empty() {
        rows.push(vec!["Encoded Token".into(), s.encoded_token.clone()]);
    }
    if !s.otp.is_empty() {
        rows.push(vec!["OTP".into(), s.otp.clone()]);
    }
    rows.push(vec!["OTP Length".into(), s.otp_length.to_string()]);
    rows
}

fn print_gen_root(ctx: &Ctx, s: &GenerateRootStatus) -> CmdResult {
    if ctx.out.is_json() {
        return print_json(s);
    }
    out!("{}", columns_table(&["Key", "Value"], &gen_root_rows(s)));
    Ok(())
}

/// The encoded root token is the token XOR the OTP, base64 encoded (without
/// padding in current Vault, with it in older ones).
fn decode_root_token(encoded: &str, otp: &str) -> Result<String, CliError> {
    let raw = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(encoded.trim_end_matches('='))
        .map_err(|e| CliError::Usage(format!("invalid encoded token: {e}")))?;
    if raw.len() != otp.len() {
        return Err(CliError::Usage(format!(
            "encoded token is {} bytes but the OTP is {}: wrong OTP?",
            raw.len(),
            otp.len()
        )));
    }
    let bytes: Vec<u8> = raw.iter().zip(otp.as_bytes()).map(|(a, b)| a ^ b).collect();
    String::from_utf8(bytes)
        .map_err(|_| CliError::Usage("decoded token is not text: wrong OTP?".into()))
}

async fn generate_root(ctx: &Ctx, a: GenerateRootArgs) -> CmdResult {
    let c = &ctx.client;
    if let Some(enc) = &a.decode {
        let otp = a
            .otp
            .as_deref()
            .ok_or_else(|| CliError::Usage("-decode needs -otp".into()))?;
        let token = decode_root_token(enc, otp)?;
        outln!("{token}");
        return Ok(());
    }
    if a.cancel {
        c.generate_root_cancel()
            .await
            .map_err(api("Error canceling root token generation"))?;
        outln!("Success! Root token generation canceled (if it was started)");
        return Ok(());
    }
    if a.status {
        let s = c
            .generate_root_status()
            .await
            .map_err(api("Error reading root generation status"))?;
        return print_gen_root(ctx, &s);
    }
    if a.init {
        let s = c
            .generate_root_init(a.otp.as_deref(), a.pgp_key.as_deref())
            .await
            .map_err(api("Error initializing root generation"))?;
        print_gen_root(ctx, &s)?;
        if !s.otp.is_empty() && !ctx.out.is_json() {
            eprintln!("\nKeep the OTP: it decodes the final token (tresor operator generate-root -decode=TOKEN -otp=OTP).");
        }
        return Ok(());
    }
    let nonce = match a.nonce {
        Some(n) => n,
        None => {
            c.generate_root_status()
                .await
                .map_err(api("Error reading root generation status"))?
                .nonce
        }
    };
    if nonce.is_empty() {
        return Err(CliError::Usage(
            "no root generation in progress: start one with tresor operator generate-root -init"
                .into(),
        ));
    }
    let key = match a.key.as_deref() {
        None | Some("-") => secret_prompt("Unseal Key (will be hidden): ")?,
        Some(k) => k.to_string(),
    };
    let s = c
        .generate_root_update(&key, &nonce)
        .await
        .map_err(api("Error posting unseal key"))?;
    print_gen_root(ctx, &s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_root_token_with_otp() {
        let otp = "abcdefgh";
        let token = "hvs.1234";
        let enc: Vec<u8> = token.bytes().zip(otp.bytes()).map(|(a, b)| a ^ b).collect();
        let enc = base64::engine::general_purpose::STANDARD.encode(enc);
        assert_eq!(decode_root_token(&enc, otp).unwrap(), token);
        assert!(decode_root_token(&enc, "short").is_err());
    }

    #[test]
    fn sealed_status_shows_progress() {
        let s = SealStatus {
            sealed: true,
            t: 3,
            n: 5,
            progress: 1,
            ..Default::default()
        };
        let rows = seal_rows(&s);
        assert!(rows
            .iter()
            .any(|r| r[0] == "Unseal Progress" && r[1] == "1/3"));
    }
}
