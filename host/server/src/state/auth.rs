//! Who is calling: bearer tokens, kept only as SHA-256 hashes and compared
//! in constant time. A tenant sees and changes only its own resources; an
//! admin manages tenants and tokens and may act for every tenant.

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

/// Every known token hash with its caller.
#[derive(Default)]
pub struct Tokens {
    known: RwLock<Vec<([u8; 32], Caller)>>,
}

impl Tokens {
    /// Adds a token, by the hex SHA-256 of its text; ignores a malformed hash.
    pub fn add(&self, sha256_hex: &str, caller: Caller) {
        let mut hash = [0u8; 32];
        if hex::decode_to_slice(sha256_hex, &mut hash).is_ok() {
            self.known.write().expect("tokens lock").push((hash, caller));
        }
    }

    /// The caller of an `Authorization: Bearer …` header, if the token is known.
    /// Every known hash is compared, in constant time, whatever matches.
    pub fn caller(&self, authorization: Option<&str>) -> Option<Caller> {
        let token = authorization?.strip_prefix("Bearer ")?.trim();
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (hash, caller) in self.known.read().expect("tokens lock").iter() {
            if bool::from(hash.ct_eq(&presented)) {
                found = Some(caller.clone());
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
