//! Client names and client settings: the values a client record may hold.

use std::fmt;
use std::str::FromStr;

use super::{ALL_MODELS, Scope};
use crate::error::{ProvisionError, Result};

/// A client's name: `[a-z0-9][a-z0-9._-]{0,62}`.
///
/// The name becomes a certificate's CN, a file name (`NAME.crt`) and a label in the audit log, so
/// it may not hold upper case, spaces, slashes or anything that would need quoting.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientName(String);

impl ClientName {
    /// The longest name accepted.
    pub const MAX_LEN: usize = 63;

    /// Checks a name.
    pub fn parse(name: &str) -> Result<Self> {
        let invalid =
            |reason: &str| ProvisionError::InvalidClientName { name: name.to_string(), reason: reason.to_string() };
        let bytes = name.as_bytes();
        let Some(&first) = bytes.first() else {
            return Err(invalid("the name is empty"));
        };
        if bytes.len() > Self::MAX_LEN {
            return Err(invalid("at most 63 characters are allowed"));
        }
        if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
            return Err(invalid("the name must start with a lower-case letter or a digit"));
        }
        let ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-');
        if !bytes.iter().all(|&b| ok(b)) {
            return Err(invalid("only a-z, 0-9, '.', '_' and '-' are allowed"));
        }
        Ok(ClientName(name.to_string()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ClientName {
    type Err = ProvisionError;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl fmt::Display for ClientName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Refuses a model that the box does not know, when the caller could read what it knows (the
/// model store, and the daemon's served models): a typo would otherwise leave a client that can
/// use nothing, or one that gains a model imported later under that name. A box that knows no
/// model yet (clients are enrolled before the first import) has nothing to check against.
pub fn check_known_models(client: &str, models: &[String], known: &[String]) -> Result<()> {
    if known.is_empty() {
        return Ok(());
    }
    match models.iter().find(|m| m.as_str() != ALL_MODELS && !known.contains(m)) {
        None => Ok(()),
        Some(m) => Err(ProvisionError::InvalidClientSetting {
            name: client.to_string(),
            reason: format!(
                "model '{m}' is not on this box (known: {}); import it first, or check the name",
                known.join(", ")
            ),
        }),
    }
}

/// Checks and de-duplicates the scopes; at least one is needed.
pub(crate) fn check_scopes(client: &str, scopes: &[Scope]) -> Result<Vec<Scope>> {
    if scopes.is_empty() {
        return Err(ProvisionError::InvalidClientSetting {
            name: client.to_string(),
            reason: "give at least one scope (inference, metrics)".into(),
        });
    }
    Ok(Scope::ALL.into_iter().filter(|s| scopes.contains(s)).collect())
}

/// Checks and de-duplicates a list of allowed model names, as stored: empty means every model.
///
/// An inference client must choose: names, or exactly [`ALL_MODELS`] for every present and
/// future model; no choice is refused rather than read as "all". A client without the
/// inference scope uses no model, so naming some is a mistake.
pub(crate) fn check_models(client: &str, models: &[String], inference: bool) -> Result<Vec<String>> {
    let invalid = |reason: &str| ProvisionError::InvalidClientSetting { name: client.into(), reason: reason.into() };
    if !inference {
        return match models.is_empty() {
            true => Ok(Vec::new()),
            false => Err(invalid("models are given to inference clients only; add the inference scope or drop them")),
        };
    }
    if models.is_empty() {
        return Err(invalid("choose the models it may use: --models NAME[,NAME...], or --models all for every model"));
    }
    if models.iter().any(|m| m == ALL_MODELS) {
        return match models.iter().all(|m| m == ALL_MODELS) {
            true => Ok(Vec::new()),
            false => Err(invalid("'all' already names every model; give either 'all' or model names")),
        };
    }
    let mut out: Vec<String> = Vec::with_capacity(models.len());
    for m in models {
        let bad = m.is_empty()
            || m.len() > 128
            || m.chars().any(|c| c.is_whitespace() || c.is_control() || c == ',' || c == '"');
        if bad {
            return Err(ProvisionError::InvalidClientSetting {
                name: client.to_string(),
                reason: format!("model name {m:?} must be 1 to 128 characters without spaces, commas or quotes"),
            });
        }
        if !out.contains(m) {
            out.push(m.clone());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn good_names_are_accepted() {
        for n in ["a", "0", "hr-portal", "app.v2_prod", &"a".repeat(63)] {
            assert_eq!(ClientName::parse(n).unwrap().as_str(), n);
        }
    }

    #[test]
    fn bad_names_are_refused_with_a_reason() {
        for (n, why) in [
            ("", "empty"),
            ("-a", "start with"),
            (".a", "start with"),
            ("_a", "start with"),
            ("Hr", "start with"),
            ("hR", "only a-z"),
            ("a b", "only a-z"),
            ("a/b", "only a-z"),
            ("../x", "start with"),
            ("é", "start with"),
            (&"a".repeat(64), "63"),
        ] {
            let err = ClientName::parse(n).unwrap_err();
            assert!(err.to_string().contains(why), "{n:?}: {err}");
        }
    }

    #[test]
    fn models_are_checked_and_deduplicated() {
        let m = check_models("c", &["qwen2".into(), "bge".into(), "qwen2".into()], true).unwrap();
        assert_eq!(m, ["qwen2", "bge"]);
        assert!(check_models("c", &["".into()], true).is_err());
        assert!(check_models("c", &["a b".into()], true).is_err());
    }

    #[test]
    fn every_model_must_be_chosen_explicitly() {
        let none = check_models("c", &[], true).unwrap_err().to_string();
        assert!(none.contains("--models all"), "{none}");
        assert_eq!(check_models("c", &["all".into()], true).unwrap(), Vec::<String>::new());
        assert!(check_models("c", &["all".into(), "qwen2".into()], true).is_err());
        assert_eq!(check_models("c", &[], false).unwrap(), Vec::<String>::new());
        assert!(check_models("c", &["qwen2".into()], false).is_err());
        assert!(check_scopes("c", &[]).is_err());
        assert_eq!(check_scopes("c", &[Scope::Metrics, Scope::Inference]).unwrap(), [Scope::Inference, Scope::Metrics]);
    }
}
