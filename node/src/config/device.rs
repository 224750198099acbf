//! The appliance's own settings (`[device]`), checked with the rest of the config.

use serde::{Deserialize, Serialize};

use super::{KeyDoc, section};
use crate::error::{Error, Result};

section! {
    /// The appliance's own settings, applied by the Pi image's boot script (`apiary config
    /// get`); the node itself does not use them.
    "device" => pub struct DeviceConfig {
        /// The board's host name (also the node's default name).
        pub hostname: Option<String> = None,
        /// Public keys allowed to log in as root over SSH, one `ssh-…` line each.
        pub ssh_authorized_keys: Vec<String> = vec![],
        /// Wi-Fi to join: `ssid`, `psk`, `country`.
        pub wifi: Option<WifiConfig> = None,
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WifiConfig {
    pub ssid: String,
    /// The passphrase (8 to 63 characters) or the 64 hex digits of the key.
    pub psk: String,
    /// Regulatory domain, two letters (ISO 3166), e.g. "GB".
    pub country: Option<String>,
}

impl DeviceConfig {
    pub(super) fn validate(&self) -> Result<()> {
        if let Some(h) = &self.hostname {
            let label_ok = |l: &str| {
                (1..=63).contains(&l.len())
                    && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            };
            if h.len() > 253 || !h.split('.').all(label_ok) {
                return Err(Error::invalid(format!(
                    "device.hostname = {h:?}: use letters, digits and inner hyphens \
                     (dot-separated labels of at most 63)"
                )));
            }
        }
        for key in &self.ssh_authorized_keys {
            let kind = key.split_whitespace().next().unwrap_or("");
            let known =
                kind.starts_with("ssh-") || kind.starts_with("ecdsa-") || kind.starts_with("sk-");
            if !known || key.chars().any(char::is_control) {
                return Err(Error::invalid(format!(
                    "device.ssh_authorized_keys: {:?} is not one public key line \
                     (like \"ssh-ed25519 AAAA… me@laptop\")",
                    key.chars().take(40).collect::<String>()
                )));
            }
        }
        if let Some(w) = &self.wifi {
            if w.ssid.is_empty() || w.ssid.len() > 32 || w.ssid.chars().any(char::is_control) {
                return Err(Error::invalid(
                    "device.wifi.ssid: 1 to 32 bytes without control characters",
                ));
            }
            let hex_key = w.psk.len() == 64 && w.psk.chars().all(|c| c.is_ascii_hexdigit());
            let passphrase = (8..=63).contains(&w.psk.len())
                && w.psk.chars().all(|c| c.is_ascii() && !c.is_ascii_control());
            if !(hex_key || passphrase) {
                return Err(Error::invalid(
                    "device.wifi.psk: a passphrase of 8 to 63 printable ASCII characters, \
                     or 64 hex digits",
                ));
            }
            if let Some(c) = &w.country
                && !(c.len() == 2 && c.chars().all(|c| c.is_ascii_uppercase()))
            {
                return Err(Error::invalid(format!(
                    "device.wifi.country = {c:?}: two capital letters, like \"GB\" or \"US\""
                )));
            }
        }
        Ok(())
    }
}
