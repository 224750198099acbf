//! Updates through the meadow (`[update]`): which release channel a node follows and whose
//! signatures it trusts. Off unless a channel is named.

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::{KeyDoc, Period, secs, section};
use crate::error::{Error, Result};

section! {
    /// Releases published with `apiary release publish` into the meadow's
    /// `_apiary/releases/<channel>/`, installed by the Debian package's update helper.
    "update" => pub struct UpdateConfig {
        /// The release channel to follow, e.g. "stable"; unset: no updates.
        pub channel: Option<String> = None,
        /// Public keys (base64, from `apiary release keygen`) whose signatures are trusted.
        pub trusted_keys: Vec<String> = vec![],
        /// How often the channel is looked at.
        pub check_interval: Period = secs(3600),
        /// How long a new version has to become ready (READY=1 after its first heartbeat)
        /// before the previous one is installed again.
        pub ready_timeout: Period = secs(300),
    }
}

impl UpdateConfig {
    pub(super) fn validate(&self) -> Result<()> {
        let Some(channel) = &self.channel else {
            return Ok(());
        };
        if !crate::names::is_name(channel) {
            return Err(Error::invalid(format!(
                "update.channel = {channel:?}: a name of letters, digits, _ and -"
            )));
        }
        if self.trusted_keys.is_empty() {
            return Err(Error::invalid(
                "update.channel is set but update.trusted_keys is empty: add the public key \
                 `apiary release keygen` printed",
            ));
        }
        for key in &self.trusted_keys {
            public_key(key)?;
        }
        if self.check_interval.0 < std::time::Duration::from_secs(1) {
            return Err(Error::invalid("update.check_interval must be at least 1s"));
        }
        Ok(())
    }
}

/// An ed25519 public key from its base64 form in `update.trusted_keys`.
pub fn public_key(text: &str) -> Result<[u8; 32]> {
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| {
            Error::invalid(format!(
                "update.trusted_keys: {text:?} is not a public key from `apiary release keygen` \
                 (32 bytes in base64)"
            ))
        })
}
