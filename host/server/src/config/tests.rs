//! Parsing `sluice.toml`: examples and properties.

use super::*;

#[test]
fn a_rate_shows_as_it_was_configured() {
    for text in ["60/min", "10/s", "1000/h"] {
        assert_eq!(text.parse::<RateLimit>().unwrap().to_string(), text);
    }
    assert_eq!("5/second".parse::<RateLimit>().unwrap().to_string(), "5/s");
}

const GOOD: &str = r#"
    listen = "127.0.0.1:0"

    [[channel]]
    name = "b2b"
    tenant = "acme"
    [[channel.step]]
    module = "magento-source"
    [[channel.step]]
    module = "b2b-portal"
    config = { max-title = 80 }
"#;

#[test]
fn a_good_config_parses_with_defaults() {
    let config = ServerConfig::parse(GOOD).unwrap();
    assert_eq!(config.channels[0].steps.len(), 2);
    assert_eq!(config.channels[0].steps[1].config["max-title"], 80);
    assert_eq!(config.max_body_bytes, 8 << 20);
}

#[test]
fn unknown_keys_are_named() {
    let err = ServerConfig::parse(&GOOD.replace("tenant =", "tennant =")).unwrap_err();
    assert!(
        err.contains("channel[0]") && err.contains("unknown field `tennant`"),
        "{err}"
    );
    let err = ServerConfig::parse("listen = 5").unwrap_err();
    assert!(err.contains("listen"), "{err}");
}

#[test]
fn destinations_and_rates_parse_and_are_checked() {
    let text = GOOD.replace("tenant = \"acme\"", "tenant = \"acme\"\ndestination = \"portal\"")
        + "\n[[destination]]\nname = \"portal\"\nurl = \"http://127.0.0.1:9/in\"\nrate-limit = \"60/min\"\n";
    let config = ServerConfig::parse(&text).unwrap();
    let rate = config.destinations[0].rate_limit.unwrap();
    assert_eq!(rate.per_second(), 1.0);
    assert_eq!(config.channels[0].destination.as_deref(), Some("portal"));
    assert!(config.channels[0].enabled);

    let err = ServerConfig::parse(&text.replace("60/min", "60/fortnight")).unwrap_err();
    assert!(
        err.contains("rate-limit") && err.contains("60/fortnight"),
        "{err}"
    );
    let err = ServerConfig::parse(&text.replace("name = \"portal\"", "name = \"other\"")).unwrap_err();
    assert!(err.contains("destination `portal` is not defined"), "{err}");
    let err = ServerConfig::parse(&text.replace("http://", "ftp://")).unwrap_err();
    assert!(err.contains("must be an http:// or https:// URL"), "{err}");
    assert!(ServerConfig::parse(&text.replace("http://", "https://")).is_ok());

    // Coalescing keeps only a key's latest output: a PATCH is no whole state.
    let latest = text.replace("rate-limit = \"60/min\"", "coalesce = true\nmethod = \"PATCH\"");
    let err = ServerConfig::parse(&latest).unwrap_err();
    assert!(err.contains("coalesce") && err.contains("PATCH"), "{err}");
    assert!(ServerConfig::parse(&latest.replace("PATCH", "PUT")).is_ok());
    // Shares are 1 to 100.
    let shares = text.replace("rate-limit = \"60/min\"", "priority = { inventory = 0 }");
    let err = ServerConfig::parse(&shares).unwrap_err();
    assert!(err.contains("priority.inventory"), "{err}");
}

#[test]
fn duplicate_channels_are_refused() {
    let twice = format!("{GOOD}\n{}", &GOOD[GOOD.find("[[channel]]").unwrap()..]);
    assert_eq!(
        ServerConfig::parse(&twice).unwrap_err(),
        "channel `b2b` is defined twice"
    );
}
#[cfg(test)]
mod prop_tests {
    use proptest::prelude::*;

    use super::*;

    const FULL: &str = r#"
listen = "127.0.0.1:0"
max-body-bytes = 1000
[limits]
timeout-ms = 100
[[tenant]]
name = "acme"
ingest-rate = "10/s"
[[destination]]
name = "portal"
url = "http://127.0.0.1:9/in"
rate-limit = "60/min"
headers = { authorization = "Bearer x" }
[[channel]]
name = "b2b"
tenant = "acme"
destination = "portal"
[[channel.step]]
module = "b2b-portal"
"#;

    proptest! {
        /// Arbitrary text is refused with a message, never a panic.
        #[test]
        fn prop_any_text_parses_or_is_refused(text in "\\PC{0,300}") {
            let _ = ServerConfig::parse(&text);
        }

        /// A real config with one byte replaced: parsed or refused, never a panic.
        #[test]
        fn prop_a_damaged_config_is_refused_or_parsed(at in 0usize..FULL.len(), byte in any::<u8>()) {
            let mut bytes = FULL.as_bytes().to_vec();
            bytes[at] = byte;
            if let Ok(text) = String::from_utf8(bytes) {
                let _ = ServerConfig::parse(&text);
            }
        }
    }

    #[test]
    fn the_full_config_parses() {
        ServerConfig::parse(FULL).unwrap();
    }

    #[test]
    fn invalid_headers_and_shared_token_hashes_are_refused() {
        let err = ServerConfig::parse(&FULL.replace("Bearer x", "Bearer\\nx")).unwrap_err();
        assert!(err.contains("header `authorization`"), "{err}");
        let hash = "ab".repeat(32);
        let shared = format!(
            "admin-token-sha256 = [\"{hash}\"]\n{}",
            FULL.replace(
                "ingest-rate",
                &format!("token-sha256 = [\"{hash}\"]\ningest-rate")
            )
        );
        let err = ServerConfig::parse(&shared).unwrap_err();
        assert!(err.contains("both the admin and tenant `acme`"), "{err}");
    }
}

#[test]
fn a_state_quota_whose_values_cannot_fit_a_message_is_refused() {
    let config = ServerConfig::parse(GOOD).unwrap();
    assert_eq!(config.state_quota, sluice_engine::state::StateQuota::default());
    let err =
        ServerConfig::parse(&format!("{GOOD}\n[state-quota]\nmax-value-bytes = 10000000\n")).unwrap_err();
    assert!(err.contains("max-value-bytes is at most 262144"), "{err}");
    let ok = ServerConfig::parse(&format!("{GOOD}\n[state-quota]\nmax-keys = 10\n")).unwrap();
    assert_eq!(ok.state_quota.max_keys, 10);
}
