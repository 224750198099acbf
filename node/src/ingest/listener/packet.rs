//! MQTT packets as the listener sees them, for 3.1.1 and 5 alike: the codecs are rumqttc's
//! (its `mqttbytes`, read and written for both versions); this module maps them to the few
//! packets a publish-only front door takes and sends.

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V4,
    V5,
}

/// The CONNECT packet, both versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub version: Version,
    pub client_id: String,
    pub clean: bool,
    pub keep_alive: u16,
    pub username: Option<String>,
    /// (A will message is not kept: there are no subscribers to send it to.)
    pub password: Option<String>,
}

/// What a client sends after CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum In {
    Publish {
        topic: String,
        /// v5 topic alias (with an empty topic: use the alias's topic)
        alias: Option<u16>,
        qos: u8,
        dup: bool,
        pkid: u16,
        payload: Bytes,
    },
    PubRel(u16),
    /// A subscription (refused: the front door only takes publishes).
    Subscribe {
        pkid: u16,
        filters: usize,
    },
    Unsubscribe {
        pkid: u16,
        filters: usize,
    },
    PingReq,
    Disconnect,
    /// A packet a client must not send to a server (CONNECT twice, PUBACK for nothing, ...).
    Unexpected(&'static str),
}

/// Why a CONNECT is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    BadCredentials,
    NotAuthorized,
    ServerBusy,
    BadClientId,
}

/// What an ack says. 3.1.1 acks have no reason: only `Ok` and `NoRoute` are written there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckReason {
    Ok,
    /// Taken, but no route stores it (v5 "no matching subscribers").
    NoRoute,
    /// Refused: outside the credential's topic rules (v5 only).
    NotAuthorized,
}

/// What the listener sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out {
    ConnAck {
        session_present: bool,
        refused: Option<Refusal>,
        /// v5 only: receive maximum, maximum packet size, topic alias maximum
        receive_max: u16,
        max_packet: u32,
        alias_max: u16,
    },
    /// PUBACK (QoS 1) or PUBREC (QoS 2).
    Ack {
        pkid: u16,
        qos: u8,
        reason: AckReason,
    },
    PubComp(u16),
    SubAckRefused {
        pkid: u16,
        filters: usize,
    },
    UnsubAck {
        pkid: u16,
        filters: usize,
    },
    PingResp,
    /// v5 only (3.1.1 has no server DISCONNECT): why we close.
    Disconnect(v5::DisconnectReasonCode),
}

fn malformed(e: impl std::fmt::Debug) -> Error {
    Error::invalid(format!("malformed MQTT packet: {e:?}"))
}

/// The protocol level of a CONNECT at the head of `buf`, once its first bytes are in:
/// `Ok(None)` until then, an error for anything that is not an MQTT 3.1.1 or 5 CONNECT.
pub fn connect_version(buf: &[u8]) -> Result<Option<Version>> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if first != 0x10 {
        return Err(Error::invalid(
            "the first packet of an MQTT connection must be CONNECT",
        ));
    }
    // Fixed header: 1 byte type, 1-4 bytes remaining length.
    let mut i = 1;
    loop {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        if i > 4 {
            return Err(Error::invalid(
                "malformed MQTT packet: bad remaining length",
            ));
        }
    }
    // Variable header: protocol name (length-prefixed) then level.
    let Some(name_len) = buf.get(i..i + 2) else {
        return Ok(None);
    };
    let name_len = u16::from_be_bytes([name_len[0], name_len[1]]) as usize;
    let Some(level) = buf.get(i + 2 + name_len) else {
        return Ok(None);
    };
    let name = &buf[i + 2..i + 2 + name_len];
    match (name, *level) {
        (b"MQTT", 4) => Ok(Some(Version::V4)),
        (b"MQTT", 5) => Ok(Some(Version::V5)),
        _ => Err(Error::invalid(format!(
            "unsupported MQTT protocol {:?} level {level}: this listener speaks MQTT 3.1.1 and 5",
            String::from_utf8_lossy(name)
        ))),
    }
}

/// The CONNECT packet, once all of it is in `buf` (`Ok(None)` before).
pub fn read_connect(version: Version, buf: &mut BytesMut, max: usize) -> Result<Option<Connect>> {
    match version {
        Version::V4 => match v4::Packet::read(buf, max) {
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
            Err(e) => Err(malformed(e)),
            Ok(v4::Packet::Connect(c)) => Ok(Some(Connect {
                version,
                client_id: c.client_id,
                clean: c.clean_session,
                keep_alive: c.keep_alive,
                username: c.login.as_ref().map(|l| l.username.clone()),
                password: c.login.map(|l| l.password),
            })),
            Ok(_) => Err(Error::invalid("expected CONNECT")),
        },
        Version::V5 => match v5::Packet::read(buf, Some(max as u32)) {
            Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
            Err(e) => Err(malformed(e)),
            Ok(v5::Packet::Connect(c, _will, login)) => Ok(Some(Connect {
                version,
                client_id: c.client_id,
                clean: c.clean_start,
                keep_alive: c.keep_alive,
                username: login.as_ref().map(|l| l.username.clone()),
                password: login.map(|l| l.password),
            })),
            Ok(_) => Err(Error::invalid("expected CONNECT")),
        },
    }
}

fn qos4(q: rumqttc::mqttbytes::QoS) -> u8 {
    q as u8
}

fn qos5(q: rumqttc::v5::mqttbytes::QoS) -> u8 {
    q as u8
}

/// The next packet in `buf` (`Ok(None)` while it is incomplete).
pub fn read(version: Version, buf: &mut BytesMut, max: usize) -> Result<Option<In>> {
    let packet = match version {
        Version::V4 => match v4::Packet::read(buf, max) {
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => return Ok(None),
            Err(e) => return Err(malformed(e)),
            Ok(p) => match p {
                v4::Packet::Publish(p) => In::Publish {
                    topic: p.topic,
                    alias: None,
                    qos: qos4(p.qos),
                    dup: p.dup,
                    pkid: p.pkid,
                    payload: p.payload,
                },
                v4::Packet::PubRel(r) => In::PubRel(r.pkid),
                v4::Packet::Subscribe(s) => In::Subscribe {
                    pkid: s.pkid,
                    filters: s.filters.len(),
                },
                v4::Packet::Unsubscribe(u) => In::Unsubscribe {
                    pkid: u.pkid,
                    filters: u.topics.len(),
                },
                v4::Packet::PingReq => In::PingReq,
                v4::Packet::Disconnect => In::Disconnect,
                v4::Packet::Connect(_) => In::Unexpected("a second CONNECT"),
                _ => In::Unexpected("a packet only a server sends, or an ack for nothing"),
            },
        },
        Version::V5 => match v5::Packet::read(buf, Some(max as u32)) {
            Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => return Ok(None),
            Err(e) => return Err(malformed(e)),
            Ok(p) => match p {
                v5::Packet::Publish(p) => In::Publish {
                    topic: String::from_utf8(p.topic.to_vec())
                        .map_err(|_| Error::invalid("malformed MQTT packet: topic is not UTF-8"))?,
                    alias: p.properties.as_ref().and_then(|p| p.topic_alias),
                    qos: qos5(p.qos),
                    dup: p.dup,
                    pkid: p.pkid,
                    payload: p.payload,
                },
                v5::Packet::PubRel(r) => In::PubRel(r.pkid),
                v5::Packet::Subscribe(s) => In::Subscribe {
                    pkid: s.pkid,
                    filters: s.filters.len(),
                },
                v5::Packet::Unsubscribe(u) => In::Unsubscribe {
                    pkid: u.pkid,
                    filters: u.filters.len(),
                },
                v5::Packet::PingReq(_) => In::PingReq,
                v5::Packet::Disconnect(_) => In::Disconnect,
                v5::Packet::Connect(..) => In::Unexpected("a second CONNECT"),
                v5::Packet::Auth(_) => In::Unexpected("AUTH (enhanced authentication)"),
                _ => In::Unexpected("a packet only a server sends, or an ack for nothing"),
            },
        },
    };
    Ok(Some(packet))
}

/// Append `out` to `buf` in the connection's version; a packet that does not exist in this
/// version (a 3.1.1 DISCONNECT from the server, a negative ack) is not written.
pub fn write(version: Version, out: Out, buf: &mut BytesMut) -> Result<()> {
    match version {
        Version::V4 => {
            let packet = match out {
                Out::ConnAck {
                    session_present,
                    refused,
                    ..
                } => {
                    use v4::ConnectReturnCode as C;
                    let code = match refused {
                        None => C::Success,
                        Some(Refusal::BadCredentials) => C::BadUserNamePassword,
                        Some(Refusal::NotAuthorized) => C::NotAuthorized,
                        Some(Refusal::ServerBusy) => C::ServiceUnavailable,
                        Some(Refusal::BadClientId) => C::BadClientId,
                    };
                    v4::Packet::ConnAck(v4::ConnAck::new(code, session_present))
                }
                Out::Ack {
                    reason: AckReason::NotAuthorized,
                    ..
                } => return Ok(()),
                Out::Ack { pkid, qos: 1, .. } => v4::Packet::PubAck(v4::PubAck::new(pkid)),
                Out::Ack { pkid, .. } => v4::Packet::PubRec(v4::PubRec::new(pkid)),
                Out::PubComp(pkid) => v4::Packet::PubComp(v4::PubComp::new(pkid)),
                Out::SubAckRefused { pkid, filters } => v4::Packet::SubAck(v4::SubAck::new(
                    pkid,
                    vec![v4::SubscribeReasonCode::Failure; filters],
                )),
                Out::UnsubAck { pkid, .. } => v4::Packet::UnsubAck(v4::UnsubAck::new(pkid)),
                Out::PingResp => v4::Packet::PingResp,
                Out::Disconnect(_) => return Ok(()),
            };
            packet.write(buf, usize::MAX).map(|_| ()).map_err(malformed)
        }
        Version::V5 => {
            let packet = match out {
                Out::ConnAck {
                    session_present,
                    refused,
                    receive_max,
                    max_packet,
                    alias_max,
                } => {
                    use v5::ConnectReturnCode as C;
                    let code = match refused {
                        None => C::Success,
                        Some(Refusal::BadCredentials) => C::BadUserNamePassword,
                        Some(Refusal::NotAuthorized) => C::NotAuthorized,
                        Some(Refusal::ServerBusy) => C::ServerBusy,
                        Some(Refusal::BadClientId) => C::ClientIdentifierNotValid,
                    };
                    let properties = v5::ConnAckProperties {
                        receive_max: Some(receive_max.max(1)),
                        max_packet_size: Some(max_packet),
                        topic_alias_max: Some(alias_max),
                        retain_available: Some(0),
                        wildcard_subscription_available: Some(0),
                        subscription_identifiers_available: Some(0),
                        shared_subscription_available: Some(0),
                        session_expiry_interval: None,
                        max_qos: None,
                        assigned_client_identifier: None,
                        reason_string: None,
                        user_properties: Vec::new(),
                        server_keep_alive: None,
                        response_information: None,
                        server_reference: None,
                        authentication_method: None,
                        authentication_data: None,
                    };
                    v5::Packet::ConnAck(v5::ConnAck {
                        session_present,
                        code,
                        properties: refused.is_none().then_some(properties),
                    })
                }
                Out::Ack {
                    pkid,
                    qos: 1,
                    reason,
                } => v5::Packet::PubAck(v5::PubAck {
                    pkid,
                    reason: match reason {
                        AckReason::Ok => v5::PubAckReason::Success,
                        AckReason::NoRoute => v5::PubAckReason::NoMatchingSubscribers,
                        AckReason::NotAuthorized => v5::PubAckReason::NotAuthorized,
                    },
                    properties: None,
                }),
                Out::Ack { pkid, reason, .. } => v5::Packet::PubRec(v5::PubRec {
                    pkid,
                    reason: match reason {
                        AckReason::Ok => v5::PubRecReason::Success,
                        AckReason::NoRoute => v5::PubRecReason::NoMatchingSubscribers,
                        AckReason::NotAuthorized => v5::PubRecReason::NotAuthorized,
                    },
                    properties: None,
                }),
                Out::PubComp(pkid) => v5::Packet::PubComp(v5::PubComp::new(pkid, None)),
                Out::SubAckRefused { pkid, filters } => v5::Packet::SubAck(v5::SubAck {
                    pkid,
                    return_codes: vec![v5::SubscribeReasonCode::ImplementationSpecific; filters],
                    properties: None,
                }),
                Out::UnsubAck { pkid, filters } => v5::Packet::UnsubAck(v5::UnsubAck {
                    pkid,
                    reasons: vec![v5::UnsubAckReason::NoSubscriptionExisted; filters],
                    properties: None,
                }),
                Out::PingResp => v5::Packet::PingResp(v5::PingResp),
                Out::Disconnect(reason) => v5::Packet::Disconnect(v5::Disconnect::new(reason)),
            };
            packet.write(buf, None).map(|_| ()).map_err(malformed)
        }
    }
}
