//! [`Version`]: a Semantic Versioning 2.0.0 version, parsed strictly, ordered by precedence.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A SemVer 2.0.0 version such as `1.2.0`, `2.0.0-rc.1` or `1.0.0+build.5`.
///
/// Ordering follows SemVer precedence (a pre-release sorts before its release; numeric
/// identifiers compare as numbers); build metadata, which precedence ignores, breaks ties so that
/// the order agrees with equality.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Version {
    major: u64,
    minor: u64,
    patch: u64,
    pre: Vec<Ident>,
    text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Ident {
    Num(u64),
    Alpha(String),
}

impl Ord for Ident {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Ident::Num(a), Ident::Num(b)) => a.cmp(b),
            (Ident::Num(_), Ident::Alpha(_)) => Ordering::Less,
            (Ident::Alpha(_), Ident::Num(_)) => Ordering::Greater,
            (Ident::Alpha(a), Ident::Alpha(b)) => a.cmp(b),
        }
    }
}

impl PartialOrd for Ident {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

fn numeric(s: &str, what: &str) -> Result<u64, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("the {what} '{s}' is not a number"));
    }
    if s.len() > 1 && s.starts_with('0') {
        return Err(format!("the {what} '{s}' has a leading zero"));
    }
    s.parse().map_err(|_| format!("the {what} '{s}' is too large"))
}

fn identifiers<'a>(s: &'a str, what: &str) -> Result<Vec<&'a str>, String> {
    let ids: Vec<&str> = s.split('.').collect();
    for id in &ids {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(format!("the {what} identifier '{id}' must be non-empty [0-9A-Za-z-]"));
        }
    }
    Ok(ids)
}

impl Version {
    /// Parses `MAJOR.MINOR.PATCH[-PRE][+BUILD]`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let err = |why: String| format!("'{s}' is not a semantic version (MAJOR.MINOR.PATCH): {why}");
        if s.len() > 128 {
            return Err(err("longer than 128 bytes".into()));
        }
        let (rest, build) = match s.split_once('+') {
            Some((r, b)) => (r, Some(b)),
            None => (s, None),
        };
        if let Some(b) = build {
            identifiers(b, "build").map_err(err)?;
        }
        let (core, pre) = match rest.split_once('-') {
            Some((c, p)) => (c, Some(p)),
            None => (rest, None),
        };
        let parts: Vec<&str> = core.split('.').collect();
        let [major, minor, patch] = parts.as_slice() else {
            return Err(err(format!("expected three numbers, found {}", parts.len())));
        };
        let mut pre_ids = Vec::new();
        if let Some(p) = pre {
            for id in identifiers(p, "pre-release").map_err(err)? {
                if id.bytes().all(|b| b.is_ascii_digit()) {
                    pre_ids.push(Ident::Num(numeric(id, "pre-release identifier").map_err(err)?));
                } else {
                    pre_ids.push(Ident::Alpha(id.to_string()));
                }
            }
        }
        Ok(Self {
            major: numeric(major, "major version").map_err(err)?,
            minor: numeric(minor, "minor version").map_err(err)?,
            patch: numeric(patch, "patch version").map_err(err)?,
            pre: pre_ids,
            text: s.to_string(),
        })
    }

    /// The version as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// `(major, minor, patch)`.
    pub fn triple(&self) -> (u64, u64, u64) {
        (self.major, self.minor, self.patch)
    }

    /// Whether this is a pre-release (`1.0.0-rc.1`).
    pub fn is_prerelease(&self) -> bool {
        !self.pre.is_empty()
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.triple()
            .cmp(&other.triple())
            .then_with(|| match (self.pre.is_empty(), other.pre.is_empty()) {
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                (false, false) => self.pre.cmp(&other.pre),
            })
            .then_with(|| self.text.cmp(&other.text))
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl FromStr for Version {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse(s)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Version {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Version::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn precedence_follows_the_semver_spec_example() {
        // The chain from semver.org §11.
        let chain = [
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-alpha.beta",
            "1.0.0-beta",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0-rc.1",
            "1.0.0",
            "1.0.1",
            "1.2.0",
            "1.10.0",
            "2.0.0",
        ];
        for w in chain.windows(2) {
            assert!(Version::parse(w[0]).unwrap() < Version::parse(w[1]).unwrap(), "{} < {}", w[0], w[1]);
        }
        assert!(Version::parse("1.0.0-rc.1").unwrap().is_prerelease());
        assert_eq!(Version::parse("1.0.0+b.01").unwrap().as_str(), "1.0.0+b.01");
    }

    #[test]
    fn rejects_malformed_versions() {
        for bad in
            ["", "1", "1.0", "1.0.0.0", "01.0.0", "1.0.0-", "1.0.0-01", "1.0.0+", "v1.0.0", "1.0.0-a..b", "1.x.0"]
        {
            assert!(Version::parse(bad).is_err(), "{bad}");
        }
        let e = Version::parse("1.02.0").unwrap_err();
        assert!(e.contains("leading zero"), "{e}");
    }
}
