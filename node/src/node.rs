//! A running node: the opened [`Apiary`] and the services it runs besides answering calls
//! (MQTT ingestion, the HTTP API, its part in the swarm). Started in one place and stopped
//! in one place, by a deadline; the CLI's `apiary node`, Python and the tests all use it.

use std::sync::{Arc, Mutex};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::api::Apiary;
use crate::config::Config;
use crate::error::Result;
use crate::http::Server;
use crate::ingest::{Ingest, IngestParts};

/// What a node runs besides answering calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Services {
    /// MQTT ingestion (and the embedded broker when no external one is set).
    pub ingest: bool,
    /// The HTTP API.
    pub http: bool,
    /// Heartbeats, swarm tasks and the clean-up chore.
    pub swarm: bool,
    /// Following a release channel (`[update]`).
    pub update: bool,
}

impl Services {
    /// What `apiary node` runs: whatever the config enables.
    pub fn node(config: &Config) -> Services {
        Services {
            ingest: config.ingest.enabled,
            http: config.http.enabled,
            swarm: config.swarm.enabled,
            update: config.update.channel.is_some(),
        }
    }

    /// A library inside another program (Python): the swarm only, no listeners.
    pub fn library(config: &Config) -> Services {
        Services {
            ingest: false,
            http: false,
            swarm: config.swarm.enabled,
            update: false,
        }
    }
}

/// An [`Apiary`] with its services running.
pub struct Node {
    apiary: Arc<Apiary>,
    /// Taken by `shutdown`, so a second call does nothing.
    running: Mutex<Running>,
}

#[derive(Default)]
struct Running {
    ingest: Option<Ingest>,
    http: Option<Server>,
    swarm: bool,
    update: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
}

impl Node {
    /// Start `services` on `apiary`. What one of them started is stopped again when a later
    /// one fails. The swarm's first heartbeat is written before this returns, so the node is
    /// in the swarm once it says it is ready.
    pub async fn start(apiary: Apiary, services: Services) -> Result<Node> {
        let node = Node {
            apiary: Arc::new(apiary),
            running: Mutex::default(),
        };
        if let Err(e) = node.start_each(services).await {
            node.shutdown().await;
            return Err(e);
        }
        Ok(node)
    }

    async fn start_each(&self, services: Services) -> Result<()> {
        let ap = &self.apiary;
        if services.ingest {
            let ingest = Ingest::start(IngestParts {
                frames: ap.frames().clone(),
                pool: ap.pool().clone(),
                node_id: ap.node_id().to_string(),
                state_dir: ap.config().node.state_dir.clone(),
                ingest: ap.config().ingest.clone(),
                mqtt: ap.config().mqtt.clone(),
            })
            .await?;
            self.running().ingest = Some(ingest);
        }
        if services.http {
            let monitor = self.running().ingest.as_ref().map(Ingest::monitor);
            let http = crate::http::serve(ap.clone(), &ap.config().http, monitor).await?;
            self.running().http = Some(http);
        }
        if services.swarm
            && let Some(s) = ap.swarm()
        {
            s.start().await?;
            self.running().swarm = true;
        }
        if services.update {
            let follower = crate::release::follow::Follower {
                meadow: ap.meadow().clone(),
                config: ap.config().update.clone(),
                node_id: ap.node_id().to_string(),
                state_dir: ap.config().node.state_dir.clone(),
                helper_dir: crate::release::install::helper_dir(),
                status: ap.update_status(),
            };
            let cancel = CancellationToken::new();
            self.running().update = follower.spawn(cancel.clone()).map(|h| (cancel, h));
        }
        Ok(())
    }

    fn running(&self) -> std::sync::MutexGuard<'_, Running> {
        self.running.lock().expect("running services")
    }

    pub fn apiary(&self) -> &Arc<Apiary> {
        &self.apiary
    }

    /// Where the HTTP API listens, when it runs.
    pub fn http_url(&self) -> Option<String> {
        self.running().http.as_ref().map(Server::url)
    }

    /// Stop what `start` started, within `node.shutdown_timeout`: the HTTP API stops
    /// accepting, ingestion commits what it buffered (the WAL keeps what misses the
    /// deadline), the swarm's loops end and this node's heartbeat is removed, so others see
    /// it gone at once. Safe to call twice.
    pub async fn shutdown(&self) {
        let deadline = Instant::now() + self.apiary.config().node.shutdown_timeout.0;
        let Running {
            ingest,
            http,
            swarm,
            update,
        } = std::mem::take(&mut *self.running());
        if let Some((cancel, follower)) = update {
            // A download cut short is started again at the next start.
            cancel.cancel();
            let _ = tokio::time::timeout_at(deadline, follower).await;
        }
        if let Some(http) = http {
            http.shutdown(deadline).await;
        }
        if let Some(ingest) = ingest {
            ingest.shutdown(deadline).await;
        }
        if swarm && let Some(s) = self.apiary.swarm() {
            s.shutdown(deadline).await;
        }
    }
}
