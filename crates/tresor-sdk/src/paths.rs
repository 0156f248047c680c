//! The path framework: a table of anchored regular expressions, each naming
//! the handler kind it routes to, with named captures for path parameters.

use regex::Regex;

/// A routing table from path patterns to a backend's own handler kinds.
pub struct PathTable<K> {
    routes: Vec<(Regex, K)>,
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
                (re, *k)
            })
            .collect();
        PathTable { routes }
    }

    pub fn route(&self, path: &str) -> Option<(K, Captures)> {
        for (re, kind) in &self.routes {
            if let Some(c) = re.captures(path) {
                let caps = re
                    .capture_names()
                    .flatten()
                    .filter_map(|n| c.name(n).map(|m| (n.to_string(), m.as_str().to_string())))
                    .collect();
                return Some((*kind, Captures(caps)));
            }
        }
        None
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
}
