//! The Apiary handle: one opened node (meadow, frames, resources). The CLI, the daemon and
//! the Python package all go through it.

use std::time::SystemTime;

use serde::Serialize;

use crate::bees::Resources;
use crate::config::Config;
use crate::error::Result;
use crate::frames::Frames;
use crate::meadow::Meadow;
use crate::sql::{QueryResult, Session};

const MIB: u64 = 1 << 20;

pub struct Apiary {
    config: Config,
    name: String,
    meadow: Meadow,
    frames: Frames,
    resources: Resources,
    started_at: SystemTime,
}

/// The figures `apiary status` (and Python's `status()`) report.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub name: String,
    pub version: &'static str,
    pub cores: usize,
    pub memory_gb: f64,
    pub bees: usize,
    pub storage: &'static str,
    pub storage_uri: String,
    pub memory_per_bee_mb: u64,
    pub target_cell_size_mb: u64,
    pub state: &'static str,
}

impl Apiary {
    /// Open the meadow (refusing one without conditional writes) and size the bees.
    pub async fn open(config: Config) -> Result<Apiary> {
        config.validate()?;
        let meadow = Meadow::open(&config.meadow_uri(), &config.meadow.options).await?;
        let resources = Resources::detect(&config.bees);
        let frames = Frames::new(meadow.clone(), resources.target_cell_size());
        let name = config.node.name.clone().unwrap_or_else(host_name);
        Ok(Apiary {
            config,
            name,
            meadow,
            frames,
            resources,
            started_at: SystemTime::now(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn frames(&self) -> &Frames {
        &self.frames
    }

    pub fn meadow(&self) -> &Meadow {
        &self.meadow
    }

    pub fn resources(&self) -> Resources {
        self.resources
    }

    pub fn started_at(&self) -> SystemTime {
        self.started_at
    }

    /// A new SQL session (its own USE scope).
    pub fn session(&self) -> Session {
        let config = datafusion::prelude::SessionConfig::new()
            .with_target_partitions(self.resources.bees.max(1));
        Session::with_context(self.frames.clone(), config)
    }

    /// Run a `;`-separated script in a fresh session; one result per statement.
    pub async fn sql(&self, sql: &str) -> Result<Vec<QueryResult>> {
        self.session().run_script(sql).await
    }

    pub fn status(&self) -> Status {
        let r = self.resources;
        Status {
            name: self.name.clone(),
            version: env!("CARGO_PKG_VERSION"),
            cores: r.cores,
            memory_gb: (r.memory_bytes as f64 / (1u64 << 30) as f64 * 100.0).round() / 100.0,
            bees: r.bees,
            storage: self.meadow.kind().as_str(),
            storage_uri: self.meadow.root_url().to_string(),
            memory_per_bee_mb: r.memory_per_bee / MIB,
            target_cell_size_mb: r.target_cell_size() / MIB,
            state: "running",
        }
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "apiary".into())
}
