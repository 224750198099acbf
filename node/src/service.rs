//! Running as a systemd service (`Type=notify`): readiness, the watchdog and stopping are
//! told to the service manager. Without `NOTIFY_SOCKET` (not started by systemd) these do
//! nothing.

use sd_notify::NotifyState;

/// The node is serving: systemd marks the unit started.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn stopping() {
    notify(&[NotifyState::Stopping]);
}

/// With `WatchdogSec=` set, ping the watchdog at half its period from the runtime: a node
/// whose runtime stops scheduling tasks gets restarted.
pub fn watchdog() -> Option<tokio::task::JoinHandle<()>> {
    let period = sd_notify::watchdog_enabled()?;
    Some(tokio::spawn(async move {
        loop {
            notify(&[NotifyState::Watchdog]);
            tokio::time::sleep(period / 2).await;
        }
    }))
}

fn notify(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}
