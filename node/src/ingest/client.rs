//! The MQTT side of ingestion: the connection to the broker (embedded or external, TCP or
//! TLS), taking publishes, writing them to the WAL in groups and acking them in receive order
//! once durable; redeliveries after a lost ack are recognised and acked without storing.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, Packet, Publish, QoS};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::wal::Record;
use super::{Inner, now_ms};
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

impl Inner {
    pub(super) fn acks_allowed(&self) -> bool {
        let backlog = self.state.lock().expect("ingest lock").backlog_bytes;
        let cap = self.config.wal_max.0.max(1) as usize;
        self.pool
            .colony()
            .set_ingest_backlog(backlog as f64 / cap as f64);
        backlog < cap && self.pool.acks_ingest()
    }

    /// Is this a message we already have, sent again because our ack was lost? Brokers
    /// flag such resends as DUP on a later connection, but may give them new packet ids
    /// (mosquitto does), so: a DUP message whose topic and bytes match one received on an
    /// earlier connection.
    pub(super) fn is_redelivery(&self, p: &Publish, connection: u64, unflushed: &[Record]) -> bool {
        if !p.dup {
            return false;
        }
        let seen = self
            .state
            .lock()
            .expect("ingest lock")
            .seen_before(&p.topic, &p.payload, connection);
        let Some(seq) = seen else {
            return false;
        };
        let same = |r: &Record| r.seq == seq && r.topic == p.topic && r.payload == p.payload;
        unflushed.iter().any(same)
            || matches!(self.wal.get(seq), Ok(Some(r)) if same(&r))
            || self
                .state
                .lock()
                .expect("ingest lock")
                .buffered(seq, &p.topic, &p.payload)
    }

    /// Drive the MQTT connection in its own task (so no event is lost to a cancelled poll)
    /// and hand publishes over a channel.
    pub(super) fn drive(
        client: AsyncClient,
        mut events: EventLoop,
        filters: Vec<String>,
        tx: mpsc::Sender<(u64, Publish)>,
        subscribed: watch::Sender<bool>,
    ) -> JoinHandle<()> {
        tokio::spawn(async move {
            // Connections are numbered from 1; what the WAL held at start counts as 0.
            let mut connection = 0u64;
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = subscribed.send(true);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if tx.send((connection, p)).await.is_err() {
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
                            if let Err(e) = client.subscribe(f.clone(), QoS::AtLeastOnce).await {
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
        })
    }

    pub(super) fn record(&self, p: &Publish) -> Option<Record> {
        let route = self.route_for(&p.topic)?;
        let seq = match self.wal.next_seq() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "write-ahead log failed");
                return None;
            }
        };
        Some(Record {
            seq,
            route,
            received_ms: now_ms(),
            pkid: p.pkid,
            topic: p.topic.clone(),
            payload: p.payload.clone(),
        })
    }

    pub(super) async fn receive(
        self: Arc<Self>,
        client: AsyncClient,
        events: EventLoop,
        filters: Vec<String>,
        mut stop: watch::Receiver<bool>,
        subscribed: watch::Sender<bool>,
    ) {
        let (tx, mut rx) = mpsc::channel::<(u64, Publish)>(self.config.flush_messages.max(1) * 4);
        let driver = Self::drive(client.clone(), events, filters, tx, subscribed);
        let mut pending: Vec<Publish> = Vec::new();
        let mut records: Vec<Record> = Vec::new();
        let mut held: Vec<Publish> = Vec::new();
        let mut tick = tokio::time::interval(self.config.flush_interval.0);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                _ = tick.tick() => {
                    self.flush(&client, &mut pending, &mut records, &mut held).await;
                }
                p = rx.recv() => {
                    let Some((connection, p)) = p else { break };
                    self.stats.received.fetch_add(1, Ordering::Relaxed);
                    if self.is_redelivery(&p, connection, &records) {
                        self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                    } else if let Some(rec) = self.record(&p) {
                        self.state.lock().expect("ingest lock").remember(&rec, connection);
                        records.push(rec);
                    }
                    // Unroutable messages are acked too: no route wants them.
                    pending.push(p);
                    if pending.len() >= self.config.flush_messages {
                        self.flush(&client, &mut pending, &mut records, &mut held).await;
                    }
                }
            }
        }
        // Store what already arrived, ack it, then leave cleanly.
        while let Ok((_, p)) = rx.try_recv() {
            if let Some(rec) = self.record(&p) {
                records.push(rec);
            }
            pending.push(p);
        }
        self.flush(&client, &mut pending, &mut records, &mut held)
            .await;
        drop(rx);
        let _ = client.disconnect().await;
        if tokio::time::timeout(Duration::from_secs(2), driver)
            .await
            .is_err()
        {
            tracing::warn!("MQTT connection did not close in time");
        }
    }

    /// Group commit: write and flush the WAL, then ack in receive order (unless the node is
    /// critical or the backlog is over its cap: then the acks wait and the broker holds).
    pub(super) async fn flush(
        &self,
        client: &AsyncClient,
        pending: &mut Vec<Publish>,
        records: &mut Vec<Record>,
        held: &mut Vec<Publish>,
    ) {
        if !records.is_empty() {
            let durable = match self.wal.write(records) {
                Ok(()) => self.wal.flush().await,
                Err(e) => Err(e),
            };
            if let Err(e) = durable {
                // Not durable: do not ack; the broker will send these again.
                tracing::error!(error = %e, "write-ahead log failed; messages left with the broker");
                records.clear();
                pending.clear();
                return;
            }
            let mut st = self.state.lock().expect("ingest lock");
            for rec in records.drain(..) {
                st.push(self.key_for(&rec), rec);
            }
        }
        held.append(pending);
        if held.is_empty() {
            return;
        }
        if !self.acks_allowed() {
            self.stats
                .held_acks
                .store(held.len() as u64, Ordering::Relaxed);
            self.stats.ack_pauses.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // Never wait on the connection here: it may be waiting for us to take publishes
        // (a full request channel keeps the rest for the next tick).
        let mut sent = 0;
        for p in held.iter() {
            if client.try_ack(p).is_err() {
                break;
            }
            sent += 1;
        }
        held.drain(..sent);
        self.stats.acked.fetch_add(sent as u64, Ordering::Relaxed);
        self.stats
            .held_acks
            .store(held.len() as u64, Ordering::Relaxed);
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
