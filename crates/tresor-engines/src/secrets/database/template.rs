//! Templates: the administrator's SQL statements with `{{name}}`-style
//! placeholders, and the user name template (a small Go-template subset).
//!
//! Statements are written by the administrator and trusted as SQL; the
//! values put into them (user names derived from role and display names,
//! passwords from a password policy) are not. Each value is escaped for
//! the quoting context the placeholder sits in, found by scanning the
//! template, so that no value can end its quote and become SQL.

use std::fmt::Write as _;

use chrono::Utc;

/// The SQL dialect, which decides how quotes nest and escape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Postgres,
    MySql,
}

/// How a value is quoted when its placeholder is not inside quotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Identifier,
    Literal,
}

/// A placeholder's name, kind and value.
pub(crate) type Var<'a> = (&'a str, Kind, &'a str);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quote {
    None,
    Single { backslash: bool },
    Double,
    Backtick,
}

/// Where a placeholder stands: its quote, and the tag of the PostgreSQL
/// dollar-quoted body (`$$`) around it, if any.
#[derive(Debug, Clone, Copy)]
struct Context<'a> {
    quote: Quote,
    dollar: Option<&'a str>,
}

/// Scans SQL text, tracking which quote (if any) each byte is inside.
struct Scanner<'a> {
    s: &'a str,
    dialect: Dialect,
    pos: usize,
    quote: Quote,
    dollar: Option<&'a str>,
}

enum Token<'a> {
    Text(&'a str),
    Placeholder(&'a str),
    Semicolon,
}

impl<'a> Scanner<'a> {
    fn new(s: &'a str, dialect: Dialect) -> Self {
        Scanner {
            s,
            dialect,
            pos: 0,
            quote: Quote::None,
            dollar: None,
        }
    }

    /// The next token and the quote context it was found in.
    fn next_token(&mut self) -> Option<(Token<'a>, Context<'a>)> {
        let s = self.s;
        let rest = &s[self.pos..];
        if rest.is_empty() {
            return None;
        }
        let quote = Context {
            quote: self.quote,
            dollar: self.dollar,
        };
        if let Some(after) = rest.strip_prefix("{{") {
            if let Some(end) = after.find("}}") {
                let inner = &after[..end];
                if !inner.contains("{{") {
                    self.pos += 2 + end + 2;
                    return Some((Token::Placeholder(inner.trim()), quote));
                }
            }
        }
        let bytes = rest.as_bytes();
        let c = bytes[0];
        let mut len = 1;
        match (self.quote, c) {
            (Quote::None, b';') if self.dollar.is_none() => {
                self.pos += 1;
                return Some((Token::Semicolon, quote));
            }
            (Quote::None, b'\'') => {
                let prev = s[..self.pos].chars().next_back();
                let before = s[..self.pos.saturating_sub(1)].chars().next_back();
                // PostgreSQL's E'...' strings treat backslash as an escape.
                let e_string = self.dialect == Dialect::Postgres
                    && matches!(prev, Some('e' | 'E'))
                    && !before.is_some_and(|b| b.is_alphanumeric() || b == '_');
                self.quote = Quote::Single {
                    backslash: self.dialect == Dialect::MySql || e_string,
                };
            }
            (Quote::None, b'"') => self.quote = Quote::Double,
            (Quote::None, b'`') if self.dialect == Dialect::MySql => self.quote = Quote::Backtick,
            // Quotes inside a dollar-quoted body (a function or DO block)
            // are tracked as usual: the body is SQL too.
            (Quote::None, b'$') if self.dialect == Dialect::Postgres => match self.dollar {
                Some(tag) if rest.starts_with(tag) => {
                    len = tag.len();
                    self.dollar = None;
                }
                Some(_) => {}
                None => {
                    if let Some(end) = rest[1..].find('$') {
                        let tag = &rest[1..1 + end];
                        if tag.chars().all(|c| c.is_alphanumeric() || c == '_') {
                            self.dollar = Some(&rest[..end + 2]);
                            len = end + 2;
                        }
                    }
                }
            },
            (Quote::Single { backslash }, _) => {
                if backslash && c == b'\\' && bytes.len() > 1 {
                    len = 2;
                } else if c == b'\'' {
                    if bytes.get(1) == Some(&b'\'') {
                        len = 2;
                    } else {
                        self.quote = Quote::None;
                    }
                }
            }
            (Quote::Double, b'"') => {
                if bytes.get(1) == Some(&b'"') {
                    len = 2;
                } else {
                    self.quote = Quote::None;
                }
            }
            (Quote::Double, b'\\') if self.dialect == Dialect::MySql && bytes.len() > 1 => len = 2,
            (Quote::Backtick, b'`') => {
                if bytes.get(1) == Some(&b'`') {
                    len = 2;
                } else {
                    self.quote = Quote::None;
                }
            }
            _ => {}
        }
        // Keep whole characters: `len` counts bytes of ASCII syntax only.
        while !rest.is_char_boundary(len) {
            len += 1;
        }
        self.pos += len;
        Some((Token::Text(&rest[..len]), quote))
    }
}

/// Splits a statement template on `;` outside quotes (before substitution,
/// so a value can never add a statement).
pub(crate) fn split_statements(template: &str, dialect: Dialect) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut sc = Scanner::new(template, dialect);
    while let Some((tok, _)) = sc.next_token() {
        match tok {
            Token::Semicolon => {
                out.push(std::mem::take(&mut cur));
            }
            Token::Text(t) => cur.push_str(t),
            Token::Placeholder(p) => {
                cur.push_str("{{");
                cur.push_str(p);
                cur.push_str("}}");
            }
        }
    }
    out.push(cur);
    out.into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Substitutes `vars` into one statement, each value escaped for where its
/// placeholder stands. Unknown placeholders are left as written.
pub(crate) fn render_sql(
    template: &str,
    dialect: Dialect,
    vars: &[Var<'_>],
) -> Result<String, String> {
    let mut out = String::with_capacity(template.len() + 64);
    let mut sc = Scanner::new(template, dialect);
    while let Some((tok, quote)) = sc.next_token() {
        match tok {
            Token::Semicolon => out.push(';'),
            Token::Text(t) => out.push_str(t),
            Token::Placeholder(p) => match vars.iter().find(|(n, _, _)| *n == p) {
                None => {
                    out.push_str("{{");
                    out.push_str(p);
                    out.push_str("}}");
                }
                Some((name, kind, value)) => {
                    if value.contains('\0') {
                        return Err(format!("value of {{{{{name}}}}} contains a NUL byte"));
                    }
                    // PostgreSQL ends a dollar-quoted body at its tag
                    // whatever quotes surround it.
                    if quote.dollar.is_some_and(|tag| value.contains(tag)) {
                        return Err(format!(
                            "value of {{{{{name}}}}} contains a dollar-quote tag"
                        ));
                    }
                    out.push_str(&escape(value, *kind, quote.quote, dialect));
                }
            },
        }
    }
    Ok(out)
}

fn escape(value: &str, kind: Kind, quote: Quote, dialect: Dialect) -> String {
    match quote {
        Quote::Single { backslash } => {
            let mut v = value.to_string();
            if backslash {
                v = v.replace('\\', "\\\\");
            }
            v.replace('\'', "''")
        }
        Quote::Double => {
            let v = if dialect == Dialect::MySql {
                value.replace('\\', "\\\\")
            } else {
                value.to_string()
            };
            v.replace('"', "\"\"")
        }
        Quote::Backtick => value.replace('`', "``"),
        Quote::None => match (kind, dialect) {
            (Kind::Identifier, Dialect::Postgres) => format!("\"{}\"", value.replace('"', "\"\"")),
            (Kind::Identifier, Dialect::MySql) => format!("`{}`", value.replace('`', "``")),
            (Kind::Literal, Dialect::Postgres) => format!("'{}'", value.replace('\'', "''")),
            (Kind::Literal, Dialect::MySql) => {
                format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
            }
        },
    }
}

/// Quotes an identifier for a statement tresor builds itself.
pub(crate) fn quote_ident(value: &str, dialect: Dialect) -> String {
    escape(value, Kind::Identifier, Quote::None, dialect)
}

/// Quotes a string literal for a statement tresor builds itself.
pub(crate) fn quote_literal(value: &str, dialect: Dialect) -> String {
    escape(value, Kind::Literal, Quote::None, dialect)
}

// ---------------------------------------------------------------------------
// User name templates.

/// Input of a user name template.
pub(crate) struct NameInput<'a> {
    pub(crate) role_name: &'a str,
    pub(crate) display_name: &'a str,
}

/// Keeps the characters that are safe in every database's user names;
/// role and display names come from users.
pub(crate) fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A user name is used as an identifier everywhere; beyond escaping, keep
/// it to characters no database or ACL syntax treats specially.
pub(crate) fn valid_username(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

const MAX_TEMPLATE: usize = 1024;
const MAX_RANDOM: usize = 128;

/// Renders a user name template: literal text and `{{ pipeline }}`
/// actions, where a pipeline is commands joined by `|` (the left value
/// becomes the last argument of the right command). Values: `.RoleName`,
/// `.DisplayName`, quoted strings, integers, `( pipeline )`. Functions:
/// `random N`, `unix_time`, `unix_time_millis`, `uuid`, `truncate N S`,
/// `lowercase S`, `uppercase S`, `replace OLD NEW S`, `printf FMT ARGS...`
/// (`%s`, `%d`, `%%`).
pub(crate) fn render_username(template: &str, input: &NameInput<'_>) -> Result<String, String> {
    if template.len() > MAX_TEMPLATE {
        return Err(format!("template longer than {MAX_TEMPLATE} bytes"));
    }
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| "unterminated \"{{\"".to_string())?;
        let action = after[..end]
            .trim()
            .trim_start_matches('-')
            .trim_end_matches('-');
        let tokens = lex(action)?;
        let mut p = Parser {
            toks: &tokens,
            pos: 0,
            input,
        };
        let v = p.pipeline()?;
        if p.pos != tokens.len() {
            return Err(format!("unexpected tokens in {{{{{action}}}}}"));
        }
        out.push_str(&v);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Field(String),
    Ident(String),
    Str(String),
    Int(i64),
    Pipe,
    Open,
    Close,
}

fn lex(s: &str) -> Result<Vec<Tok>, String> {
    let mut toks = Vec::new();
    let mut chars = s.char_indices().peekable();
    while let Some(&(i, c)) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '|' => {
                chars.next();
                toks.push(Tok::Pipe);
            }
            '(' => {
                chars.next();
                toks.push(Tok::Open);
            }
            ')' => {
                chars.next();
                toks.push(Tok::Close);
            }
            '"' => {
                chars.next();
                let mut v = String::new();
                let mut closed = false;
                while let Some((_, c)) = chars.next() {
                    match c {
                        '"' => {
                            closed = true;
                            break;
                        }
                        '\\' => match chars.next() {
                            Some((_, 'n')) => v.push('\n'),
                            Some((_, 't')) => v.push('\t'),
                            Some((_, c)) => v.push(c),
                            None => break,
                        },
                        c => v.push(c),
                    }
                }
                if !closed {
                    return Err("unterminated string".into());
                }
                toks.push(Tok::Str(v));
            }
            _ => {
                let start = i;
                let mut end = s.len();
                while let Some(&(j, c)) = chars.peek() {
                    if c.is_whitespace() || matches!(c, '|' | '(' | ')' | '"') {
                        end = j;
                        break;
                    }
                    chars.next();
                }
                let word = &s[start..end];
                if let Some(f) = word.strip_prefix('.') {
                    toks.push(Tok::Field(f.to_string()));
                } else if let Ok(n) = word.parse::<i64>() {
                    toks.push(Tok::Int(n));
                } else if word.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    toks.push(Tok::Ident(word.to_string()));
                } else {
                    return Err(format!("unexpected {word:?}"));
                }
            }
        }
    }
    Ok(toks)
}

struct Parser<'t, 'i> {
    toks: &'t [Tok],
    pos: usize,
    input: &'i NameInput<'i>,
}

impl Parser<'_, '_> {
    fn pipeline(&mut self) -> Result<String, String> {
        let mut v = self.command(None)?;
        while self.toks.get(self.pos) == Some(&Tok::Pipe) {
            self.pos += 1;
            v = self.command(Some(v))?;
        }
        Ok(v)
    }

    fn command(&mut self, piped: Option<String>) -> Result<String, String> {
        match self.toks.get(self.pos).cloned() {
            Some(Tok::Ident(f)) => {
                self.pos += 1;
                let mut args = Vec::new();
                while let Some(t) = self.toks.get(self.pos) {
                    if matches!(t, Tok::Pipe | Tok::Close) {
                        break;
                    }
                    args.push(self.operand()?);
                }
                if let Some(p) = piped {
                    args.push(p);
                }
                call(&f, &args)
            }
            Some(_) if piped.is_none() => {
                let v = self.operand()?;
                match self.toks.get(self.pos) {
                    None | Some(Tok::Pipe | Tok::Close) => Ok(v),
                    Some(t) => Err(format!("unexpected {t:?} after a value")),
                }
            }
            Some(t) => Err(format!("cannot pipe into {t:?}")),
            None => Err("empty command".into()),
        }
    }

    fn operand(&mut self) -> Result<String, String> {
        let t = self
            .toks
            .get(self.pos)
            .cloned()
            .ok_or_else(|| "missing value".to_string())?;
        self.pos += 1;
        match t {
            Tok::Field(f) => match f.as_str() {
                "RoleName" => Ok(sanitize(self.input.role_name)),
                "DisplayName" => Ok(sanitize(self.input.display_name)),
                other => Err(format!("unknown field .{other}")),
            },
            Tok::Str(s) => Ok(s),
            Tok::Int(n) => Ok(n.to_string()),
            Tok::Ident(f) => call(&f, &[]),
            Tok::Open => {
                let v = self.pipeline()?;
                if self.toks.get(self.pos) != Some(&Tok::Close) {
                    return Err("missing \")\"".into());
                }
                self.pos += 1;
                Ok(v)
            }
            Tok::Pipe | Tok::Close => Err(format!("unexpected {t:?}")),
        }
    }
}

fn int_arg(f: &str, v: &str) -> Result<usize, String> {
    v.parse::<usize>()
        .map_err(|_| format!("{f}: expected a non-negative integer, got {v:?}"))
}

fn call(f: &str, args: &[String]) -> Result<String, String> {
    let arity = |n: usize| -> Result<(), String> {
        if args.len() == n {
            Ok(())
        } else {
            Err(format!("{f} takes {n} argument(s), got {}", args.len()))
        }
    };
    match f {
        "random" => {
            arity(1)?;
            let n = int_arg(f, &args[0])?;
            if n > MAX_RANDOM {
                return Err(format!("random: at most {MAX_RANDOM} characters"));
            }
            random_alnum(n, false)
        }
        "unix_time" => {
            arity(0)?;
            Ok(Utc::now().timestamp().to_string())
        }
        "unix_time_millis" => {
            arity(0)?;
            Ok(Utc::now().timestamp_millis().to_string())
        }
        "uuid" => {
            arity(0)?;
            Ok(uuid::Uuid::new_v4().to_string())
        }
        "truncate" => {
            arity(2)?;
            let n = int_arg(f, &args[0])?;
            Ok(args[1].chars().take(n).collect())
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
            Ok(args[2].replace(&args[0], &args[1]))
        }
        "printf" => {
            let (fmt, rest) = args
                .split_first()
                .ok_or_else(|| "printf needs a format".to_string())?;
            printf(fmt, rest)
        }
        other => Err(format!("unknown function {other:?}")),
    }
}

fn printf(fmt: &str, args: &[String]) -> Result<String, String> {
    let mut out = String::new();
    let mut it = args.iter();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some('s' | 'd' | 'v') => {
                let a = it
                    .next()
                    .ok_or_else(|| "printf: too few arguments".to_string())?;
                let _ = write!(out, "{a}");
            }
            other => {
                return Err(format!(
                    "printf: unsupported verb %{}",
                    other.unwrap_or(' ')
                ))
            }
        }
    }
    Ok(out)
}

/// `n` random characters from `[a-zA-Z0-9]` (or `[a-z0-9]`), without
/// modulo bias.
pub(crate) fn random_alnum(n: usize, lower_only: bool) -> Result<String, String> {
    const ALL: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    const LOWER: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let set = if lower_only { LOWER } else { ALL };
    let limit = 256 - (256 % set.len());
    let mut out = String::with_capacity(n);
    let mut buf = [0u8; 64];
    while out.len() < n {
        aws_lc_rs::rand::fill(&mut buf).map_err(|_| "random source failed".to_string())?;
        for b in buf {
            if (b as usize) < limit && out.len() < n {
                out.push(set[b as usize % set.len()] as char);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn pg(t: &str, name: &str, pw: &str) -> String {
        render_sql(
            t,
            Dialect::Postgres,
            &[
                ("name", Kind::Identifier, name),
                ("password", Kind::Literal, pw),
            ],
        )
        .unwrap()
    }

    #[test]
    fn values_stay_inside_their_quotes() {
        assert_eq!(
            pg(
                r#"CREATE ROLE "{{name}}" PASSWORD '{{password}}'"#,
                r#"a"; DROP TABLE x; --"#,
                "p'; DROP TABLE y; --"
            ),
            r#"CREATE ROLE "a""; DROP TABLE x; --" PASSWORD 'p''; DROP TABLE y; --'"#
        );
        // Unquoted placeholders get quoted.
        assert_eq!(pg("DROP ROLE {{name}}", "a b", ""), r#"DROP ROLE "a b""#);
        assert_eq!(
            pg("ALTER ROLE x PASSWORD {{password}}", "", "it's"),
            "ALTER ROLE x PASSWORD 'it''s'"
        );
        let my = render_sql(
            "CREATE USER '{{name}}'@'%' IDENTIFIED BY '{{password}}'; GRANT ALL ON `{{name}}`.* TO '{{name}}'",
            Dialect::MySql,
            &[
                ("name", Kind::Identifier, "u`'\\"),
                ("password", Kind::Literal, "p\\'"),
            ],
        )
        .unwrap();
        assert_eq!(
            my,
            "CREATE USER 'u`''\\\\'@'%' IDENTIFIED BY 'p\\\\'''; GRANT ALL ON `u``'\\`.* TO 'u`''\\\\'"
        );
        assert!(render_sql(
            "{{name}}",
            Dialect::Postgres,
            &[("name", Kind::Identifier, "a\0")]
        )
        .is_err());
        // Unknown placeholders are left alone; escaped quotes keep the context.
        assert_eq!(
            pg("SELECT '{{other}}', 'it''s {{name}}'", "n'", ""),
            "SELECT '{{other}}', 'it''s n'''"
        );
        // Inside a DO block quotes still count; the body's tag may not appear.
        assert_eq!(
            pg(
                "DO $$BEGIN EXECUTE 'DROP ROLE ' || quote_ident('{{name}}'); END$$",
                "a'b",
                ""
            ),
            "DO $$BEGIN EXECUTE 'DROP ROLE ' || quote_ident('a''b'); END$$"
        );
        assert!(render_sql(
            "DO $$ '{{name}}' $$",
            Dialect::Postgres,
            &[("name", Kind::Identifier, "x$$;")]
        )
        .is_err());
    }

    #[test]
    fn statements_split_outside_quotes_only() {
        let s = split_statements(
            "CREATE ROLE \"{{name}}\"; COMMENT ON ROLE x IS 'a;b'; DO $$BEGIN PERFORM 1; END$$;;",
            Dialect::Postgres,
        );
        assert_eq!(
            s,
            vec![
                "CREATE ROLE \"{{name}}\"",
                "COMMENT ON ROLE x IS 'a;b'",
                "DO $$BEGIN PERFORM 1; END$$"
            ]
        );
    }

    #[test]
    fn username_templates() {
        let input = NameInput {
            role_name: "My'Role;x",
            display_name: "token",
        };
        let u = render_username(
            "v-{{.DisplayName | truncate 8}}-{{.RoleName | truncate 8}}-{{random 20}}-{{unix_time}}",
            &input,
        )
        .unwrap();
        assert!(u.starts_with("v-token-My_Role_-"), "{u}");
        assert!(valid_username(&u));
        let u = render_username(
            r#"{{ printf "x-%s-%s" (.RoleName | lowercase) (random 4) | truncate 10 }}"#,
            &input,
        )
        .unwrap();
        assert_eq!(u.len(), 10);
        assert!(u.starts_with("x-my_role_"), "{u}");
        assert_eq!(
            render_username("{{truncate 3 .DisplayName | uppercase}}", &input).unwrap(),
            "TOK"
        );
        assert_eq!(
            render_username(r#"{{.RoleName | replace "_" "."}}"#, &input).unwrap(),
            "My.Role.x"
        );
        assert!(render_username("{{.Secret}}", &input).is_err());
        assert!(render_username("{{random 999}}", &input).is_err());
        assert!(render_username("{{nope}}", &input).is_err());
        assert!(render_username("{{ .RoleName ", &input).is_err());
    }
}
