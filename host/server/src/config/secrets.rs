//! Where a secret comes from: the operator's environment or a file (in
//! `sluice.toml`), or inline from a tenant through the API, kept in the
//! store and never read back.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Secrets a tenant sent with an entry through the API, by key (`secret`,
/// `auth.client-secret`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InlineSecrets(pub BTreeMap<String, String>);

impl InlineSecrets {
    /// The secret at `key` if it was sent inline, else the one `env` or
    /// `file` names; `None` if none is configured.
    pub fn resolve(
        &self,
        key: &str,
        env: Option<&str>,
        file: Option<&Path>,
        base: &Path,
    ) -> Result<Option<String>, String> {
        if let Some(secret) = self.0.get(key) {
            return Ok(Some(secret.clone()));
        }
        match (env, file) {
            (Some(name), _) => std::env::var(name)
                .map(|secret| Some(secret.trim().to_string()))
                .map_err(|_| format!("the environment variable `{name}` is not set")),
            (None, Some(file)) => {
                let path = if file.is_relative() {
                    base.join(file)
                } else {
                    file.to_path_buf()
                };
                std::fs::read_to_string(&path)
                    .map(|text| Some(text.trim().to_string()))
                    .map_err(|err| format!("the secret file cannot be read ({})", err.kind()))
            }
            (None, None) => Ok(None),
        }
    }

    /// Takes the secrets at `keys` (dotted: `auth.bearer`) out of `entry`,
    /// so that what is left is the entry's settings. Each must be a string.
    pub fn split(entry: &mut serde_json::Value, keys: &[&str]) -> Result<Self, String> {
        let mut secrets = BTreeMap::new();
        for key in keys {
            let (table, field) = match key.split_once('.') {
                Some((table, field)) => (Some(table), field),
                None => (None, *key),
            };
            let holder = match table {
                Some(table) => entry.get_mut(table),
                None => Some(&mut *entry),
            };
            let Some(object) = holder.and_then(|h| h.as_object_mut()) else {
                continue;
            };
            match object.remove(field) {
                Some(serde_json::Value::String(secret)) if !secret.is_empty() && secret.len() <= 4096 => {
                    secrets.insert(key.to_string(), secret);
                }
                Some(_) => return Err(format!("`{key}` must be a string of 1 to 4096 bytes")),
                None => {}
            }
        }
        Ok(Self(secrets))
    }

    /// Writes `"set"` at each secret's key in `entry`: what a tenant reads back.
    pub fn mask(&self, entry: &mut serde_json::Value) {
        for key in self.0.keys() {
            let (table, field) = match key.split_once('.') {
                Some((table, field)) => (Some(table), field),
                None => (None, key.as_str()),
            };
            let holder = match table {
                Some(table) => entry.get_mut(table),
                None => Some(&mut *entry),
            };
            if let Some(object) = holder.and_then(|h| h.as_object_mut()) {
                object.insert(field.to_string(), "set".into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_split_out_and_read_back_masked() {
        let mut entry =
            serde_json::json!({"name": "pos", "secret": "s3", "auth": {"bearer": "tok", "kind": "bearer"}});
        let secrets = InlineSecrets::split(&mut entry, &["secret", "auth.bearer", "auth.password"]).unwrap();
        assert_eq!(
            entry,
            serde_json::json!({"name": "pos", "auth": {"kind": "bearer"}})
        );
        assert_eq!(secrets.0.len(), 2);
        let base = Path::new(".");
        assert_eq!(
            secrets
                .resolve("auth.bearer", None, None, base)
                .unwrap()
                .as_deref(),
            Some("tok")
        );
        assert_eq!(secrets.resolve("auth.password", None, None, base).unwrap(), None);
        secrets.mask(&mut entry);
        assert_eq!(entry["secret"], "set");
        assert_eq!(entry["auth"]["bearer"], "set");
        let mut bad = serde_json::json!({"secret": 5});
        assert!(InlineSecrets::split(&mut bad, &["secret"]).is_err());
    }
}
