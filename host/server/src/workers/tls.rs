//! TLS for deliveries to `https://` destinations (rustls with the ring
//! provider): the system's trust store, plus a destination's own `ca-file`.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// The client TLS settings of a destination: trusted roots are the
/// system's certificates and those in `ca_file` (PEM), if given.
pub fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        // A system certificate rustls cannot use is skipped, as browsers do.
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|err| format!("cannot read ca-file `{}`: {err}", path.display()))?;
        let mut added = 0;
        for cert in certs {
            let cert = cert.map_err(|err| format!("ca-file `{}`: {err}", path.display()))?;
            roots
                .add(cert)
                .map_err(|err| format!("ca-file `{}`: {err}", path.display()))?;
            added += 1;
        }
        if added == 0 {
            return Err(format!("ca-file `{}` holds no PEM certificate", path.display()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| err.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
