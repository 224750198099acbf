//! Who may publish on the embedded listener: anonymous clients (by default only when every
//! listener is on loopback, as with Mosquitto 2), `[[mqtt.users]]` with argon2 password
//! hashes, and the device credential made at first start when a listener faces the network
//! and no users are configured. Each credential may publish only to its topic filters.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use sha2::{Digest, Sha256};

use super::packet::Refusal;
use crate::config::MqttConfig;
use crate::error::{Error, Result};
use crate::ingest::route;

/// The user the device credential is for.
pub const DEVICE_USER: &str = "device";
/// Its password's file in the state dir.
pub const DEVICE_PASSWORD_FILE: &str = "mqtt-password";

/// A connected client's rights.
#[derive(Debug, Clone)]
pub struct Principal {
    pub name: Option<String>,
    /// Topic filters it may publish to.
    publish: Arc<[String]>,
}

impl Principal {
    pub fn may_publish(&self, topic: &str) -> bool {
        self.publish.iter().any(|f| route::matches(f, topic))
    }
}

enum Secret {
    /// An argon2 PHC string.
    Hash(String),
    /// The device password (plain, in a file only the node's user reads).
    Plain(String),
}

struct User {
    secret: Secret,
    publish: Arc<[String]>,
}

pub struct Users {
    anonymous: bool,
    users: HashMap<String, User>,
    /// digests of passwords already verified, per user: argon2 is slow on purpose, and a
    /// sensor reconnecting should not pay for it each time
    verified: Mutex<HashMap<String, [u8; 32]>>,
    /// one argon2 verification at a time (each takes ~19 MiB)
    gate: tokio::sync::Semaphore,
}

/// An argon2id hash of `password` in PHC form, for `[[mqtt.users]] password_hash`.
pub fn hash_password(password: &str) -> Result<String> {
    let mut raw = [0u8; 16];
    rand::Rng::fill(&mut rand::rng(), &mut raw);
    let salt =
        SaltString::encode_b64(&raw).map_err(|e| Error::internal(format!("password salt: {e}")))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::internal(format!("hashing the password: {e}")))
}

fn check_filter(f: &str) -> Result<()> {
    route::validate_filter(f)
}

impl Users {
    /// From the config; `network`: some listener is beyond loopback.
    pub fn from_config(mqtt: &MqttConfig, network: bool, state_dir: &Path) -> Result<Users> {
        let anonymous = mqtt.allow_anonymous.unwrap_or(!network);
        let mut users = HashMap::new();
        for (i, u) in mqtt.users.iter().enumerate() {
            let ctx = |e: Error| e.context(format!("[[mqtt.users]] {} ({})", i + 1, u.name));
            if u.name.is_empty() {
                return Err(ctx(Error::invalid("name is empty")));
            }
            PasswordHash::new(&u.password_hash).map_err(|e| {
                ctx(Error::invalid(format!(
                    "password_hash is not an argon2 hash ({e}); make one with `apiary mqtt passwd {}`",
                    u.name
                )))
            })?;
            for f in &u.publish {
                check_filter(f).map_err(ctx)?;
            }
            let user = User {
                secret: Secret::Hash(u.password_hash.clone()),
                publish: u.publish.clone().into(),
            };
            if users.insert(u.name.clone(), user).is_some() {
                return Err(ctx(Error::invalid("a second user of this name")));
            }
        }
        if network && !anonymous && users.is_empty() {
            let password = device_password(state_dir)?;
            users.insert(
                DEVICE_USER.to_string(),
                User {
                    secret: Secret::Plain(password),
                    publish: vec!["#".to_string()].into(),
                },
            );
            tracing::info!(
                user = DEVICE_USER,
                file = %state_dir.join(DEVICE_PASSWORD_FILE).display(),
                "MQTT clients from the network log in with the device credential"
            );
        }
        if network && anonymous {
            tracing::warn!(
                "mqtt.allow_anonymous = true on a listener beyond loopback: anyone on the network may publish"
            );
        }
        Ok(Users {
            anonymous,
            users,
            verified: Mutex::new(HashMap::new()),
            gate: tokio::sync::Semaphore::new(1),
        })
    }

    /// The rights of a client that connected with these credentials, or why it is refused.
    pub async fn check(
        &self,
        username: Option<&str>,
        password: Option<&str>,
    ) -> std::result::Result<Principal, Refusal> {
        let Some(name) = username else {
            return if self.anonymous {
                Ok(Principal {
                    name: None,
                    publish: vec!["#".to_string()].into(),
                })
            } else {
                Err(Refusal::NotAuthorized)
            };
        };
        let user = self.users.get(name).ok_or(Refusal::BadCredentials)?;
        let password = password.ok_or(Refusal::BadCredentials)?;
        let ok = match &user.secret {
            Secret::Plain(p) => {
                use subtle::ConstantTimeEq;
                bool::from(p.as_bytes().ct_eq(password.as_bytes()))
            }
            Secret::Hash(hash) => {
                let digest: [u8; 32] = Sha256::digest(password.as_bytes()).into();
                let known = self.verified.lock().expect("auth lock").get(name) == Some(&digest);
                known || {
                    let _turn = self.gate.acquire().await.map_err(|_| Refusal::ServerBusy)?;
                    let (hash, password) = (hash.clone(), password.to_string());
                    let ok = tokio::task::spawn_blocking(move || {
                        PasswordHash::new(&hash).is_ok_and(|h| {
                            argon2::Argon2::default()
                                .verify_password(password.as_bytes(), &h)
                                .is_ok()
                        })
                    })
                    .await
                    .unwrap_or(false);
                    if ok {
                        self.verified
                            .lock()
                            .expect("auth lock")
                            .insert(name.to_string(), digest);
                    }
                    ok
                }
            }
        };
        if !ok {
            return Err(Refusal::BadCredentials);
        }
        Ok(Principal {
            name: Some(name.to_string()),
            publish: user.publish.clone(),
        })
    }
}

/// The device password: kept in `<state_dir>/mqtt-password`, made on first use (readable by
/// the node's user only; the Pi image copies it to the boot partition).
pub fn device_password(state_dir: &Path) -> Result<String> {
    crate::secret::read_or_make(&state_dir.join(DEVICE_PASSWORD_FILE), 16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MqttUser;

    fn config(users: Vec<MqttUser>, anonymous: Option<bool>) -> MqttConfig {
        MqttConfig {
            users,
            allow_anonymous: anonymous,
            ..MqttConfig::default()
        }
    }

    #[tokio::test]
    async fn anonymous_clients_only_on_loopback_unless_configured() {
        let dir = tempfile::tempdir().unwrap();
        let local = Users::from_config(&config(vec![], None), false, dir.path()).unwrap();
        assert!(local.check(None, None).await.is_ok());
        let open = Users::from_config(&config(vec![], None), true, dir.path()).unwrap();
        assert_eq!(
            open.check(None, None).await.err(),
            Some(Refusal::NotAuthorized)
        );
        let password = device_password(dir.path()).unwrap();
        assert!(password.len() >= 16);
        let device = open
            .check(Some(DEVICE_USER), Some(&password))
            .await
            .unwrap();
        assert!(device.may_publish("any/topic"));
        assert_eq!(
            open.check(Some(DEVICE_USER), Some("wrong")).await.err(),
            Some(Refusal::BadCredentials)
        );
        let allowed = Users::from_config(&config(vec![], Some(true)), true, dir.path()).unwrap();
        assert!(allowed.check(None, None).await.is_ok());
    }

    #[tokio::test]
    async fn users_log_in_with_their_password_and_publish_within_their_filters() {
        let dir = tempfile::tempdir().unwrap();
        let user = MqttUser {
            name: "kitchen".into(),
            password_hash: hash_password("s3cret pass").unwrap(),
            publish: vec!["apiary/home/kitchen/+".into()],
        };
        let users = Users::from_config(&config(vec![user], None), true, dir.path()).unwrap();
        assert!(
            !dir.path().join(DEVICE_PASSWORD_FILE).exists(),
            "no device credential beside configured users"
        );
        for _ in 0..2 {
            // the second time from the verified cache
            let p = users
                .check(Some("kitchen"), Some("s3cret pass"))
                .await
                .unwrap();
            assert!(p.may_publish("apiary/home/kitchen/temp"));
            assert!(!p.may_publish("apiary/home/garage/temp"));
        }
        assert_eq!(
            users.check(Some("kitchen"), Some("s3cret")).await.err(),
            Some(Refusal::BadCredentials)
        );
        assert_eq!(
            users.check(Some("nobody"), Some("x")).await.err(),
            Some(Refusal::BadCredentials)
        );
        assert_eq!(
            users.check(Some("kitchen"), None).await.err(),
            Some(Refusal::BadCredentials)
        );
    }

    #[test]
    fn bad_users_are_config_errors() {
        let dir = tempfile::tempdir().unwrap();
        let bad_hash = MqttUser {
            name: "a".into(),
            password_hash: "plain-text".into(),
            publish: vec!["#".into()],
        };
        let e = Users::from_config(&config(vec![bad_hash], None), true, dir.path())
            .err()
            .unwrap();
        assert!(e.message.contains("apiary mqtt passwd"), "{e}");
        let bad_filter = MqttUser {
            name: "a".into(),
            password_hash: hash_password("x").unwrap(),
            publish: vec!["a/#/b".into()],
        };
        assert!(Users::from_config(&config(vec![bad_filter], None), true, dir.path()).is_err());
    }
}
