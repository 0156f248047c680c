//! The command-line client. Every command goes through tresor-client; the
//! command names, flags, output and exit codes follow the vault CLI so that
//! muscle memory and scripts carry over.

/// stdout writes that ignore failures: `tresor kv get ... | head -1` closes
/// the pipe early, and `println!` would panic on EPIPE.
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($t)*);
    }};
}
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout().lock(), $($t)*);
    }};
}

mod approle;
mod error;
mod generic;
mod input;
mod kv;
mod lease;
mod operator;
mod output;
mod password;
mod pki;
mod policy;
mod secrets;
mod token;
mod transit;

use clap::{CommandFactory, Parser, Subcommand};
use error::CliError;
use output::{Format, Out};
use std::process::ExitCode;
use tresor_client::{Client, Settings};

#[derive(Debug, Parser)]
#[command(
    name = "tresor",
    version,
    about = "tresor: secrets management, Vault-compatible"
)]
struct Cli {
    #[command(flatten)]
    global: GlobalOpts,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct GlobalOpts {
    /// Server address [default: TRESOR_ADDR, then VAULT_ADDR, then
    /// http://127.0.0.1:8200].
    // Not clap's `env`: it would take an empty TRESOR_ADDR over VAULT_ADDR;
    // tresor-client's Settings::from_env skips empty variables.
    #[arg(long, global = true)]
    address: Option<String>,
    /// Output format [default: TRESOR_FORMAT, then VAULT_FORMAT, then table].
    #[arg(long, global = true, value_enum)]
    format: Option<Format>,
    /// Print only this field's value.
    #[arg(long, global = true)]
    field: Option<String>,
    /// PEM file of the CA that signed the server certificate (default:
    /// TRESOR_CACERT, then VAULT_CACERT).
    #[arg(long, global = true)]
    ca_cert: Option<std::path::PathBuf>,
    /// PEM client certificate presented to the server, for cert auth and
    /// listeners that require one (default: TRESOR_CLIENT_CERT, then
    /// VAULT_CLIENT_CERT).
    #[arg(long, global = true)]
    client_cert: Option<std::path::PathBuf>,
    /// PEM private key of -client-cert (default: TRESOR_CLIENT_KEY, then
    /// VAULT_CLIENT_KEY; may be omitted when the certificate file holds it).
    #[arg(long, global = true)]
    client_key: Option<std::path::PathBuf>,
    /// Do not verify the server's TLS certificate (testing only).
    #[arg(long, global = true)]
    tls_skip_verify: bool,
    /// Wrap the answer in a single-use token valid this long, e.g. 5m
    /// [default: TRESOR_WRAP_TTL, then VAULT_WRAP_TTL].
    #[arg(long, global = true)]
    wrap_ttl: Option<String>,
}

/// `TRESOR_<name>`, else `VAULT_<name>`, ignoring empty values: shells
/// set up for vault keep working.
fn env_var(name: &str) -> Option<String> {
    tresor_client::env_either(&format!("TRESOR_{name}"), &format!("VAULT_{name}"))
}

impl GlobalOpts {
    fn format(&self) -> Result<Format, CliError> {
        if let Some(f) = self.format {
            return Ok(f);
        }
        match env_var("FORMAT") {
            None => Ok(Format::Table),
            Some(v) => <Format as clap::ValueEnum>::from_str(v.trim(), true).map_err(|_| {
                CliError::Usage(format!(
                    "invalid output format {v:?} in TRESOR_FORMAT/VAULT_FORMAT: use table or json"
                ))
            }),
        }
    }

    fn wrap_ttl(&self) -> Option<String> {
        self.wrap_ttl.clone().or_else(|| env_var("WRAP_TTL"))
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a server.
    Server(crate::server::ServerArgs),
    /// Print seal status (exit code 2 when sealed).
    Status,
    /// Operator commands: init, unseal, seal, rekey, generate-root, ...
    #[command(subcommand)]
    Operator(operator::OperatorCmd),
    /// Authenticate and save the token in ~/.tresor-token.
    Login(token::LoginArgs),
    /// Create, look up, renew and revoke tokens.
    #[command(subcommand)]
    Token(token::TokenCmd),
    /// Key/value secrets (v1 and v2).
    #[command(subcommand)]
    Kv(kv::KvCmd),
    /// Read data at a path.
    Read(generic::ReadArgs),
    /// Write data to a path.
    Write(generic::WriteArgs),
    /// Delete data at a path.
    Delete(generic::PathArgs),
    /// List keys under a path.
    List(generic::PathArgs),
    /// Unwrap a response-wrapped answer (default: the current token).
    Unwrap(generic::UnwrapArgs),
    /// Manage secrets engines.
    #[command(subcommand)]
    Secrets(secrets::SecretsCmd),
    /// Manage auth methods.
    #[command(subcommand)]
    Auth(secrets::AuthCmd),
    /// Manage audit devices.
    #[command(subcommand)]
    Audit(secrets::AuditCmd),
    /// Manage ACL policies.
    #[command(subcommand)]
    Policy(policy::PolicyCmd),
    /// Look up, renew and revoke leases.
    #[command(subcommand)]
    Lease(lease::LeaseCmd),
    /// Issue certificates from the PKI engine.
    #[command(subcommand)]
    Pki(pki::PkiCmd),
    /// Encrypt and decrypt with the Transit engine.
    #[command(subcommand)]
    Transit(transit::TransitCmd),
    /// Generate passwords from password policies.
    #[command(subcommand)]
    Password(password::PasswordCmd),
    /// AppRole chores for deployment scripts.
    #[command(subcommand)]
    Approle(approle::ApproleCmd),
    /// Print a shell completion script.
    Completions { shell: clap_complete::Shell },
}

/// What every client command needs.
pub(crate) struct Ctx {
    pub(crate) client: Client,
    pub(crate) out: Out,
}

type CmdResult = Result<(), CliError>;

pub(crate) fn main() -> ExitCode {
    let cli = match Cli::try_parse_from(normalize_switches(rewrite_args(std::env::args()))) {
        Ok(c) => c,
        // clap exits 2 on usage errors and 0 for --help/--version.
        Err(e) => e.exit(),
    };
    let format = match cli.global.format() {
        Ok(f) => f,
        Err(e) => return finish(Err(e), "", true),
    };
    let out = Out {
        format,
        field: cli.global.field.clone(),
    };
    match cli.command {
        Command::Server(args) => crate::server::run(args),
        Command::Completions { shell } => {
            // Into a buffer first: clap_complete panics when stdout is a closed pipe.
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "tresor", &mut buf);
            out!("{}", String::from_utf8_lossy(&buf));
            ExitCode::SUCCESS
        }
        Command::Policy(policy::PolicyCmd::Fmt(args)) => finish(policy::fmt(&args), "", true),
        command => {
            let client = match settings(&cli.global)
                .and_then(|s| Client::from_settings(s).map_err(CliError::from_client))
            {
                Ok(c) => c,
                Err(e) => return finish(Err(e), "", true),
            };
            let address = client.address().to_string();
            let has_token = client.token().is_some();
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    return finish(
                        Err(CliError::Msg(format!("starting runtime: {e}"))),
                        &address,
                        has_token,
                    )
                }
            };
            let client = match &cli.global.wrap_ttl() {
                Some(w) => client.with_wrap_ttl(w),
                None => client,
            };
            let ctx = Ctx { client, out };
            let res = rt.block_on(dispatch(&ctx, command));
            finish(res, &address, has_token)
        }
    }
}

impl CliError {
    fn from_client(e: tresor_client::ClientError) -> Self {
        CliError::Msg(e.to_string())
    }
}

fn settings(g: &GlobalOpts) -> Result<Settings, CliError> {
    let mut s = Settings::from_env().map_err(CliError::from_client)?;
    if let Some(a) = &g.address {
        s.address = a.clone();
    }
    if let Some(c) = &g.ca_cert {
        s.ca_cert = Some(c.clone());
    }
    if let Some(c) = &g.client_cert {
        s.client_cert = Some(c.clone());
    }
    if let Some(k) = &g.client_key {
        s.client_key = Some(k.clone());
    }
    if s.client_key.is_some() && s.client_cert.is_none() {
        return Err(CliError::Usage(
            "-client-key needs -client-cert (or TRESOR_CLIENT_CERT / VAULT_CLIENT_CERT)".into(),
        ));
    }
    s.skip_verify |= g.tls_skip_verify;
    Ok(s)
}

async fn dispatch(ctx: &Ctx, command: Command) -> CmdResult {
    match command {
        Command::Status => operator::status(ctx).await,
        Command::Operator(c) => operator::run(ctx, c).await,
        Command::Login(a) => token::login(ctx, a).await,
        Command::Token(c) => token::run(ctx, c).await,
        Command::Kv(c) => kv::run(ctx, c).await,
        Command::Read(a) => generic::read(ctx, a).await,
        Command::Write(a) => generic::write(ctx, a).await,
        Command::Unwrap(a) => generic::unwrap(ctx, a).await,
        Command::Delete(a) => generic::delete(ctx, a).await,
        Command::List(a) => generic::list(ctx, a).await,
        Command::Secrets(c) => secrets::run_secrets(ctx, c).await,
        Command::Auth(c) => secrets::run_auth(ctx, c).await,
        Command::Audit(c) => secrets::run_audit(ctx, c).await,
        Command::Policy(c) => policy::run(ctx, c).await,
        Command::Lease(c) => lease::run(ctx, c).await,
        Command::Pki(c) => pki::run(ctx, c).await,
        Command::Transit(c) => transit::run(ctx, c).await,
        Command::Password(c) => password::run(ctx, c).await,
        Command::Approle(c) => approle::run(ctx, c).await,
        // Handled before a client is built.
        Command::Server(_) | Command::Completions { .. } => Ok(()),
    }
}

fn finish(res: CmdResult, address: &str, has_token: bool) -> ExitCode {
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if !matches!(e, CliError::Exit(_)) {
                eprintln!("{e}");
                if let Some(h) = e.hint(address, has_token) {
                    eprintln!("\n{h}");
                }
            }
            e.exit_code()
        }
    }
}

/// Vault's flags are single-dash longs (`-policy=x`, `-format json`) and
/// users type them from habit; clap only knows `--policy`. So before parsing,
/// an argument that starts with one `-` followed by two or more characters
/// becomes `--...`. Left alone: `-` (stdin), single-letter shorts (`-h`),
/// negative numbers (`-1`, `-5s`), anything already `--...`, and everything
/// after a bare `--`.
fn rewrite_args(args: impl IntoIterator<Item = String>) -> Vec<String> {
    flag_positions(args)
        .map(|(a, may_be_flag)| {
            let mut chars = a.chars();
            let single_dash_long = may_be_flag
                && chars.next() == Some('-')
                && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
                && chars.next().is_some();
            if single_dash_long {
                format!("-{a}")
            } else {
                a
            }
        })
        .collect()
}

/// Each argument, with whether it may be a flag: not the program name, not
/// a bare `--`, nothing after it.
fn flag_positions(args: impl IntoIterator<Item = String>) -> impl Iterator<Item = (String, bool)> {
    let mut passthrough = false;
    args.into_iter().enumerate().map(move |(i, a)| {
        if i > 0 && a == "--" {
            passthrough = true;
            return (a, false);
        }
        let may_be_flag = i > 0 && !passthrough;
        (a, may_be_flag)
    })
}

/// Go's flag package, which vault's CLI is built on, takes `-orphan=true`
/// and `-orphan=false` for a boolean flag, and scripts use both; clap's
/// switches take no value. So a switch of the command the arguments select
/// given `=true` (or Go's other spellings) becomes the bare switch, and
/// one given `=false` is dropped. Runs after [`rewrite_args`].
fn normalize_switches(args: Vec<String>) -> Vec<String> {
    let mut root = Cli::command();
    // Propagates the global flags into every subcommand.
    root.build();
    let mut cur = &root;
    let mut out = Vec::with_capacity(args.len());
    for (a, may_be_flag) in flag_positions(args) {
        if !may_be_flag {
            out.push(a);
            continue;
        }
        if let Some((name, value)) = a.strip_prefix("--").and_then(|b| b.split_once('=')) {
            let switch = cur.get_arguments().any(|arg| {
                arg.get_long() == Some(name) && matches!(arg.get_action(), clap::ArgAction::SetTrue)
            });
            match (switch, go_bool(value)) {
                (true, Some(true)) => {
                    out.push(format!("--{name}"));
                    continue;
                }
                (true, Some(false)) => continue,
                _ => {}
            }
        } else if !a.starts_with('-') {
            if let Some(sub) = cur.find_subcommand(&a) {
                cur = sub;
            }
        }
        out.push(a);
    }
    out
}

/// Go's `strconv.ParseBool`.
fn go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(a: &[&str]) -> Vec<String> {
        normalize_switches(rw(a))
    }

    #[test]
    fn switches_take_go_style_boolean_values() {
        assert_eq!(
            norm(&[
                "tresor",
                "token",
                "create",
                "-orphan=true",
                "-no-default-policy=false",
                "-policy=a"
            ]),
            ["tresor", "token", "create", "--orphan", "--policy=a"]
        );
        // Global switches, in a subcommand too.
        assert_eq!(
            norm(&[
                "tresor",
                "-tls-skip-verify=1",
                "kv",
                "get",
                "-tls-skip-verify=false",
                "secret/x"
            ]),
            ["tresor", "--tls-skip-verify", "kv", "get", "secret/x"]
        );
        // Flags that take values, and values after `--`, are left alone.
        assert_eq!(
            norm(&[
                "tresor",
                "kv",
                "metadata",
                "put",
                "-cas-required=false",
                "secret/x"
            ]),
            [
                "tresor",
                "kv",
                "metadata",
                "put",
                "--cas-required=false",
                "secret/x"
            ]
        );
        assert_eq!(
            norm(&["tresor", "write", "-force=true", "p", "--", "--force=true"]),
            ["tresor", "write", "--force", "p", "--", "--force=true"]
        );
        let c = Cli::try_parse_from(norm(&["tresor", "login", "-no-store=true", "tok"]));
        assert!(c.is_ok(), "{c:?}");
        // A bare optional-value switch does not swallow the path after it.
        let c = Cli::try_parse_from(norm(&[
            "tresor",
            "kv",
            "metadata",
            "put",
            "-cas-required",
            "secret/x",
        ]));
        assert!(c.is_ok(), "{c:?}");
    }

    fn rw(a: &[&str]) -> Vec<String> {
        rewrite_args(a.iter().map(|s| s.to_string()))
    }

    #[test]
    fn rewrites_single_dash_longs() {
        assert_eq!(
            rw(&[
                "tresor",
                "token",
                "create",
                "-policy=a",
                "-ttl",
                "1h",
                "--period=2h",
                "-",
                "-h",
                "-5",
                "-1s"
            ]),
            [
                "tresor",
                "token",
                "create",
                "--policy=a",
                "--ttl",
                "1h",
                "--period=2h",
                "-",
                "-h",
                "-5",
                "-1s"
            ]
        );
        assert_eq!(
            rw(&["tresor", "write", "x", "--", "-raw"]),
            ["tresor", "write", "x", "--", "-raw"]
        );
    }

    #[test]
    fn parses_vault_style_command_lines() {
        let c = Cli::try_parse_from(rw(&[
            "tresor",
            "kv",
            "get",
            "-mount=secret",
            "-field=a",
            "foo",
        ]))
        .unwrap();
        assert_eq!(c.global.field.as_deref(), Some("a"));
        let c = Cli::try_parse_from(rw(&[
            "tresor",
            "operator",
            "init",
            "-key-shares=1",
            "-key-threshold",
            "1",
        ]));
        assert!(c.is_ok());
        let c = Cli::try_parse_from(rw(&["tresor", "-format=json", "status"])).unwrap();
        assert_eq!(c.global.format, Some(Format::Json));
        let c = Cli::try_parse_from(rw(&["tresor", "server", "-dev", "-dev-root-token-id=root"]));
        assert!(c.is_ok());
        let c = Cli::try_parse_from(rw(&[
            "tresor",
            "token",
            "create",
            "-policy=a,b",
            "-policy",
            "c",
            "-metadata",
            "k=v",
            "-renewable=false",
            "-orphan",
        ]));
        assert!(c.is_ok(), "{c:?}");
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
