//! The path framework: a table of anchored regular expressions, each naming
//! the handler kind it routes to, with named captures for path parameters.

use regex::Regex;

/// A routing table from path patterns to a backend's own handler kinds.
pub struct PathTable<K> {
    routes: Vec<(Matcher, Regex, K)>,
}

/// How a route is tried. Most patterns are a literal, or a literal and
/// "the rest of the path"; those are matched with string comparisons, as
/// the regex would (a regex run cost a sizeable part of a cached KV read).
/// Any other pattern goes to its regex, after a check of its literal
/// prefix that skips most non-matching routes cheaply.
#[derive(Debug, Clone, PartialEq)]
enum Matcher {
    /// `config`
    Exact(String),
    /// `data(?:/(?P<path>.*))?` (optional), `keys/(?P<name>.+)` (non-empty),
    /// `x/(?P<rest>.*)`.
    Rest {
        lit: String,
        name: String,
        optional: bool,
        nonempty: bool,
    },
    /// Anything else; a path must start with `prefix` to match.
    Regex { prefix: String },
}

fn is_literal(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '/'
}

impl Matcher {
    fn of(p: &str) -> Matcher {
        if !p.is_empty() && p.chars().all(is_literal) {
            return Matcher::Exact(p.to_string());
        }
        let rest = |lit: &str, group: &str, optional: bool| {
            let name = group
                .strip_prefix("(?P<")?
                .strip_suffix(">.*)")
                .map(|n| (n, false))
                .or_else(|| {
                    group
                        .strip_prefix("(?P<")?
                        .strip_suffix(">.+)")
                        .map(|n| (n, true))
                })?;
            let ok = !lit.is_empty()
                && lit.chars().all(is_literal)
                && !name.0.is_empty()
                && name
                    .0
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !(optional && name.1);
            ok.then(|| Matcher::Rest {
                lit: lit.to_string(),
                name: name.0.to_string(),
                optional,
                nonempty: name.1,
            })
        };
        if let Some(m) = p
            .strip_suffix(")?")
            .and_then(|q| q.split_once("(?:/"))
            .and_then(|(lit, group)| rest(lit, group, true))
        {
            return m;
        }
        if let Some(m) = p
            .split_once("/(?P<")
            .and_then(|(lit, _)| rest(lit, &p[lit.len() + 1..], false))
        {
            return m;
        }
        Matcher::Regex {
            prefix: literal_prefix(p),
        }
    }

    /// `None`: this route does not match. `Some(None)`: ask the regex.
    fn try_match(&self, path: &str) -> Option<Option<Captures>> {
        match self {
            Matcher::Exact(lit) => (path == lit).then(|| Some(Captures::default())),
            Matcher::Rest {
                lit,
                name,
                optional,
                nonempty,
            } => {
                let tail = path.strip_prefix(lit.as_str())?;
                if tail.is_empty() {
                    return optional.then(|| Some(Captures::default()));
                }
                let value = tail.strip_prefix('/')?;
                // `.` does not match a newline; `.+` wants one character.
                if value.contains('\n') || (*nonempty && value.is_empty()) {
                    return None;
                }
                Some(Some(Captures(vec![(name.clone(), value.to_string())])))
            }
            Matcher::Regex { prefix } => path.starts_with(prefix.as_str()).then_some(None),
        }
    }
}

/// The text every match of pattern `p` starts with: its leading literal
/// characters, less one if a quantifier follows them (`role/?`), and
/// nothing if the pattern has an alternative at its top level.
fn literal_prefix(p: &str) -> String {
    let (mut depth, mut chars) = (0usize, p.chars());
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            '[' => {
                // A class: `]` first in it is a literal.
                let mut first = true;
                for c in chars.by_ref() {
                    if c == ']' && !first {
                        break;
                    }
                    first = c == '^' && first;
                }
            }
            '|' if depth == 0 => return String::new(),
            _ => {}
        }
    }
    let lead: String = p.chars().take_while(|c| is_literal(*c)).collect();
    match p[lead.len()..].chars().next() {
        Some('?' | '*' | '+' | '{') => {
            let mut lead = lead;
            lead.pop();
            lead
        }
        _ => lead,
    }
}

/// Named path parameters of a matched route.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Captures(Vec<(String, String)>);

impl Captures {
    /// The captured value, or "" when the group did not take part.
    pub fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    }
}

fn regex_captures(re: &Regex, path: &str) -> Option<Captures> {
    let c = re.captures(path)?;
    Some(Captures(
        re.capture_names()
            .flatten()
            .filter_map(|n| c.name(n).map(|m| (n.to_string(), m.as_str().to_string())))
            .collect(),
    ))
}

impl<K: Copy> PathTable<K> {
    /// Patterns are regexes without anchors (`data/(?P<path>.+)`); the table
    /// anchors them. The first matching route wins. Panics on an invalid
    /// pattern: patterns are compile-time constants of the backend.
    pub fn new(routes: &[(&str, K)]) -> Self {
        let routes = routes
            .iter()
            .map(|(p, k)| {
                #[allow(clippy::expect_used)]
                let re = Regex::new(&format!("^(?:{p})$")).expect("valid route pattern");
                (Matcher::of(p), re, *k)
            })
            .collect();
        PathTable { routes }
    }

    pub fn route(&self, path: &str) -> Option<(K, Captures)> {
        self.routes.iter().find_map(|(m, re, kind)| {
            let caps = match m.try_match(path)? {
                Some(caps) => caps,
                None => regex_captures(re, path)?,
            };
            Some((*kind, caps))
        })
    }

    /// What the regexes alone decide; the reference `route` must agree with.
    #[cfg(test)]
    fn route_by_regex(&self, path: &str) -> Option<(K, Captures)> {
        self.routes
            .iter()
            .find_map(|(_, re, kind)| Some((*kind, regex_captures(re, path)?)))
    }
}

/// Common fragments of path patterns.
pub mod pattern {
    /// One path segment.
    pub const NAME: &str = r"\w(?:[\w.@-]*\w)?";
    /// The rest of the path, may contain slashes.
    pub const ANY: &str = r".*";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_first_match_with_captures() {
        #[derive(Clone, Copy, Debug, PartialEq)]
        enum K {
            Config,
            Data,
        }
        let t = PathTable::new(&[("config", K::Config), ("data/(?P<path>.+)", K::Data)]);
        assert_eq!(t.route("config").map(|r| r.0), Some(K::Config));
        let (k, c) = t.route("data/a/b").expect("route");
        assert_eq!(k, K::Data);
        assert_eq!(c.get("path"), "a/b");
        assert!(t.route("configx").is_none());
        assert!(t.route("xdata/a").is_none());
    }

    #[test]
    fn fast_matchers_agree_with_the_regexes() {
        let n = pattern::NAME;
        let patterns: Vec<String> = vec![
            "config".into(),
            "data(?:/(?P<path>.*))?".into(),
            "metadata(?:/(?P<path>.*))?".into(),
            "keys/(?P<name>.+)".into(),
            "export/(?P<rest>.*)".into(),
            "role/?".into(),
            format!("role/(?P<role>{n})"),
            format!("role/(?P<role>{n})/secret-id/?"),
            "keys/?|list".into(),
            "a|b(?:/(?P<path>.*))?".into(),
            "cert/(?P<serial>[0-9a-f:-]+)".into(),
            "[c]rl".into(),
            "issue(?:/(?P<path>.*))?x".into(),
            "creds/(?P<name>.+)".into(),
        ];
        let refs: Vec<(&str, usize)> = patterns
            .iter()
            .enumerate()
            .map(|(i, p)| (p.as_str(), i))
            .collect();
        let paths = [
            "",
            "config",
            "configx",
            "config/",
            "data",
            "data/",
            "data/a",
            "data/a/b",
            "datax",
            "data/a\nb",
            "metadata/x/",
            "keys",
            "keys/",
            "keys/k",
            "keys/k/l",
            "export/",
            "export/a",
            "role",
            "role/",
            "role/r",
            "role/r/",
            "role/r/secret-id",
            "role/r/secret-id/",
            "list",
            "a",
            "b",
            "b/",
            "b/c",
            "cert/0a:1b",
            "cert/zz",
            "crl",
            "issue/x",
            "issuex",
            "creds/",
            "creds/c",
            "/data",
            "data//",
            "\ndata",
        ];
        // Every route alone, so that each matcher is compared, then the
        // whole table, so that the first match wins as before.
        for (p, i) in &refs {
            let t = PathTable::new(&[(*p, *i)]);
            for path in paths {
                assert_eq!(t.route(path), t.route_by_regex(path), "{p} on {path:?}");
            }
        }
        let t = PathTable::new(&refs);
        for path in paths {
            assert_eq!(t.route(path), t.route_by_regex(path), "{path:?}");
        }
        assert!(matches!(Matcher::of("config"), Matcher::Exact(_)));
        assert!(matches!(
            Matcher::of("data(?:/(?P<path>.*))?"),
            Matcher::Rest { optional: true, .. }
        ));
        assert!(matches!(
            Matcher::of("keys/(?P<name>.+)"),
            Matcher::Rest { nonempty: true, .. }
        ));
        assert_eq!(literal_prefix("role/?"), "role");
        assert_eq!(literal_prefix("keys/?|list"), "");
        assert_eq!(literal_prefix("a(?:x|y)"), "a");
    }
}
