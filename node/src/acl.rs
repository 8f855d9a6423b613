//! Access control: which identities may produce to or consume from which streams. Rules come
//! from configuration; nothing is allowed unless a rule allows it.

use crate::config::AclRule;
use sluice_proto::{Identity, StreamName};

/// What an identity wants to do to a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Append.
    Produce,
    /// Read.
    Consume,
}

/// Compiled rules.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    rules: Vec<AclRule>,
}

/// `*` matches any run of characters (including none); everything else matches itself.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == b'*')
}

impl Acl {
    /// Rules as configured.
    pub fn new(rules: Vec<AclRule>) -> Self {
        Self { rules }
    }

    /// True when some rule lets `who` do `op` on `stream`.
    pub fn allows(&self, who: &Identity, op: Operation, stream: &StreamName) -> bool {
        let uri = who.uri();
        self.rules.iter().any(|rule| {
            let streams = match op {
                Operation::Produce => &rule.produce,
                Operation::Consume => &rule.consume,
            };
            glob_matches(&rule.identity, &uri)
                && streams.iter().any(|s| glob_matches(s, stream.as_str()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::Role;

    #[test]
    fn globs() {
        // Checks the `*` pattern language on its corner cases.
        for (p, t, want) in [
            ("*", "", true),
            ("a*", "abc", true),
            ("*c", "abc", true),
            ("a*c", "ac", true),
            ("a*c", "abd", false),
            ("abc", "ab", false),
            ("a**", "a", true),
            ("*b*", "xxbyy", true),
            ("sluice://x/edge/*", "sluice://x/admin/a", false),
        ] {
            assert_eq!(glob_matches(p, t), want, "{p} ~ {t}");
        }
    }

    #[test]
    fn nothing_is_allowed_without_a_rule() {
        // Checks that rules grant exactly their operation on their streams to their identities.
        let acl = Acl::new(vec![AclRule {
            identity: "sluice://c/edge/*".into(),
            produce: vec!["sensors*".into()],
            consume: vec![],
        }]);
        let edge = Identity::new("c", Role::Edge, "pi").unwrap();
        let admin = Identity::new("c", Role::Admin, "ops").unwrap();
        let s = StreamName::new("sensors-2").unwrap();
        assert!(acl.allows(&edge, Operation::Produce, &s));
        assert!(!acl.allows(&edge, Operation::Consume, &s));
        assert!(!acl.allows(&admin, Operation::Produce, &s));
        assert!(!acl.allows(
            &edge,
            Operation::Produce,
            &StreamName::new("security").unwrap()
        ));
    }
}
