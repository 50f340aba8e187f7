//! Subjects, consumer names and keys. A name made only of ASCII letters,
//! digits, `-` and `_` is used as it is; any other is written as `=` and
//! its hex, so no name can add a subject token or a wildcard.

use sha2::{Digest, Sha256};

use super::PARTITIONS;

/// Key prefix of channel switches in `sluice-state`.
pub const SWITCH: &str = "switch.";
/// Key prefix of channels' shared counts of consecutive module faults in `sluice-state`.
pub const FAULTS: &str = "faults.";
/// Key prefix of destinations' shared pauses (`Retry-After`) in `sluice-state`.
pub const PAUSE: &str = "pause.";
/// Key prefix of shared rate limits in `sluice-state`.
pub const RATE: &str = "rate.";

/// One subject token or key part for `name`.
pub fn token(name: &str) -> String {
    if !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        name.to_string()
    } else {
        format!("={}", hex::encode(name))
    }
}

/// The name behind a [`token`]; `None` if it is not one.
pub fn decode_key(token: Option<&str>) -> Option<String> {
    let token = token?;
    match token.strip_prefix('=') {
        Some(encoded) => String::from_utf8(hex::decode(encoded).ok()?).ok(),
        None => Some(token.to_string()),
    }
}

/// Where a channel's events wait for their transform.
pub fn inbound(channel: &str) -> String {
    format!("sluice.in.{}", token(channel))
}

/// The durable consumer that transforms a channel's events.
pub fn transform_consumer(channel: &str) -> String {
    format!("transform_{}", token(channel))
}

/// Where an emitted event waits for delivery.
pub fn outbound(destination: &str, partition: u32, channel: &str) -> String {
    format!("sluice.out.{}.{partition}.{}", token(destination), token(channel))
}

/// Every destination's deliveries of one channel.
pub fn outbound_of_channel(channel: &str) -> String {
    format!("sluice.out.*.*.{}", token(channel))
}

/// The durable consumer that delivers one partition of a channel's
/// deliveries to a destination (order is kept per destination, channel
/// and entity, as on SQLite; a channel switched off holds only its own).
pub fn delivery_consumer(destination: &str, channel: &str, partition: u32) -> String {
    // The digest keeps `a_b` + `c` apart from `a` + `b_c`.
    let pair = hex::encode(&Sha256::digest(format!("{destination}\0{channel}"))[..4]);
    format!(
        "deliver_{}_{}_{pair}_{partition}",
        token(destination),
        token(channel)
    )
}

/// Where a channel's dead letters are kept; `None` parts are wildcards.
pub fn dead(tenant: Option<&str>, channel: Option<&str>) -> String {
    let part = |name: Option<&str>| name.map_or("*".to_string(), token);
    format!("sluice.dead.{}.{}", part(tenant), part(channel))
}

/// The partition of an entity key: stable on every node and version.
pub fn partition(entity_key: &str) -> u32 {
    let digest = Sha256::digest(entity_key.as_bytes());
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]) % PARTITIONS
}

/// The `sluice-ids` key of an event id.
pub fn event_id_key(tenant: &str, id: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(tenant.as_bytes());
    hasher.update([0]);
    hasher.update(id.as_bytes());
    hex::encode(&hasher.finalize()[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_add_tokens_or_wildcards() {
        assert_eq!(token("b2b-portal_1"), "b2b-portal_1");
        for hostile in ["a.b", "*", ">", "a b", "", "é"] {
            let encoded = token(hostile);
            assert!(encoded.starts_with('='), "{hostile:?} -> {encoded}");
            assert!(!encoded.contains(['.', '*', '>', ' ']));
            assert_eq!(decode_key(Some(&encoded)).as_deref(), Some(hostile));
        }
        assert_eq!(inbound("a.b"), "sluice.in.=612e62");
    }

    #[test]
    fn partitions_are_stable_and_spread() {
        assert_eq!(partition("SKU-1"), partition("SKU-1"));
        let used: std::collections::BTreeSet<u32> =
            (0..1000).map(|i| partition(&format!("SKU-{i}"))).collect();
        assert_eq!(used.len(), PARTITIONS as usize);
    }
}
