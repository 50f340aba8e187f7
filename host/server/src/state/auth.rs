//! Who is calling: bearer tokens, kept only as SHA-256 hashes and compared
//! in constant time. A tenant sees and changes only its own resources; an
//! admin manages tenants and tokens and may act for every tenant.

use std::collections::HashMap;
use std::sync::RwLock;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// An admin token.
    Admin,
    /// A tenant's token.
    Tenant(String),
    /// The metrics token (may only read `/metrics`).
    Metrics,
}

impl Caller {
    /// Whether this caller may act on `tenant`'s resources.
    pub fn may_act_for(&self, tenant: &str) -> bool {
        match self {
            Caller::Admin => true,
            Caller::Tenant(own) => own == tenant,
            Caller::Metrics => false,
        }
    }

    /// The tenant this caller is limited to, if any (admins see all).
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Caller::Tenant(own) => Some(own),
            _ => None,
        }
    }
}

/// The SHA-256 of a token, in hex: what configs and the store keep.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new random token (256 bits, hex).
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source");
    format!("slc_{}", hex::encode(bytes))
}

/// Every known token hash with its caller, once each: a token added again
/// (shared state replayed after a reconnect) replaces itself, so the set
/// grows only with new tokens.
#[derive(Default)]
pub struct Tokens {
    known: RwLock<HashMap<[u8; 32], Caller>>,
}

impl Tokens {
    /// Adds a token, by the hex SHA-256 of its text; ignores a malformed hash.
    pub fn add(&self, sha256_hex: &str, caller: Caller) {
        let mut hash = [0u8; 32];
        if hex::decode_to_slice(sha256_hex, &mut hash).is_ok() {
            self.known.write().expect("tokens lock").insert(hash, caller);
        }
    }

    /// How many tokens are known.
    pub fn len(&self) -> usize {
        self.known.read().expect("tokens lock").len()
    }

    /// Whether no token is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The caller of an `Authorization: Bearer …` header, if the token is
    /// known. The lookup is by the SHA-256 of the presented token, which
    /// tells a timing observer nothing about any token; the found hash is
    /// compared once more in constant time.
    pub fn caller(&self, authorization: Option<&str>) -> Option<Caller> {
        let token = authorization?.strip_prefix("Bearer ")?.trim();
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let known = self.known.read().expect("tokens lock");
        let (hash, caller) = known.get_key_value(&presented)?;
        bool::from(hash.ct_eq(&presented)).then(|| caller.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_added_again_is_kept_once() {
        let tokens = Tokens::default();
        for _ in 0..1000 {
            tokens.add(&hash_token("a-secret"), Caller::Tenant("acme".into()));
        }
        tokens.add(&hash_token("root"), Caller::Admin);
        assert_eq!(tokens.len(), 2);
        assert_eq!(
            tokens.caller(Some("Bearer a-secret")),
            Some(Caller::Tenant("acme".into()))
        );
    }

    #[test]
    fn only_a_known_token_names_its_caller() {
        let tokens = Tokens::default();
        tokens.add(&hash_token("a-secret"), Caller::Tenant("acme".into()));
        tokens.add(&hash_token("root"), Caller::Admin);
        assert_eq!(
            tokens.caller(Some("Bearer a-secret")),
            Some(Caller::Tenant("acme".into()))
        );
        assert_eq!(tokens.caller(Some("Bearer root")), Some(Caller::Admin));
        assert_eq!(tokens.caller(Some("Bearer a-secreT")), None);
        assert_eq!(tokens.caller(Some("a-secret")), None);
        assert_eq!(tokens.caller(None), None);
        let fresh = new_token();
        assert_ne!(fresh, new_token());
        assert_eq!(fresh.len(), 4 + 64);
    }

    #[test]
    fn tenants_act_only_for_themselves() {
        let acme = Caller::Tenant("acme".into());
        assert!(acme.may_act_for("acme"));
        assert!(!acme.may_act_for("globex"));
        assert!(Caller::Admin.may_act_for("globex"));
        assert!(!Caller::Metrics.may_act_for("acme"));
    }
}
