//! Secrets the node makes for itself on first start (the API token, the MQTT device
//! password): random hex kept in a file of the state dir that only the node's user reads; and
//! the power-cut-safe writer of the node's other small state files.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::error::Result;

/// The shortest secret kept from a file (one a user wrote there themselves, say).
const MIN_LEN: usize = crate::config::MIN_TOKEN_LEN;

/// The secret in `path`, or a new one of `bytes` random bytes (hex) written there first.
/// A file holding fewer than 16 characters is replaced.
pub fn read_or_make(path: &Path, bytes: usize) -> Result<String> {
    if let Ok(s) = std::fs::read_to_string(path) {
        let s = s.trim();
        if s.len() >= MIN_LEN {
            return Ok(s.to_string());
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut raw = vec![0u8; bytes];
    rand::Rng::fill(&mut rand::rng(), raw.as_mut_slice());
    let secret: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    write_private(path, secret.as_bytes())?;
    tracing::info!(path = %path.display(), "made a secret");
    Ok(secret)
}

/// Write a small state file only the node's user reads (0600) so that a power cut leaves it
/// whole or not there.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    write_durable(path, bytes, 0o600)
}

/// Write a small file with `mode` so that a power cut leaves it whole or not there: a synced
/// temporary file renamed into place, then the directory synced.
pub fn write_durable(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_made_once_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/pw");
        let a = read_or_make(&path, 16).unwrap();
        assert_eq!(a.len(), 32);
        assert_eq!(read_or_make(&path, 16).unwrap(), a, "kept");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&path, "short").unwrap();
        assert_ne!(
            read_or_make(&path, 16).unwrap(),
            "short",
            "too short: replaced"
        );
    }
}
