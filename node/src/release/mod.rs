//! Releases of the node through the meadow. `apiary release publish` signs a Debian package of
//! the node with a key that stays on the publisher's machine and puts both under
//! `_apiary/releases/<channel>/`. A node that follows the channel (`[update]`) verifies and
//! stages a new release and asks for it to be installed (`follow`); the package's update
//! helper, as root, verifies it again, installs it, waits for the new version to become ready
//! and reinstalls the previous one when it does not (`install`).

pub mod follow;
pub mod install;

use std::path::Path;
use std::sync::OnceLock;

use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::clock::now_ms;
use crate::error::{Error, Result};
use crate::layout::Key;
use crate::meadow::{Meadow, decode_versioned_json, encode_json, format_version};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Where the package records its version: a repackaged binary is still a new release.
pub const VERSION_FILE: &str = "/usr/lib/apiary/version";
const PACKAGED_BINARY: &str = "/usr/bin/apiary";

/// A published release: what its signature covers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Release {
    pub format_version: u32,
    pub channel: String,
    /// The package's version.
    pub version: String,
    /// Debian architecture: arm64 or amd64.
    pub architecture: String,
    /// Of the package's bytes, hex.
    pub sha256: String,
    pub size: u64,
    /// The publisher's clock (shown only).
    pub published_ms: u64,
}

/// What `Key::Release` holds: the release's JSON exactly as signed, the signature and the
/// public key that made it (for the reader's message; trust comes from the config only).
#[derive(Debug, Serialize, Deserialize)]
struct Signed {
    format_version: u32,
    release: String,
    signature: String,
    key: String,
}

/// The Debian architecture of this build.
pub fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "arm64",
        "x86_64" => "amd64",
        other => other,
    }
}

/// The release this process runs: the installed package's version when this is the packaged
/// binary, else the crate's. Read once, at start, before an upgrade can replace the file.
pub fn running_version() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| {
        let packaged = std::env::current_exe().is_ok_and(|e| e == Path::new(PACKAGED_BINARY));
        packaged
            .then(|| std::fs::read_to_string(VERSION_FILE).ok())
            .flatten()
            .map(|v| v.trim().to_string())
            .filter(|v| is_version(v))
            .unwrap_or_else(|| env!("CARGO_PKG_VERSION").into())
    })
}

/// A Debian version as it may appear in file names here.
fn is_version(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.starts_with(|c: char| c.is_ascii_digit())
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || ".+~-:".contains(c))
}

/// Make a signing key in `path` (private, never overwritten); its public key in base64, for
/// `update.trusted_keys`.
pub fn keygen(path: &Path) -> Result<String> {
    if path.exists() {
        return Err(Error::already_exists(format!(
            "{} exists: a signing key is never overwritten",
            path.display()
        )));
    }
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let doc = Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| Error::internal("cannot make an ed25519 key"))?;
    let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref())
        .map_err(|e| Error::internal(format!("the new key does not load: {e}")))?;
    let text = format!(
        "# Apiary release signing key (ed25519, PKCS#8). Keep it on this machine: never on a \
         node, never in the meadow.\n{}\n",
        B64.encode(doc.as_ref())
    );
    crate::secret::write_private(path, text.as_bytes())?;
    Ok(B64.encode(pair.public_key().as_ref()))
}

fn load_key(path: &Path) -> Result<Ed25519KeyPair> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::invalid(format!("cannot read signing key {}: {e}", path.display())))?;
    let body: String = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .concat();
    B64.decode(body.trim())
        .ok()
        .and_then(|der| Ed25519KeyPair::from_pkcs8(&der).ok())
        .ok_or_else(|| {
            Error::invalid(format!(
                "{} is not a signing key from `apiary release keygen`",
                path.display()
            ))
        })
}

/// The package's name, version and architecture (`dpkg-deb --field`).
fn deb_fields(deb: &Path) -> Result<(String, String, String)> {
    let out = std::process::Command::new("dpkg-deb")
        .arg("--field")
        .arg(deb)
        .args(["Package", "Version", "Architecture"])
        .output()
        .map_err(|e| Error::invalid(format!("cannot run dpkg-deb (install dpkg): {e}")))?;
    if !out.status.success() {
        return Err(Error::invalid(format!(
            "{} is not a Debian package: {}",
            deb.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    Ok((field("Package"), field("Version"), field("Architecture")))
}

/// Sign package `deb` with the key in `key` and make it `channel`'s release for its
/// architecture: the package first, then the signed release (which nodes look at), then the
/// package it replaced is removed.
pub async fn publish(meadow: &Meadow, deb: &Path, key: &Path, channel: &str) -> Result<Release> {
    if !crate::names::is_name(channel) {
        return Err(Error::invalid(format!(
            "channel {channel:?}: a name of letters, digits, _ and -"
        )));
    }
    let pair = load_key(key)?;
    let (package, version, architecture) = deb_fields(deb)?;
    if package != "apiary"
        || !is_version(&version)
        || !["arm64", "amd64"].contains(&architecture.as_str())
    {
        return Err(Error::invalid(format!(
            "{}: package {package:?} {version:?} for {architecture:?}; want the apiary package \
             for arm64 or amd64 (packaging/deb/build.sh)",
            deb.display()
        )));
    }
    let bytes = tokio::fs::read(deb)
        .await
        .map_err(|e| Error::invalid(format!("cannot read {}: {e}", deb.display())))?;
    let sha256 = crate::layout::sha256_hex(&bytes);
    let release = Release {
        format_version: format_version(),
        channel: channel.into(),
        version,
        architecture: architecture.clone(),
        size: bytes.len() as u64,
        sha256: sha256.clone(),
        published_ms: now_ms(),
    };
    let text = serde_json::to_string(&release)?;
    let signed = Signed {
        format_version: format_version(),
        signature: B64.encode(pair.sign(text.as_bytes()).as_ref()),
        key: B64.encode(pair.public_key().as_ref()),
        release: text,
    };
    let at = Key::Release {
        channel: channel.into(),
        arch: architecture,
    }
    .to_string();
    let before = meadow.get(&at).await?;
    let package_key = |sha256: String| {
        Key::ReleasePackage {
            channel: channel.into(),
            sha256,
        }
        .to_string()
    };
    meadow
        .put(&package_key(sha256.clone()), bytes.into())
        .await?;
    meadow.put(&at, encode_json(&signed)?).await?;
    let replaced = before
        .and_then(|b| decode_versioned_json::<Signed>(&b.value).ok())
        .and_then(|s| serde_json::from_str::<Release>(&s.release).ok())
        .filter(|r| r.sha256 != sha256 && crate::layout::is_sha256(&r.sha256));
    if let Some(old) = replaced {
        meadow.delete(&package_key(old.sha256)).await?;
    }
    Ok(release)
}

/// The release in a channel's signed document, if a key in `trusted` (base64) signed it.
pub fn verify(bytes: &[u8], trusted: &[String]) -> Result<Release> {
    let signed: Signed = decode_versioned_json(bytes)?;
    let signature = B64
        .decode(&signed.signature)
        .map_err(|_| Error::invalid("the release's signature is not base64"))?;
    let trusted_by = trusted.iter().find(|k| {
        crate::config::public_key(k).is_ok_and(|pk| {
            UnparsedPublicKey::new(&ED25519, pk)
                .verify(signed.release.as_bytes(), &signature)
                .is_ok()
        })
    });
    if trusted_by.is_none() {
        return Err(Error::invalid(format!(
            "the release is not signed by a key in update.trusted_keys (it names key {})",
            signed.key
        )));
    }
    let release: Release = decode_versioned_json(signed.release.as_bytes())?;
    if !is_version(&release.version) || !crate::layout::is_sha256(&release.sha256) {
        return Err(Error::invalid(format!(
            "the signed release names version {:?} and hash {:?}",
            release.version, release.sha256
        )));
    }
    Ok(release)
}

/// The signed document of `channel`'s release for this architecture, if any.
pub async fn fetch(meadow: &Meadow, channel: &str) -> Result<Option<bytes::Bytes>> {
    let at = Key::Release {
        channel: channel.into(),
        arch: arch().into(),
    };
    Ok(meadow.get(&at.to_string()).await?.map(|v| v.value))
}

/// The file name of the package of `version` for `arch`, as dpkg names it.
pub fn deb_name(version: &str, arch: &str) -> String {
    format!("apiary_{}_{arch}.deb", version.replace(':', "%3a"))
}

#[cfg(test)]
mod tests;
