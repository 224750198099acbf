//! Leases for swarm-wide chores (compaction, clean-up): `_apiary/leases/<name>.json` names a
//! holder and an expiry. Taking a free lease is a put-if-absent; the holder renews by
//! rewriting it; an expired lease is taken over with put-if-match where the store has it
//! (S3), else by delete and put-if-absent (a local directory, where nodes share one machine).
//! Each change of holder bumps the lease's epoch, so a holder can tell it lost the lease
//! in between even if it got it back.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Meadow, encode_json, format_version};
use crate::clock::now_ms;
use crate::error::{ErrorKind, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    pub format_version: u32,
    pub name: String,
    pub holder: String,
    /// ms since the Unix epoch
    pub expires_ms: u64,
    /// Counts the changes of holder.
    #[serde(default)]
    pub epoch: u64,
}

fn path(name: &str) -> String {
    crate::layout::Key::Lease(name.into()).to_string()
}

/// The lease as stored, if any.
pub async fn read(meadow: &Meadow, name: &str) -> Result<Option<Lease>> {
    Ok(meadow
        .get_json::<Lease>(&path(name))
        .await?
        .map(|v| v.value))
}

/// Take or renew lease `name` for `ttl`. `Ok(true)` when `holder` holds it afterwards.
pub async fn acquire(meadow: &Meadow, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
    let rel = path(name);
    let now = now_ms();
    let lease = |epoch| {
        encode_json(&Lease {
            format_version: format_version(),
            name: name.to_string(),
            holder: holder.to_string(),
            expires_ms: now + ttl.as_millis() as u64,
            epoch,
        })
    };
    let current = match meadow.get_json::<Lease>(&rel).await {
        Ok(Some(current)) => current,
        Ok(None) => return meadow.put_if_absent(&rel, lease(1)?).await,
        // A lease of another format belongs to nodes of that format: stay out of the chore.
        Err(e) if e.kind == ErrorKind::Unsupported => {
            tracing::debug!(lease = name, error = %e, "lease of another format");
            return Ok(false);
        }
        Err(e) => return Err(e),
    };
    if current.value.holder != holder && current.value.expires_ms > now {
        return Ok(false);
    }
    let epoch = if current.value.holder == holder {
        current.value.epoch
    } else {
        current.value.epoch + 1
    };
    let body = lease(epoch)?;
    match meadow
        .put_if_match(&rel, body.clone(), current.version)
        .await
    {
        Ok(()) => Ok(true),
        Err(e) if e.kind == ErrorKind::Conflict => Ok(false),
        Err(e) if e.kind == ErrorKind::Unsupported => {
            if current.value.holder == holder {
                meadow.put(&rel, body).await.map(|_| true)
            } else {
                meadow.delete(&rel).await?;
                meadow.put_if_absent(&rel, body).await
            }
        }
        Err(e) => Err(e),
    }
}

/// Give lease `name` up if `holder` holds it (others may take it at once).
pub async fn release(meadow: &Meadow, name: &str, holder: &str) -> Result<()> {
    match meadow.get_json::<Lease>(&path(name)).await {
        Ok(Some(l)) if l.value.holder == holder => meadow.delete(&path(name)).await,
        Ok(_) => Ok(()),
        Err(e) if e.kind == ErrorKind::Unsupported => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_holder_at_a_time_and_expired_leases_change_hands() {
        let dir = tempfile::tempdir().unwrap();
        let meadow = Meadow::open(dir.path().to_str().unwrap(), &Default::default())
            .await
            .unwrap();
        let ttl = Duration::from_millis(300);
        assert!(acquire(&meadow, "chore", "a", ttl).await.unwrap());
        assert!(
            !acquire(&meadow, "chore", "b", ttl).await.unwrap(),
            "a holds it"
        );
        assert!(
            acquire(&meadow, "chore", "a", ttl).await.unwrap(),
            "a renews"
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !acquire(&meadow, "chore", "b", ttl).await.unwrap() {
            assert!(
                std::time::Instant::now() < deadline,
                "b takes the expired lease"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let taken = read(&meadow, "chore").await.unwrap().unwrap();
        assert_eq!(
            (taken.holder.as_str(), taken.epoch),
            ("b", 2),
            "a new holder, a new epoch"
        );
        assert!(!acquire(&meadow, "chore", "a", ttl).await.unwrap());
        release(&meadow, "chore", "a").await.unwrap();
        assert_eq!(
            read(&meadow, "chore").await.unwrap().unwrap().holder,
            "b",
            "not a's to give up"
        );
        release(&meadow, "chore", "b").await.unwrap();
        assert!(
            acquire(&meadow, "chore", "a", ttl).await.unwrap(),
            "given up: free at once"
        );
    }
}
