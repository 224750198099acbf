//! The embedded MQTT broker (rumqttd), started when no external broker is configured.

use std::net::{SocketAddr, TcpListener};

use crate::config::MqttConfig;
use crate::error::{Error, Result};

/// Start the broker on `mqtt.listen` in its own threads; returns the address it listens on.
pub fn start(mqtt: &MqttConfig, max_payload: usize) -> Result<SocketAddr> {
    let addr: SocketAddr = mqtt.listen.parse().map_err(|_| {
        Error::invalid(format!(
            "mqtt.listen = {:?}: write host:port, e.g. 127.0.0.1:1883",
            mqtt.listen
        ))
    })?;
    // rumqttd reports a busy port only from its own threads; check first for a clear error.
    TcpListener::bind(addr).map_err(|e| {
        Error::invalid(format!(
            "cannot listen on {addr} for the embedded MQTT broker ({e}); set mqtt.listen, or mqtt.url to use a running broker"
        ))
    })?;
    let config = format!(
        r#"
id = 0
[router]
id = 0
max_connections = 1010
max_outgoing_packet_count = {inflight}
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "apiary"
listen = "{addr}"
next_connection_delay_ms = 1
[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = {payload}
max_inflight_count = {inflight}
dynamic_filters = true
"#,
        inflight = mqtt.inflight.max(1),
        payload = max_payload + (64 << 10),
    );
    let config: rumqttd::Config = toml::from_str(&config)
        .map_err(|e| Error::internal(format!("embedded broker config: {e}")))?;
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "the embedded MQTT broker stopped");
            }
        })
        .map_err(|e| Error::internal(format!("cannot start the broker thread: {e}")))?;
    tracing::info!(%addr, "embedded MQTT broker listening");
    Ok(addr)
}
