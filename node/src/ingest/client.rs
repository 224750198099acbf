//! The connection to an external broker (TCP or TLS): subscribed to the routes' filters,
//! each publish handed to the intake, acked (manually) once the intake has stored it.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::intake::{Ack, Arrival};
use crate::config::MqttConfig;
use crate::error::{Error, Result};

/// (host, port, TLS?) of a broker URL.
pub(super) fn parse_mqtt_url(url: &str) -> Result<(String, u16, bool)> {
    let bad = |why: &str| {
        Error::invalid(format!(
            "bad mqtt.url {url:?}: {why}; write mqtt://host:port or mqtts://host:port"
        ))
    };
    let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
    let tls = match scheme {
        "mqtt" | "tcp" => false,
        "mqtts" | "ssl" => true,
        _ => return Err(bad("unknown scheme")),
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().map_err(|_| bad("bad port"))?),
        None => (rest, if tls { 8883 } else { 1883 }),
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    Ok((host.to_string(), port, tls))
}

/// TLS to the broker: its certificate must chain to `ca_file` (or the system's roots).
pub(super) fn tls_transport(mqtt: &MqttConfig) -> Result<rumqttc::Transport> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match &mqtt.ca_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| Error::invalid(format!("mqtt.ca_file {}: {e}", path.display())))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert
                    .map_err(|e| Error::invalid(format!("mqtt.ca_file {}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| Error::invalid(format!("mqtt.ca_file {}: {e}", path.display())))?;
            }
            if roots.is_empty() {
                return Err(Error::invalid(format!(
                    "mqtt.ca_file {}: no PEM certificate in it",
                    path.display()
                )));
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::internal(format!("TLS set-up: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Rustls(
        Arc::new(config),
    )))
}

/// The connection to an external broker: subscribed to the routes' filters, handing each
/// publish to the intake with its manual ack.
pub(super) struct BrokerDoor {
    pub client: AsyncClient,
    driver: JoinHandle<()>,
}

impl BrokerDoor {
    /// Drive the MQTT connection in its own task (so no event is lost to a cancelled poll).
    pub(super) fn open(
        options: MqttOptions,
        filters: Vec<String>,
        tx: mpsc::Sender<Arrival>,
        subscribed: watch::Sender<bool>,
    ) -> BrokerDoor {
        let (client, mut events) = AsyncClient::new(options, 10_000);
        let subscriber = client.clone();
        let driver = tokio::spawn(async move {
            // Connections are numbered from 1; what the WAL held at start counts as 0.
            let mut connection = 0u64;
            let session: Arc<str> = Arc::from("");
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = subscribed.send(true);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let arrival = Arrival {
                            connection,
                            session: session.clone(),
                            topic: Arc::from(p.topic.as_str()),
                            payload: p.payload.clone(),
                            pkid: p.pkid,
                            dup: p.dup,
                            ack: Ack::Broker(p),
                        };
                        if tx.send(arrival).await.is_err() {
                            return;
                        }
                    }
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        connection += 1;
                        tracing::info!(
                            session_present = ack.session_present,
                            "connected to the MQTT broker"
                        );
                        // A persistent session keeps subscriptions; subscribing again is harmless.
                        for f in &filters {
                            if let Err(e) = subscriber.subscribe(f.clone(), QoS::AtLeastOnce).await
                            {
                                tracing::warn!(filter = %f, error = %e, "subscribe failed");
                            }
                        }
                    }
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                    Ok(_) => {}
                    Err(e) => {
                        if tx.is_closed() {
                            return;
                        }
                        tracing::warn!(error = %e, "MQTT connection lost; reconnecting");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        });
        BrokerDoor { client, driver }
    }

    /// Leave the broker cleanly (after the intake has acked what it stored).
    pub(super) async fn close(self) {
        let _ = self.client.disconnect().await;
        if tokio::time::timeout(Duration::from_secs(2), self.driver)
            .await
            .is_err()
        {
            tracing::warn!("MQTT connection did not close in time");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_urls() {
        assert_eq!(
            parse_mqtt_url("mqtt://10.0.0.2:1884").unwrap(),
            ("10.0.0.2".into(), 1884, false)
        );
        assert_eq!(
            parse_mqtt_url("mqtt://broker").unwrap(),
            ("broker".into(), 1883, false)
        );
        assert_eq!(
            parse_mqtt_url("mqtts://b").unwrap(),
            ("b".into(), 8883, true)
        );
        assert!(parse_mqtt_url("http://b").is_err());
        assert!(parse_mqtt_url("mqtt://b:port").is_err());
        assert!(parse_mqtt_url("broker:1883").is_err());
    }

    #[test]
    fn bad_ca_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificates here\n").unwrap();
        let mqtt = |ca: &std::path::Path| MqttConfig {
            ca_file: Some(ca.to_path_buf()),
            ..MqttConfig::default()
        };
        let e = tls_transport(&mqtt(&empty)).err().unwrap();
        assert!(e.message.contains("no PEM certificate"), "{e}");
        let e = tls_transport(&mqtt(&dir.path().join("missing.pem")))
            .err()
            .unwrap();
        assert!(e.message.contains("mqtt.ca_file"), "{e}");
        assert!(
            tls_transport(&MqttConfig::default()).is_ok(),
            "system roots"
        );
    }
}
