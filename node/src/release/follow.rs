//! A node following a release channel (`[update] channel`). Every `update.check_interval` it
//! reads the channel's signed release for its architecture; a release of another version,
//! signed by a trusted key and not rolled back here before, is taken on under the channel's
//! upgrade lease (one node of a swarm at a time): the package is downloaded into
//! `<state_dir>/update/`, checked, and handed to the update helper with `request.json`. Once
//! the helper is done (the node restarted on the new version, or on the old one after a
//! rollback) the node gives the lease up. The node itself never installs anything: it runs
//! unprivileged, the helper as root.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::install::{self, HelperState};
use super::{Release, deb_name, running_version, verify};
use crate::clock::now_ms;
use crate::config::UpdateConfig;
use crate::error::{Error, Result};
use crate::layout::Key;
use crate::meadow::{Meadow, lease};

/// What the node says about updates in its status.
#[derive(Debug, Clone, Serialize)]
pub struct UpdateStatus {
    pub channel: String,
    pub running: String,
    /// What the last look found or did, in words.
    pub state: String,
    pub checked_ms: u64,
}

/// The request the helper acts on: the signed release as read from the meadow (the helper
/// verifies it again against the root-owned config) and the package's file name here.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Request {
    pub signed: String,
    pub package: String,
}

/// What a started node writes once it is ready: the helper's sign that a version works.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Running {
    pub version: String,
    pub pid: u32,
}

/// The folder a node shares with the update helper.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("update")
}

/// Say this process is ready (after READY=1 went to systemd and the first heartbeat is in).
pub fn ready(state_dir: &Path) -> Result<()> {
    let dir = dir(state_dir);
    std::fs::create_dir_all(&dir)?;
    let running = Running {
        version: running_version().into(),
        pid: std::process::id(),
    };
    write_shared(&dir.join("running.json"), &serde_json::to_vec(&running)?)
}

/// The files the node and the update helper share: whole after a power cut, readable by both.
pub(super) fn write_shared(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::secret::write_durable(path, bytes, 0o644)
}

pub struct Follower {
    pub meadow: Meadow,
    pub config: UpdateConfig,
    pub node_id: String,
    pub state_dir: PathBuf,
    /// The update helper's folder (`install::helper_dir`); none: nothing can install here.
    pub helper_dir: Option<PathBuf>,
    pub status: Arc<Mutex<Option<UpdateStatus>>>,
}

impl Follower {
    /// Look at the channel until `cancel`: soon after start (a node that just came up on a
    /// new version gives the lease back), then every `check_interval`, more often while an
    /// install is under way.
    pub fn spawn(self, cancel: CancellationToken) -> Option<tokio::task::JoinHandle<()>> {
        let channel = self.config.channel.clone()?;
        Some(tokio::spawn(async move {
            let mut wait = Duration::from_secs(3);
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = cancel.cancelled() => return,
                }
                let (state, busy) = match self.check(&channel).await {
                    Ok(s) => s,
                    Err(e) => (format!("could not look at channel {channel}: {e}"), false),
                };
                let mut status = self.status.lock().expect("update status");
                if status.as_ref().is_none_or(|s| s.state != state) {
                    tracing::info!(channel = %channel, "update: {state}");
                }
                *status = Some(UpdateStatus {
                    channel: channel.clone(),
                    running: running_version().into(),
                    state,
                    checked_ms: now_ms(),
                });
                let every = self.config.check_interval.0;
                wait = if busy {
                    every.min(Duration::from_secs(5))
                } else {
                    every
                };
            }
        }))
    }

    fn lease_name(channel: &str) -> String {
        format!("upgrade-{channel}")
    }

    /// One look: what it found, and whether an install is under way.
    pub(super) async fn check(&self, channel: &str) -> Result<(String, bool)> {
        let dir = dir(&self.state_dir);
        let helper_dir = self.helper_dir.as_deref();
        if helper_dir.is_some_and(install::pending) || dir.join("request.json").exists() {
            return Ok(("an install is under way".into(), true));
        }
        lease::release(&self.meadow, &Self::lease_name(channel), &self.node_id).await?;
        let running = running_version();
        let Some(signed) = super::fetch(&self.meadow, channel).await? else {
            return Ok((format!("no {} release published", super::arch()), false));
        };
        let release = verify(&signed, &self.config.trusted_keys)?;
        let v = &release.version;
        if v == running {
            return Ok((format!("up to date ({v})"), false));
        }
        let Some(helper_dir) = helper_dir else {
            return Ok((
                format!(
                    "{v} is published, but this node was not installed from the apiary package: \
                     it cannot install it"
                ),
                false,
            ));
        };
        if let Some(why) = HelperState::read(helper_dir).rolled_back.get(v) {
            return Ok((format!("{v} was rolled back here: {why}"), false));
        }
        let ttl = self.config.ready_timeout.0 * 2 + Duration::from_secs(600);
        if !lease::acquire(&self.meadow, &Self::lease_name(channel), &self.node_id, ttl).await? {
            return Ok((
                format!("{v} is published; another node is upgrading first"),
                false,
            ));
        }
        let package = self.download(&release, &dir).await.inspect_err(|_| {
            let _ =
                std::fs::remove_file(dir.join(deb_name(&release.version, &release.architecture)));
        })?;
        let request = Request {
            signed: String::from_utf8_lossy(&signed).into(),
            package,
        };
        write_shared(&dir.join("request.json"), &serde_json::to_vec(&request)?)?;
        Ok((format!("installing {v} (was {running})"), true))
    }

    /// The release's package into `dir`, checked against the signed size and hash.
    async fn download(&self, release: &Release, dir: &Path) -> Result<String> {
        std::fs::create_dir_all(dir)?;
        let name = deb_name(&release.version, &release.architecture);
        let key = Key::ReleasePackage {
            channel: release.channel.clone(),
            sha256: release.sha256.clone(),
        };
        let path = dir.join(&name);
        let size = self.meadow.download(&key.to_string(), &path).await?;
        if size != Some(release.size) || install::sha256_file(&path)? != release.sha256 {
            return Err(Error::invalid(format!(
                "the package of {} in the meadow is not the one signed",
                release.version
            )));
        }
        Ok(name)
    }
}
