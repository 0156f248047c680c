//! Key rules and the one-level listing shared by every backend, so that all
//! backends agree on exactly which names `list` returns.

use std::borrow::Cow;

use crate::Error;

/// Checks that `key` can be stored: non-empty, no trailing `/` (it would
/// read back from `list` as a folder, not an entry) and no NUL (C-string
/// based backends would truncate it).
pub fn validate_key(key: &str) -> Result<(), Error> {
    if key.is_empty() || key.ends_with('/') || key.contains('\0') {
        return Err(Error::InvalidKey(key.to_owned()));
    }
    Ok(())
}

/// Turns a `list` argument into a folder prefix: empty, or ending with `/`.
/// `"foo"` is read as `"foo/"` because listing "the children of foo" is the
/// only meaning a caller can have; a raw string prefix would leak `foo0`.
pub fn normalize_prefix(prefix: &str) -> Result<Cow<'_, str>, Error> {
    if prefix.contains('\0') {
        return Err(Error::InvalidKey(prefix.to_owned()));
    }
    if prefix.is_empty() || prefix.ends_with('/') {
        Ok(Cow::Borrowed(prefix))
    } else {
        Ok(Cow::Owned(format!("{prefix}/")))
    }
}

/// The smallest string greater than every string starting with `folder`
/// (which ends with `/`): `/` + 1 is `0`, so `"a/"` → `"a0"`. This gives
/// range scans an exclusive upper bound without LIKE patterns, whose `%`
/// and `_` would come from user-controlled keys.
pub(crate) fn folder_end(folder: &str) -> String {
    debug_assert!(folder.ends_with('/'));
    let mut end = String::with_capacity(folder.len());
    end.push_str(folder.strip_suffix('/').unwrap_or(folder));
    end.push('0');
    end
}

/// What a scan should do after a key was visited.
pub(crate) enum Step {
    Next,
    /// Everything below the folder just recorded is irrelevant: jump past it,
    /// so listing a folder costs one seek per child, not one row per
    /// descendant.
    SeekTo(String),
}

/// Collects the direct children of a prefix from keys visited in order.
pub(crate) struct Children<'a> {
    prefix: &'a str,
    out: Vec<String>,
}

impl<'a> Children<'a> {
    pub(crate) fn new(prefix: &'a str) -> Self {
        Self {
            prefix,
            out: Vec::new(),
        }
    }

    /// `key` must start with the prefix and be greater than every key visited
    /// before (range scans guarantee both).
    pub(crate) fn visit(&mut self, key: &str) -> Step {
        let Some(rest) = key.strip_prefix(self.prefix) else {
            return Step::Next;
        };
        match rest.find('/') {
            None => {
                self.out.push(rest.to_owned());
                Step::Next
            }
            Some(i) => {
                self.out.push(rest[..=i].to_owned());
                Step::SeekTo(folder_end(&key[..self.prefix.len() + i + 1]))
            }
        }
    }

    /// Sorted, because keys were visited in byte order and each child sorts
    /// where its first key does.
    pub(crate) fn finish(self) -> Vec<String> {
        debug_assert!(self.out.windows(2).all(|w| w[0] < w[1]));
        self.out
    }

    /// Exclusive upper bound of the scan, `None` for the root.
    pub(crate) fn scan_end(&self) -> Option<String> {
        (!self.prefix.is_empty()).then(|| folder_end(self.prefix))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keys_rejected() {
        for k in ["", "a/", "/", "a\0b"] {
            assert!(validate_key(k).is_err(), "{k:?}");
        }
        for k in ["a", "/a", "a//b", "ü/%_ x"] {
            assert!(validate_key(k).is_ok(), "{k:?}");
        }
    }

    #[test]
    fn prefix_normalized() {
        assert_eq!(normalize_prefix("").unwrap(), "");
        assert_eq!(normalize_prefix("a/").unwrap(), "a/");
        assert_eq!(normalize_prefix("a").unwrap(), "a/");
        assert!(normalize_prefix("a\0/").is_err());
    }

    #[test]
    fn folder_end_bounds_descendants_only() {
        let end = folder_end("foo/");
        assert_eq!(end, "foo0");
        assert!("foo/\u{10FFFF}" < end.as_str());
        assert!("foo0" >= end.as_str());
        assert!("fooX/" >= end.as_str());
        assert!("foo.bar" < "foo/");
    }

    /// A scan over a sorted slice that honours seeks, like the backends do.
    fn scan(prefix: &str, keys: &[&str]) -> Vec<String> {
        let mut c = Children::new(prefix);
        let end = c.scan_end();
        let mut from = prefix.to_owned();
        let mut visited = 0;
        loop {
            let mut seek = None;
            let in_range = keys
                .iter()
                .filter(|k| **k >= from.as_str() && end.as_deref().is_none_or(|e| **k < e));
            for k in in_range {
                visited += 1;
                if let Step::SeekTo(next) = c.visit(k) {
                    seek = Some(next);
                    break;
                }
            }
            match seek {
                Some(next) => from = next,
                None => break,
            }
        }
        assert!(visited <= keys.len());
        c.finish()
    }

    #[test]
    fn children_collapse() {
        let keys = [
            "a", "b", "b/c", "b/d/e", "b0", "c/x/y", "foo/a", "foo0", "fooX/b",
        ];
        assert_eq!(
            scan("", &keys),
            ["a", "b", "b/", "b0", "c/", "foo/", "foo0", "fooX/"]
        );
        assert_eq!(scan("b/", &keys), ["c", "d/"]);
        assert_eq!(scan("foo/", &keys), ["a"]);
        assert!(scan("nothing/", &keys).is_empty());
    }
}
