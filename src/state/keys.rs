//! Redis key names: `<prefix>:{<tenant>}:<kind>:<rule>:<key>`.
//!
//! The tenant sits in a hash tag (`{…}`), so every key one batch touches (one push has one
//! tenant) maps to the same Redis Cluster slot and one script may use them all. Components are
//! escaped so that no client-chosen text (a tenant id, a host label, a path) can forge a
//! separator or a hash tag: `%`, `:`, `{`, `}`, and bytes below 0x21 (space, controls) become
//! `%XX`. Rule ids are escaped the same way, though config already restricts them.

use std::fmt::Write as _;

/// What a key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// Hash: the newest event time (`T`) and, for `count` windows, one field per bucket.
    Window,
    /// Sorted set of a `distinct` window: value hash → newest occurrence (ms).
    Distinct,
    /// List of JSON samples, newest pushed first.
    Samples,
    /// String: the replica that claimed the incident.
    Claim,
}

impl KeyKind {
    fn tag(self) -> &'static str {
        match self {
            KeyKind::Window => "w",
            KeyKind::Distinct => "d",
            KeyKind::Samples => "s",
            KeyKind::Claim => "c",
        }
    }
}

/// Appends `s` to `out` with `%`, `:`, `{`, `}` and bytes below 0x21 written as `%XX`.
pub fn push_escaped(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '%' | ':' | '{' | '}' | '\u{0}'..='\u{20}' | '\u{7f}' => {
                let _ = write!(out, "%{:02X}", c as u32);
            }
            _ => out.push(c),
        }
    }
}

/// Returns the name of the `kind` key of (tenant, rule, key) under `prefix`.
pub fn key_name(prefix: &str, tenant: &str, kind: KeyKind, rule: &str, key: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + tenant.len() + rule.len() + key.len() + 8);
    out.push_str(prefix);
    out.push_str(":{");
    if tenant.is_empty() {
        // `{}` is no hash tag at all; a lone `%` cannot come out of escaping.
        out.push('%');
    } else {
        push_escaped(&mut out, tenant);
    }
    out.push_str("}:");
    out.push_str(kind.tag());
    out.push(':');
    push_escaped(&mut out, rule);
    out.push(':');
    push_escaped(&mut out, key);
    out
}

/// Returns the hash tag of a key name (the text between the first `{` and the next `}`), the
/// part Redis Cluster hashes to pick a slot.
pub fn hash_tag(name: &str) -> Option<&str> {
    let open = name.find('{')?;
    let close = name[open + 1..].find('}')? + open + 1;
    (close > open + 1).then(|| &name[open + 1..close])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_prefix_tenant_tag_kind_rule_and_key() {
        assert_eq!(
            key_name(
                "logwarden",
                "fake",
                KeyKind::Window,
                "ssh-brute-force",
                "203.0.113.7"
            ),
            "logwarden:{fake}:w:ssh-brute-force:203.0.113.7"
        );
        assert_eq!(
            key_name("lw", "acme", KeyKind::Claim, "segfault-burst", "web1,nginx"),
            "lw:{acme}:c:segfault-burst:web1,nginx"
        );
    }

    #[test]
    fn separators_and_braces_in_components_are_escaped() {
        let k = key_name("lw", "a}b:{c", KeyKind::Samples, "r", "2001:db8::1 {x}%");
        assert_eq!(k, "lw:{a%7Db%3A%7Bc}:s:r:2001%3Adb8%3A%3A1%20%7Bx%7D%25");
        assert_eq!(hash_tag(&k), Some("a%7Db%3A%7Bc"));
        // Exactly four unescaped separators: prefix, tenant, kind, rule, key.
        assert_eq!(k.matches(':').count(), 4);
    }

    #[test]
    fn distinct_components_give_distinct_names() {
        let a = key_name("lw", "t", KeyKind::Window, "r:x", "k");
        let b = key_name("lw", "t", KeyKind::Window, "r", "x:k");
        assert_ne!(a, b);
        let c = key_name("lw", "", KeyKind::Window, "r", "k");
        assert_eq!(hash_tag(&c), Some("%"));
    }

    #[test]
    fn all_keys_of_one_tenant_share_a_hash_tag() {
        let kinds = [
            KeyKind::Window,
            KeyKind::Distinct,
            KeyKind::Samples,
            KeyKind::Claim,
        ];
        for kind in kinds {
            let name = key_name("lw", "tenant-1", kind, "rule", "key");
            assert_eq!(hash_tag(&name), Some("tenant-1"));
        }
    }
}
