//! [`PackagePath`]: a member name that is safe to extract (in the manner of tough's `TargetName`).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Name of member 1, the manifest.
pub const MANIFEST_NAME: &str = "govbox-manifest.json";
/// Name of member 2, the signatures over the manifest.
pub const SIGNATURES_NAME: &str = "govbox-manifest.sig";

/// The longest path a ustar header can carry (155-byte prefix, `/`, 100-byte name).
pub const MAX_PATH_LEN: usize = 255;

/// A relative, normalised, UTF-8 payload path: `a/b/c.bin`.
///
/// It refuses what could escape or confuse the extraction folder: the empty path, absolute
/// paths, `.` and `..` components, empty components (`a//b`, a trailing `/`), backslashes, NUL
/// and other control characters, paths longer than [`MAX_PATH_LEN`] bytes, and the two reserved
/// member names. Duplicates are refused where paths are collected (the manifest, the archive).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PackagePath(String);

impl PackagePath {
    /// Checks `s`; the error says why it was refused.
    pub fn new(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("the path is empty".into());
        }
        if s.len() > MAX_PATH_LEN {
            return Err(format!("the path is {} bytes, more than {MAX_PATH_LEN}", s.len()));
        }
        if s.starts_with('/') {
            return Err("absolute paths are not allowed".into());
        }
        if s.contains('\\') {
            return Err("backslashes are not allowed in paths".into());
        }
        if s.chars().any(char::is_control) {
            return Err("NUL and control characters are not allowed in paths".into());
        }
        for c in s.split('/') {
            match c {
                "" => return Err("empty path components (`//` or a trailing `/`) are not allowed".into()),
                "." | ".." => return Err(format!("`{c}` components are not allowed")),
                _ => {}
            }
        }
        if s == MANIFEST_NAME || s == SIGNATURES_NAME {
            return Err(format!("'{s}' is a reserved member name"));
        }
        Ok(Self(s.to_string()))
    }

    /// Checks a raw tar member name, refusing invalid UTF-8 first.
    pub fn from_bytes(b: &[u8]) -> Result<Self, String> {
        let s = std::str::from_utf8(b).map_err(|_| "the name is not valid UTF-8".to_string())?;
        Self::new(s)
    }

    /// The path as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The folders above this path, nearest last: `a/b/c` gives `a`, `a/b`.
    pub fn ancestors(&self) -> impl Iterator<Item = &str> {
        self.0.match_indices('/').map(|(i, _)| &self.0[..i])
    }
}

impl fmt::Display for PackagePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for PackagePath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for PackagePath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        PackagePath::new(&s).map_err(|e| serde::de::Error::custom(format!("path '{s}': {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_normal_relative_paths() {
        for ok in ["model.safetensors", "a/b/c.bin", "1_pooling/config.json", "名字.txt", "a..b", ".hidden"] {
            assert_eq!(PackagePath::new(ok).map(|p| p.to_string()), Ok(ok.to_string()));
        }
        let p = PackagePath::new("a/b/c").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.ancestors().collect::<Vec<_>>(), vec!["a", "a/b"]);
    }

    #[test]
    fn refuses_unsafe_paths_with_a_reason() {
        let cases = [
            ("", "empty"),
            ("/etc/passwd", "absolute"),
            ("../x", "`..`"),
            ("a/../../x", "`..`"),
            ("./a", "`.`"),
            ("a//b", "empty path components"),
            ("a/", "empty path components"),
            ("a\\b", "backslash"),
            ("a\0b", "NUL"),
            ("a\nb", "control"),
            (MANIFEST_NAME, "reserved"),
            (SIGNATURES_NAME, "reserved"),
        ];
        for (bad, why) in cases {
            let err = PackagePath::new(bad).err().unwrap_or_default();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
        assert!(PackagePath::new(&"a".repeat(256)).is_err());
        assert!(PackagePath::new(&"a".repeat(255)).is_ok());
        let err = PackagePath::from_bytes(b"bad\xff.bin").err().unwrap_or_default();
        assert!(err.contains("not valid UTF-8"), "{err}");
    }

    #[test]
    fn deserialize_checks_the_path() {
        let err = serde_json::from_str::<PackagePath>("\"../x\"").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("path '../x'"), "{err}");
    }
}
