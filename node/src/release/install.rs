//! The update helper: `apiary update apply`, run as root by the package's
//! `apiary-update.service` when a node asks for a release (`request.json`) or an install was
//! under way at the last power-off (`pending.json`). It verifies the release again against
//! the root-owned config (the node's user cannot make it install anything unsigned), keeps
//! the running version's package to go back to, installs the new one with dpkg (whose
//! postinst restarts the node), and waits `update.ready_timeout` for the node to say the new
//! version is ready; if it does not, it installs the previous package again and remembers the
//! version as rolled back, so no node of this board tries it again.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::follow::{self, Request, Running, write_shared};
use super::{Release, arch, deb_name, verify};
use crate::clock::now_ms;
use crate::config::Config;
use crate::error::{Error, Result};

/// The helper's own folder (root's): packages to go back to, its state, the pending install.
pub const DIR: &str = "/var/lib/apiary-update";
/// Installed by the package: its presence says updates can be installed on this machine.
const HELPER: &str = "/usr/lib/apiary/apiary-update";
const UNIT: &str = "apiary.service";

/// What the helper did, read by the node (it skips rolled-back versions).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct HelperState {
    /// Versions that did not become ready here, with why.
    #[serde(default)]
    pub rolled_back: BTreeMap<String, String>,
    /// The last thing done, in words.
    #[serde(default)]
    pub last: String,
    #[serde(default)]
    pub at_ms: u64,
}

impl HelperState {
    pub fn read(dir: &Path) -> HelperState {
        std::fs::read(dir.join("state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn record(mut self, what: String) -> Result<()> {
        tracing::info!("update: {what}");
        println!("{what}");
        self.last = what;
        self.at_ms = now_ms();
        write_shared(
            &Path::new(DIR).join("state.json"),
            &serde_json::to_vec_pretty(&self)?,
        )
    }
}

/// An install under way: from which version to which.
#[derive(Debug, Serialize, Deserialize)]
struct Pending {
    from: String,
    to: String,
}

pub fn pending(dir: &Path) -> bool {
    dir.join("pending.json").exists()
}

/// The helper's folder when the package's helper is installed here (else nothing installs).
pub fn helper_dir() -> Option<PathBuf> {
    Path::new(HELPER).exists().then(|| PathBuf::from(DIR))
}

pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::Digest;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(crate::layout::hex(&hasher.finalize()))
}

/// Finish an install that was under way, else act on the node's request, if any.
pub fn apply(config: &Config) -> Result<()> {
    std::fs::create_dir_all(DIR)?;
    let node_dir = follow::dir(&config.node.state_dir);
    let pending_path = Path::new(DIR).join("pending.json");
    let timeout = config.update.ready_timeout.0;
    if let Ok(bytes) = std::fs::read(&pending_path) {
        // Power went while waiting: the new version gets its time again from now.
        let p: Pending = serde_json::from_slice(&bytes)?;
        return settle(&p, &node_dir, timeout);
    }
    let request_path = node_dir.join("request.json");
    let Ok(bytes) = std::fs::read(&request_path) else {
        return Ok(());
    };
    // The request is used once, whatever comes of it.
    std::fs::remove_file(&request_path)?;
    let state = HelperState::read(Path::new(DIR));
    let request: Request = serde_json::from_slice(&bytes)?;
    let release = match verify(request.signed.as_bytes(), &config.update.trusted_keys) {
        Ok(r) => r,
        Err(e) => return state.record(format!("refused a release: {e}")),
    };
    let package = node_dir.join(
        Path::new(&request.package)
            .file_name()
            .ok_or_else(|| Error::invalid("the request names no package"))?,
    );
    let result = start(&release, &package, &state);
    let _ = std::fs::remove_file(&package);
    match result {
        Ok(Some(p)) => settle(&p, &node_dir, timeout),
        Ok(None) => Ok(()),
        Err(e) => state.record(format!("refused {}: {e}", release.version)),
    }
}

/// Check and install `release`; the install to wait for, or `None` when there is nothing to do.
fn start(release: &Release, package: &Path, state: &HelperState) -> Result<Option<Pending>> {
    if release.architecture != arch() {
        return Err(Error::invalid(format!(
            "it is for {}",
            release.architecture
        )));
    }
    let current = installed_version()?;
    if current == release.version {
        return Ok(None);
    }
    if let Some(why) = state.rolled_back.get(&release.version) {
        return Err(Error::invalid(format!(
            "it was rolled back here before: {why}"
        )));
    }
    let back = package_file(&current);
    if !back.exists() {
        return Err(Error::invalid(format!(
            "there is no package of the running version {current} to go back to: copy its \
             .deb into {DIR}/"
        )));
    }
    // Checked where the node's user cannot change it any more.
    let new = package_file(&release.version);
    std::fs::copy(package, &new)?;
    if sha256_file(&new)? != release.sha256 {
        let _ = std::fs::remove_file(&new);
        return Err(Error::invalid("its package is not the one signed"));
    }
    // While the install is pending, this (working) binary finishes it.
    let helper = Path::new(DIR).join("helper");
    std::fs::copy(std::env::current_exe()?, &helper)?;
    let pending = Pending {
        from: current,
        to: release.version.clone(),
    };
    write_shared(
        &Path::new(DIR).join("pending.json"),
        &serde_json::to_vec(&pending)?,
    )?;
    println!("installing {} (was {})", pending.to, pending.from);
    if let Err(e) = dpkg_install(&new) {
        // Not ready then: `settle` goes back to the previous package.
        eprintln!("{e}");
    }
    Ok(Some(pending))
}

/// Wait for the new version to be ready; go back to the previous one if it is not in time.
fn settle(p: &Pending, node_dir: &Path, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let ready = loop {
        if node_ready(node_dir, &p.to) {
            break true;
        }
        if Instant::now() >= deadline {
            break false;
        }
        std::thread::sleep(Duration::from_secs(2));
    };
    let mut state = HelperState::read(Path::new(DIR));
    let package = package_file;
    let what = if ready {
        // Keep the new package and the one before it; older ones go.
        for entry in std::fs::read_dir(DIR)?.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "deb")
                && path != package(&p.to)
                && path != package(&p.from)
            {
                let _ = std::fs::remove_file(path);
            }
        }
        format!("installed {} (was {})", p.to, p.from)
    } else {
        let why = format!(
            "it was not ready within {} s of being installed",
            timeout.as_secs()
        );
        dpkg_install(&package(&p.from))?;
        let _ = std::fs::remove_file(package(&p.to));
        state.rolled_back.insert(p.to.clone(), why.clone());
        format!("rolled {} back to {}: {why}", p.to, p.from)
    };
    std::fs::remove_file(Path::new(DIR).join("pending.json"))?;
    let _ = std::fs::remove_file(Path::new(DIR).join("helper"));
    state.record(what)
}

/// The node runs `version` and has said it is ready (systemd has it active, and the process
/// that wrote `running.json` is the unit's main process).
fn node_ready(node_dir: &Path, version: &str) -> bool {
    let Some(running) = std::fs::read(node_dir.join("running.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Running>(&b).ok())
    else {
        return false;
    };
    let show = |what: &str| {
        Command::new("systemctl")
            .args(["show", "--value", "-p", what, UNIT])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    running.version == version
        && show("ActiveState") == "active"
        && show("MainPID") == running.pid.to_string()
}

fn package_file(version: &str) -> PathBuf {
    Path::new(DIR).join(deb_name(version, arch()))
}

fn installed_version() -> Result<String> {
    let out = Command::new("dpkg-query")
        .args(["--show", "--showformat=${Version}", "apiary"])
        .output()?;
    let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || v.is_empty() {
        return Err(Error::invalid("the apiary package is not installed"));
    }
    Ok(v)
}

fn dpkg_install(deb: &Path) -> Result<()> {
    let out = Command::new("dpkg")
        .args(["--install", "--force-confold"])
        .arg(deb)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()?;
    if !out.status.success() {
        return Err(Error::internal(format!(
            "dpkg --install {} failed: {}",
            deb.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}
