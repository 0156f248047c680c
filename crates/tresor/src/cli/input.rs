//! Turning `k=v`, `k=@file`, `k=-` and `-` (a JSON object on stdin) into a
//! request body, as `vault write` / `vault kv put` do.

use super::error::CliError;
use serde_json::{Map, Value};
use std::io::{IsTerminal, Read};

/// Where `-` reads from; a trait object so tests can feed a buffer.
pub(crate) struct Input<'a> {
    stdin: &'a mut dyn Read,
    stdin_used: bool,
}

impl<'a> Input<'a> {
    pub(crate) fn new(stdin: &'a mut dyn Read) -> Self {
        Self {
            stdin,
            stdin_used: false,
        }
    }

    fn read_stdin(&mut self) -> Result<String, CliError> {
        if self.stdin_used {
            return Err(CliError::Usage(
                "stdin (\"-\") can be used only once".into(),
            ));
        }
        self.stdin_used = true;
        let mut s = String::new();
        self.stdin
            .read_to_string(&mut s)
            .map_err(|e| CliError::Msg(format!("reading stdin: {e}")))?;
        Ok(s)
    }

    /// Parse the arguments into a JSON object. Repeating a key makes a list,
    /// as vault's builder does (`policies=a policies=b`).
    pub(crate) fn parse(&mut self, args: &[String]) -> Result<Map<String, Value>, CliError> {
        let mut out = Map::new();
        for arg in args {
            if arg == "-" {
                let text = self.read_stdin()?;
                merge(&mut out, json_object(&text, "stdin")?);
                continue;
            }
            if let Some(file) = arg.strip_prefix('@') {
                let text = read_file(file)?;
                merge(&mut out, json_object(&text, file)?);
                continue;
            }
            let Some((k, v)) = arg.split_once('=') else {
                return Err(CliError::Usage(format!(
                    "invalid key/value pair {arg:?}: expected key=value, key=@file, key=- or - for JSON on stdin"
                )));
            };
            if k.is_empty() {
                return Err(CliError::Usage(format!(
                    "invalid key/value pair {arg:?}: empty key"
                )));
            }
            let value = if v == "-" {
                self.read_stdin()?
            } else if let Some(file) = v.strip_prefix('@') {
                read_file(file)?
            } else {
                v.to_string()
            };
            insert(&mut out, k, Value::String(value));
        }
        Ok(out)
    }
}

fn insert(out: &mut Map<String, Value>, k: &str, v: Value) {
    match out.get_mut(k) {
        Some(Value::Array(a)) => a.push(v),
        Some(prev) => {
            let old = prev.take();
            *prev = Value::Array(vec![old, v]);
        }
        None => {
            out.insert(k.to_string(), v);
        }
    }
}

fn merge(out: &mut Map<String, Value>, other: Map<String, Value>) {
    for (k, v) in other {
        out.insert(k, v);
    }
}

fn json_object(text: &str, source: &str) -> Result<Map<String, Value>, CliError> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err(CliError::Usage(format!("{source}: expected a JSON object"))),
        Err(e) => Err(CliError::Usage(format!("{source}: invalid JSON: {e}"))),
    }
}

pub(crate) fn read_file(path: &str) -> Result<String, CliError> {
    std::fs::read_to_string(path).map_err(|e| CliError::Msg(format!("reading {path}: {e}")))
}

/// `k=v` pairs as a string map (metadata, audit options).
pub(crate) fn string_pairs(args: &[String]) -> Result<Map<String, Value>, CliError> {
    let mut out = Map::new();
    for a in args {
        let (k, v) = a
            .split_once('=')
            .ok_or_else(|| CliError::Usage(format!("invalid pair {a:?}: expected key=value")))?;
        out.insert(k.to_string(), Value::String(v.to_string()));
    }
    Ok(out)
}

/// A secret typed by the user: hidden prompt on a terminal, else one line
/// of stdin (so `echo $KEY | tresor operator unseal` works in scripts).
pub(crate) fn secret_prompt(prompt: &str) -> Result<String, CliError> {
    let value = if std::io::stdin().is_terminal() {
        rpassword::prompt_password(prompt)
            .map_err(|e| CliError::Msg(format!("reading from terminal: {e}")))?
    } else {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| CliError::Msg(format!("reading stdin: {e}")))?;
        line
    };
    let value = value.trim().to_string();
    if value.is_empty() {
        return Err(CliError::Usage("no value entered".into()));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_pairs_files_and_stdin() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("cert.pem");
        std::fs::write(&f, "PEM\n").unwrap();
        let mut stdin: &[u8] = b"from-stdin";
        let mut input = Input::new(&mut stdin);
        let m = input
            .parse(&args(&[
                "a=b",
                &format!("c=@{}", f.display()),
                "d=-",
                "e=x=y",
            ]))
            .unwrap();
        assert_eq!(
            Value::Object(m),
            json!({"a": "b", "c": "PEM\n", "d": "from-stdin", "e": "x=y"})
        );
    }

    #[test]
    fn dash_reads_json_object() {
        let mut stdin: &[u8] = br#"{"n": 1, "x": {"y": true}}"#;
        let m = Input::new(&mut stdin).parse(&args(&["-", "z=1"])).unwrap();
        assert_eq!(
            Value::Object(m),
            json!({"n": 1, "x": {"y": true}, "z": "1"})
        );
    }

    #[test]
    fn repeated_keys_become_lists_and_bad_pairs_fail() {
        let mut stdin: &[u8] = b"";
        let m = Input::new(&mut stdin)
            .parse(&args(&["p=a", "p=b", "p=c"]))
            .unwrap();
        assert_eq!(m["p"], json!(["a", "b", "c"]));
        let mut stdin: &[u8] = b"";
        assert!(matches!(
            Input::new(&mut stdin).parse(&args(&["novalue"])),
            Err(CliError::Usage(_))
        ));
        let mut stdin: &[u8] = b"x";
        assert!(matches!(
            Input::new(&mut stdin).parse(&args(&["a=-", "b=-"])),
            Err(CliError::Usage(_))
        ));
    }
}
