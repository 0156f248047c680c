//! Names of the IAM users and STS sessions this engine creates.
//!
//! Vault renders `username_template` with Go's `text/template`. We render
//! the subset its documentation and users' templates rely on — fields
//! `.DisplayName`, `.PolicyName`, `.RoleName`, `.Type`; functions `printf`
//! (`%s %d %v`), `truncate`, `lowercase`, `uppercase`, `replace`, `random`,
//! `unix_time`, `unix_time_millis`, `uuid`; pipelines and parentheses —
//! and refuse anything else when the template is configured, so that a
//! template never half-works at credential time. Vault's default template
//! (which needs `if`/`eq`) is built in natively.

use std::time::{SystemTime, UNIX_EPOCH};

use tresor_sdk::BackendError;

/// IAM user names, role session names and federated user names all allow
/// exactly these characters besides ASCII letters and digits.
fn iam_safe(c: char) -> bool {
    c.is_ascii_alphanumeric() || "+=,.@_-".contains(c)
}

/// Replace every character IAM refuses, so that a display name such as
/// `oidc-Jane Doe/admin` cannot break (or steer) the generated name.
pub(super) fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if iam_safe(c) { c } else { '-' })
        .collect()
}

/// Is `name` a valid IAM name of at most `max` characters (and at least `min`)?
pub(super) fn check_name(
    field: &str,
    name: &str,
    min: usize,
    max: usize,
) -> Result<(), BackendError> {
    let n = name.chars().count();
    if n < min || n > max {
        return Err(BackendError::bad_request(format!(
            "{field}: {name:?} must be {min} to {max} characters long"
        )));
    }
    if let Some(c) = name.chars().find(|c| !iam_safe(*c)) {
        return Err(BackendError::bad_request(format!(
            "{field}: {name:?} contains {c:?}; only letters, digits and +=,.@_- are allowed"
        )));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Iam,
    Sts,
}

/// What a template may refer to.
#[derive(Debug, Clone)]
pub(super) struct Context {
    pub(super) display_name: String,
    pub(super) policy_name: String,
    pub(super) kind: Kind,
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `n` random ASCII letters and digits, uniformly (rejection sampling).
pub(super) fn random_alnum(n: usize) -> Result<String, BackendError> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(n);
    let mut buf = [0u8; 64];
    while out.len() < n {
        aws_lc_rs::rand::fill(&mut buf)
            .map_err(|_| BackendError::Internal("random number generator failed".into()))?;
        for b in buf {
            // 248 = 4 * 62: bytes above would bias the first characters.
            if b < 248 && out.len() < n {
                out.push(char::from(ALPHABET[usize::from(b) % ALPHABET.len()]));
            }
        }
    }
    Ok(out)
}

/// Vault's default: `vault-<display>-<policy>-<unix>-<random>` for IAM
/// users (≤ 64), `vault-<unix>-<random>` for STS names (≤ 32).
pub(super) fn default_name(ctx: &Context) -> Result<String, BackendError> {
    let random = random_alnum(20)?;
    Ok(match ctx.kind {
        Kind::Iam => {
            let who = truncate(
                &format!(
                    "{}-{}",
                    sanitize(&ctx.display_name),
                    sanitize(&ctx.policy_name)
                ),
                42,
            );
            truncate(&format!("vault-{who}-{}-{random}", unix_now()), 64)
        }
        Kind::Sts => truncate(&format!("vault-{}-{random}", unix_now()), 32),
    })
}

// ----- the template subset ---------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Field(String),
    Ident(String),
    Str(String),
    Num(u64),
    Pipe,
    Open,
    Close,
}

#[derive(Debug, Clone, PartialEq)]
enum Arg {
    Field(String),
    Ident(String),
    Str(String),
    Num(u64),
    Sub(Pipeline),
}

type Command = Vec<Arg>;
type Pipeline = Vec<Command>;

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Text(String),
    Action(Pipeline),
}

/// A parsed `username_template`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Template(Vec<Node>);

fn bad(msg: impl Into<String>) -> BackendError {
    BackendError::bad_request(format!("username_template: {}", msg.into()))
}

fn lex(src: &str) -> Result<Vec<Token>, BackendError> {
    let mut out = Vec::new();
    let mut it = src.chars().peekable();
    while let Some(&c) = it.peek() {
        match c {
            c if c.is_whitespace() => {
                it.next();
            }
            '|' => {
                it.next();
                out.push(Token::Pipe);
            }
            '(' => {
                it.next();
                out.push(Token::Open);
            }
            ')' => {
                it.next();
                out.push(Token::Close);
            }
            '"' => {
                it.next();
                let mut s = String::new();
                loop {
                    match it.next() {
                        None => return Err(bad("unterminated string")),
                        Some('"') => break,
                        Some('\\') => match it.next() {
                            Some('n') => s.push('\n'),
                            Some('t') => s.push('\t'),
                            Some(e @ ('"' | '\\')) => s.push(e),
                            _ => return Err(bad("unsupported escape in string")),
                        },
                        Some(ch) => s.push(ch),
                    }
                }
                out.push(Token::Str(s));
            }
            '.' | 'a'..='z' | 'A'..='Z' | '_' => {
                let field = c == '.';
                if field {
                    it.next();
                }
                let mut s = String::new();
                while let Some(&ch) = it.peek() {
                    if ch.is_ascii_alphanumeric() || ch == '_' {
                        s.push(ch);
                        it.next();
                    } else {
                        break;
                    }
                }
                if s.is_empty() {
                    return Err(bad("expected a field name after '.'"));
                }
                out.push(if field {
                    Token::Field(s)
                } else {
                    Token::Ident(s)
                });
            }
            '0'..='9' => {
                let mut s = String::new();
                while let Some(&ch) = it.peek() {
                    if ch.is_ascii_digit() {
                        s.push(ch);
                        it.next();
                    } else {
                        break;
                    }
                }
                out.push(Token::Num(s.parse().map_err(|_| bad("number too large"))?));
            }
            other => return Err(bad(format!("unexpected character {other:?}"))),
        }
    }
    Ok(out)
}

fn parse_pipeline(toks: &[Token], pos: &mut usize) -> Result<Pipeline, BackendError> {
    let mut pipeline = Vec::new();
    loop {
        let mut cmd = Vec::new();
        while let Some(t) = toks.get(*pos) {
            let arg = match t {
                Token::Pipe | Token::Close => break,
                Token::Field(f) => Arg::Field(f.clone()),
                Token::Ident(i) => Arg::Ident(i.clone()),
                Token::Str(s) => Arg::Str(s.clone()),
                Token::Num(n) => Arg::Num(*n),
                Token::Open => {
                    *pos += 1;
                    let sub = parse_pipeline(toks, pos)?;
                    if toks.get(*pos) != Some(&Token::Close) {
                        return Err(bad("missing ')'"));
                    }
                    Arg::Sub(sub)
                }
            };
            *pos += 1;
            cmd.push(arg);
        }
        if cmd.is_empty() {
            return Err(bad("empty command"));
        }
        pipeline.push(cmd);
        if toks.get(*pos) == Some(&Token::Pipe) {
            *pos += 1;
        } else {
            return Ok(pipeline);
        }
    }
}

const FUNCTIONS: &[&str] = &[
    "printf",
    "truncate",
    "lowercase",
    "uppercase",
    "replace",
    "random",
    "unix_time",
    "unix_time_millis",
    "uuid",
];
const FIELDS: &[&str] = &["DisplayName", "PolicyName", "RoleName", "Type"];

fn check_names(p: &Pipeline) -> Result<(), BackendError> {
    for cmd in p {
        for (i, a) in cmd.iter().enumerate() {
            match a {
                Arg::Ident(f) if i == 0 && FUNCTIONS.contains(&f.as_str()) => {}
                Arg::Ident(f) => {
                    return Err(bad(format!(
                        "{f:?} is not supported (functions: {})",
                        FUNCTIONS.join(", ")
                    )))
                }
                Arg::Field(f) if !FIELDS.contains(&f.as_str()) => {
                    return Err(bad(format!(
                        "field .{f} is not supported (fields: .{})",
                        FIELDS.join(", .")
                    )))
                }
                Arg::Sub(s) => check_names(s)?,
                _ => {}
            }
        }
    }
    Ok(())
}

impl Template {
    pub(super) fn parse(src: &str) -> Result<Self, BackendError> {
        let mut nodes = Vec::new();
        let mut rest = src;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                nodes.push(Node::Text(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let end = after.find("}}").ok_or_else(|| bad("unclosed '{{'"))?;
            let toks = lex(&after[..end])?;
            let mut pos = 0;
            let p = parse_pipeline(&toks, &mut pos)?;
            if pos != toks.len() {
                return Err(bad("unexpected ')'"));
            }
            check_names(&p)?;
            nodes.push(Node::Action(p));
            rest = &after[end + 2..];
        }
        if rest.contains("}}") {
            return Err(bad("'}}' without '{{'"));
        }
        if !rest.is_empty() {
            nodes.push(Node::Text(rest.to_string()));
        }
        Ok(Template(nodes))
    }

    pub(super) fn render(&self, ctx: &Context) -> Result<String, BackendError> {
        let mut out = String::new();
        for n in &self.0 {
            match n {
                Node::Text(t) => out.push_str(t),
                Node::Action(p) => out.push_str(&eval_pipeline(p, ctx)?),
            }
        }
        Ok(out)
    }
}

fn eval_pipeline(p: &Pipeline, ctx: &Context) -> Result<String, BackendError> {
    let mut piped: Option<String> = None;
    for cmd in p {
        piped = Some(eval_command(cmd, piped.take(), ctx)?);
    }
    piped.ok_or_else(|| bad("empty pipeline"))
}

fn eval_arg(a: &Arg, ctx: &Context) -> Result<String, BackendError> {
    match a {
        Arg::Field(f) => Ok(match f.as_str() {
            "DisplayName" => sanitize(&ctx.display_name),
            "PolicyName" | "RoleName" => sanitize(&ctx.policy_name),
            _ => match ctx.kind {
                Kind::Iam => "IAM".into(),
                Kind::Sts => "STS".into(),
            },
        }),
        Arg::Str(s) => Ok(s.clone()),
        Arg::Num(n) => Ok(n.to_string()),
        Arg::Sub(p) => eval_pipeline(p, ctx),
        Arg::Ident(i) => eval_command(&[Arg::Ident(i.clone())], None, ctx),
    }
}

fn num(field: &str, s: &str) -> Result<usize, BackendError> {
    s.parse()
        .map_err(|_| bad(format!("{field}: expected a number, got {s:?}")))
}

fn eval_command(cmd: &[Arg], piped: Option<String>, ctx: &Context) -> Result<String, BackendError> {
    let Some(Arg::Ident(f)) = cmd.first() else {
        if cmd.len() != 1 || piped.is_some() {
            return Err(bad("only a function can take arguments or a piped value"));
        }
        return cmd
            .first()
            .map_or(Err(bad("empty command")), |a| eval_arg(a, ctx));
    };
    let mut args = cmd[1..]
        .iter()
        .map(|a| eval_arg(a, ctx))
        .collect::<Result<Vec<_>, _>>()?;
    args.extend(piped);
    let arity = |n: usize| {
        if args.len() == n {
            Ok(())
        } else {
            Err(bad(format!(
                "{f} takes {n} argument(s), got {}",
                args.len()
            )))
        }
    };
    match f.as_str() {
        "printf" => {
            let (fmt, rest) = args
                .split_first()
                .ok_or_else(|| bad("printf needs a format"))?;
            printf(fmt, rest)
        }
        "truncate" => {
            arity(2)?;
            Ok(truncate(&args[1], num("truncate", &args[0])?))
        }
        "lowercase" => {
            arity(1)?;
            Ok(args[0].to_lowercase())
        }
        "uppercase" => {
            arity(1)?;
            Ok(args[0].to_uppercase())
        }
        "replace" => {
            arity(3)?;
            Ok(args[2].replace(args[0].as_str(), &args[1]))
        }
        "random" => {
            arity(1)?;
            let n = num("random", &args[0])?;
            if n > 256 {
                return Err(bad("random: at most 256 characters"));
            }
            random_alnum(n)
        }
        "unix_time" => {
            arity(0)?;
            Ok(unix_now().to_string())
        }
        "unix_time_millis" => {
            arity(0)?;
            Ok(SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0)
                .to_string())
        }
        "uuid" => {
            arity(0)?;
            Ok(uuid::Uuid::new_v4().to_string())
        }
        other => Err(bad(format!("{other:?} is not supported"))),
    }
}

fn printf(fmt: &str, args: &[String]) -> Result<String, BackendError> {
    let mut out = String::new();
    let mut args = args.iter();
    let mut it = fmt.chars();
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('%') => out.push('%'),
            Some('s' | 'd' | 'v') => out.push_str(
                args.next()
                    .ok_or_else(|| bad("printf: too few arguments"))?,
            ),
            _ => return Err(bad("printf: only %s, %d, %v and %% are supported")),
        }
    }
    if args.next().is_some() {
        return Err(bad("printf: too many arguments"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(kind: Kind) -> Context {
        Context {
            display_name: "token/../ admin".into(),
            policy_name: "web".into(),
            kind,
        }
    }

    #[test]
    fn default_names_are_iam_safe_and_bounded() {
        let mut c = ctx(Kind::Iam);
        c.display_name = "x".repeat(100);
        let n = default_name(&c).unwrap();
        assert!(n.starts_with("vault-xxx"), "{n}");
        assert_eq!(n.len(), 64);
        check_name("u", &n, 1, 64).unwrap();

        let n = default_name(&ctx(Kind::Iam)).unwrap();
        assert!(n.starts_with("vault-token-..--admin-web-"), "{n}");
        check_name("u", &n, 1, 64).unwrap();

        let n = default_name(&ctx(Kind::Sts)).unwrap();
        assert!(n.len() <= 32 && n.starts_with("vault-"), "{n}");
        check_name("u", &n, 2, 32).unwrap();
    }

    #[test]
    fn renders_the_supported_subset() {
        let t = Template::parse(
            r#"tresor-{{ printf "%s-%s" (.DisplayName) (.PolicyName) | truncate 12 | lowercase }}-{{ random 5 }}"#,
        )
        .unwrap();
        let n = t.render(&ctx(Kind::Iam)).unwrap();
        assert!(n.starts_with("tresor-token-..--ad-"), "{n}");
        assert_eq!(n.len(), "tresor-token-..--ad-".len() + 5);
        let t = Template::parse(r#"{{ .RoleName | replace "w" "W" | uppercase }}_{{unix_time}}"#)
            .unwrap();
        assert!(t.render(&ctx(Kind::Sts)).unwrap().starts_with("WEB_"));
    }

    #[test]
    fn refuses_what_it_cannot_render() {
        for bad in [
            r#"{{ if (eq .Type "STS") }}a{{ end }}"#,
            "{{ .Secret }}",
            "{{ env \"HOME\" }}",
            "{{ .DisplayName",
            "{{ (.DisplayName }}",
            "{{ }}",
            "x }}",
            r#"{{ printf "%x" .DisplayName }}"#,
        ] {
            let r = Template::parse(bad).and_then(|t| t.render(&ctx(Kind::Iam)));
            assert!(r.is_err(), "{bad}");
        }
        assert!(check_name("u", "a/b", 1, 64).is_err());
        assert!(check_name("u", "", 1, 64).is_err());
        assert!(check_name("u", &"a".repeat(65), 1, 64).is_err());
    }
}
