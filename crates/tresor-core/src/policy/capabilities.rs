use std::fmt;
use std::ops::{BitOr, BitOrAssign};

/// A set of policy capabilities, as a bitset so that merging rules and
/// checking an operation are single instructions on the hot path.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Capabilities(pub u16);

impl Capabilities {
    pub const NONE: Capabilities = Capabilities(0);
    pub const DENY: Capabilities = Capabilities(1 << 0);
    pub const CREATE: Capabilities = Capabilities(1 << 1);
    pub const READ: Capabilities = Capabilities(1 << 2);
    pub const UPDATE: Capabilities = Capabilities(1 << 3);
    pub const PATCH: Capabilities = Capabilities(1 << 4);
    pub const DELETE: Capabilities = Capabilities(1 << 5);
    pub const LIST: Capabilities = Capabilities(1 << 6);
    pub const SUDO: Capabilities = Capabilities(1 << 7);
    /// Everything but `deny`: what the root policy holds.
    pub const ALL: Capabilities = Capabilities(
        Self::CREATE.0
            | Self::READ.0
            | Self::UPDATE.0
            | Self::PATCH.0
            | Self::DELETE.0
            | Self::LIST.0
            | Self::SUDO.0,
    );

    /// Alphabetical, so that [`Capabilities::names`] comes out sorted as
    /// `sys/capabilities` answers.
    const NAMES: [(&'static str, Capabilities); 8] = [
        ("create", Self::CREATE),
        ("delete", Self::DELETE),
        ("deny", Self::DENY),
        ("list", Self::LIST),
        ("patch", Self::PATCH),
        ("read", Self::READ),
        ("sudo", Self::SUDO),
        ("update", Self::UPDATE),
    ];

    pub const fn bits(self) -> u16 {
        self.0
    }

    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// True when every capability of `other` is in `self`.
    pub const fn contains(self, other: Capabilities) -> bool {
        self.0 & other.0 == other.0
    }

    /// True when `self` and `other` share a capability.
    pub const fn intersects(self, other: Capabilities) -> bool {
        self.0 & other.0 != 0
    }

    pub const fn is_deny(self) -> bool {
        self.contains(Self::DENY)
    }

    /// A capability by its policy name (`"read"`), `None` when unknown.
    pub fn from_name(name: &str) -> Option<Capabilities> {
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, c)| *c)
    }

    /// Names in alphabetical order. A set holding `deny` is just `["deny"]`:
    /// deny overrides everything else.
    pub fn names(&self) -> Vec<&'static str> {
        if self.is_deny() {
            return vec!["deny"];
        }
        Self::NAMES
            .iter()
            .filter(|(_, c)| self.contains(*c))
            .map(|(n, _)| *n)
            .collect()
    }
}

impl BitOr for Capabilities {
    type Output = Capabilities;
    fn bitor(self, rhs: Capabilities) -> Capabilities {
        Capabilities(self.0 | rhs.0)
    }
}

impl BitOrAssign for Capabilities {
    fn bitor_assign(&mut self, rhs: Capabilities) {
        self.0 |= rhs.0;
    }
}

impl fmt::Debug for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.names()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sorted_and_deny_is_exclusive() {
        let c = Capabilities::UPDATE | Capabilities::READ | Capabilities::CREATE;
        assert_eq!(c.names(), vec!["create", "read", "update"]);
        assert_eq!((c | Capabilities::DENY).names(), vec!["deny"]);
        assert!(Capabilities::NONE.names().is_empty());
        assert_eq!(Capabilities::from_name("patch"), Some(Capabilities::PATCH));
        assert_eq!(Capabilities::from_name("write"), None);
    }
}
