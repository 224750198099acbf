//! TLS for the node's listeners (HTTP, MQTT): a certificate and key from PEM files, or, for
//! MQTT when none is configured, a self-signed certificate made at first start and kept in
//! the state dir, its SHA-256 fingerprint beside it for clients to pin.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::config::MqttConfig;
use crate::error::{Error, Result};

/// Where the generated MQTT certificate lives in the state dir.
pub const MQTT_TLS_DIR: &str = "mqtt-tls";

/// A TLS acceptor serving `cert` (a PEM chain) with `key`; `keys` names the config keys
/// for errors, e.g. "http.tls_cert/tls_key".
pub fn acceptor(cert: &Path, key: &Path, keys: (&str, &str)) -> Result<tokio_rustls::TlsAcceptor> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| Error::invalid(format!("{} {}: {e}", keys.0, cert.display())))?;
    if certs.is_empty() {
        return Err(Error::invalid(format!(
            "{} {}: no certificate in it",
            keys.0,
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| Error::invalid(format!("{} {}: {e}", keys.1, key.display())))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::internal(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| Error::invalid(format!("{}/{}: {e}", keys.0, keys.1)))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// The MQTT listener's acceptor: `mqtt.tls_cert` and `mqtt.tls_key`, else the generated
/// certificate ([`mqtt_self_signed`]).
pub fn mqtt_acceptor(mqtt: &MqttConfig, state_dir: &Path) -> Result<tokio_rustls::TlsAcceptor> {
    let keys = ("mqtt.tls_cert", "mqtt.tls_key");
    match (&mqtt.tls_cert, &mqtt.tls_key) {
        (Some(cert), Some(key)) => acceptor(cert, key, keys),
        (None, None) => {
            let (cert, key) = mqtt_self_signed(state_dir)?;
            acceptor(&cert, &key, keys)
        }
        _ => Err(Error::invalid(
            "set both mqtt.tls_cert and mqtt.tls_key, or neither (a certificate is then made)",
        )),
    }
}

/// The generated MQTT certificate and key in `<state_dir>/mqtt-tls/` (made on first use,
/// for the host name and `apiary.local`), with `cert.sha256`, its fingerprint.
pub fn mqtt_self_signed(state_dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let dir = state_dir.join(MQTT_TLS_DIR);
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(&dir)?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let mut names = vec!["apiary.local".to_string(), "localhost".to_string()];
    if !host.is_empty() {
        names.insert(0, format!("{host}.local"));
        names.insert(0, host);
    }
    let made = rcgen::generate_simple_self_signed(names)
        .map_err(|e| Error::internal(format!("making the MQTT certificate: {e}")))?;
    let fingerprint: String = Sha256::digest(made.cert.der())
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    crate::secret::write_private(&key, made.signing_key.serialize_pem().as_bytes())?;
    crate::secret::write_private(
        &dir.join("cert.sha256"),
        format!("{fingerprint}\n").as_bytes(),
    )?;
    // The certificate last: its presence says the set is complete.
    crate::secret::write_private(&cert, made.cert.pem().as_bytes())?;
    tracing::info!(cert = %cert.display(), sha256 = %fingerprint, "made a certificate for MQTT over TLS");
    Ok((cert, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_is_made_once_with_its_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = mqtt_self_signed(dir.path()).unwrap();
        let pem = std::fs::read_to_string(&cert).unwrap();
        assert!(pem.contains("BEGIN CERTIFICATE"));
        let fp = std::fs::read_to_string(dir.path().join("mqtt-tls/cert.sha256")).unwrap();
        assert_eq!(fp.trim().split(':').count(), 32);
        mqtt_self_signed(dir.path()).unwrap();
        assert_eq!(std::fs::read_to_string(&cert).unwrap(), pem, "kept");
        assert!(acceptor(&cert, &key, ("c", "k")).is_ok());
        let half = MqttConfig {
            tls_cert: Some(cert),
            ..MqttConfig::default()
        };
        assert!(mqtt_acceptor(&half, dir.path()).is_err());
    }
}
