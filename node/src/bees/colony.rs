//! The colony model: one temperature in [0, 1] that says how loaded the node is, and the
//! band it falls in. The bands act: a hot node stops taking swarm tasks, a critical node
//! refuses new queries (Busy, retry later) and stops acking MQTT so the broker holds
//! messages. Temperature rises at once with load and cools with a time constant when idle.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::ColonyConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Band {
    Cold,
    Ideal,
    Warm,
    Hot,
    Critical,
}

impl Band {
    pub fn as_str(self) -> &'static str {
        match self {
            Band::Cold => "cold",
            Band::Ideal => "ideal",
            Band::Warm => "warm",
            Band::Hot => "hot",
            Band::Critical => "critical",
        }
    }
}

/// What heats the node, each as a fraction in [0, 1].
#[derive(Debug, Clone, Copy, Default)]
pub struct Load {
    /// Busy bees / bees.
    pub busy: f64,
    /// Memory reserved in the chambers / their budgets.
    pub memory: f64,
    /// Tasks waiting / queue limit.
    pub queue: f64,
    /// Ingest write-ahead log depth / its cap.
    pub backlog: f64,
}

/// Weights of the blend. Busy bees alone make a node warm-ish; it takes a full queue and
/// memory pressure on top to make it critical.
const W_BUSY: f64 = 0.35;
const W_MEMORY: f64 = 0.2;
const W_QUEUE: f64 = 0.3;
const W_BACKLOG: f64 = 0.15;

impl Load {
    pub fn temperature(&self) -> f64 {
        let c = |x: f64| x.clamp(0.0, 1.0);
        (W_BUSY * c(self.busy)
            + W_MEMORY * c(self.memory)
            + W_QUEUE * c(self.queue)
            + W_BACKLOG * c(self.backlog))
        .clamp(0.0, 1.0)
    }
}

#[derive(Debug)]
pub struct Colony {
    config: ColonyConfig,
    /// (temperature, when it was last updated)
    state: Mutex<(f64, Instant)>,
    /// Ingest backlog in millionths (set by the ingest path).
    backlog_ppm: AtomicU64,
    retried: AtomicU64,
    abandoned: AtomicU64,
}

/// What to do with a task that failed its attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Retry,
    Abandon,
}

/// A snapshot for status reports (keys as in the Python SDK's `colony_status()`).
#[derive(Debug, Clone, Serialize)]
pub struct ColonyStatus {
    pub temperature: f64,
    pub regulation: Band,
    pub setpoint: f64,
    pub abandoned_tasks: u64,
    pub retried_tasks: u64,
}

impl Colony {
    pub fn new(config: ColonyConfig) -> Colony {
        Colony {
            config,
            state: Mutex::new((0.0, Instant::now())),
            backlog_ppm: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
        }
    }

    pub fn config(&self) -> &ColonyConfig {
        &self.config
    }

    /// The band of a temperature.
    pub fn band(&self, t: f64) -> Band {
        let c = &self.config;
        if t >= c.critical {
            Band::Critical
        } else if t >= c.hot {
            Band::Hot
        } else if t >= c.warm {
            Band::Warm
        } else if t >= c.cold {
            Band::Ideal
        } else {
            Band::Cold
        }
    }

    /// Fold the current load in: heat is taken at once, cooling follows the time constant.
    pub fn observe(&self, load: Load) -> f64 {
        self.observe_at(load, Instant::now())
    }

    fn observe_at(&self, mut load: Load, now: Instant) -> f64 {
        load.backlog = self.backlog_ppm.load(Ordering::Relaxed) as f64 / 1e6;
        let instant = load.temperature();
        let mut state = self.state.lock().expect("colony lock");
        let dt = now.saturating_duration_since(state.1).as_secs_f64();
        let cooled = state.0 * (-dt / self.config.cooling_secs).exp();
        let t = instant.max(cooled);
        *state = (t, now);
        t
    }

    /// The ingest path reports its backlog (WAL depth / cap) here.
    pub fn set_ingest_backlog(&self, fraction: f64) {
        self.backlog_ppm
            .store((fraction.clamp(0.0, 1.0) * 1e6) as u64, Ordering::Relaxed);
    }

    /// A failed attempt (numbered from 1): retry while under the trial limit, else abandon.
    pub fn on_failure(&self, attempt: u32) -> Verdict {
        if attempt < self.config.trial_limit {
            self.retried.fetch_add(1, Ordering::Relaxed);
            Verdict::Retry
        } else {
            self.abandoned.fetch_add(1, Ordering::Relaxed);
            Verdict::Abandon
        }
    }

    pub fn status(&self, load: Load) -> ColonyStatus {
        let t = self.observe(load);
        ColonyStatus {
            temperature: (t * 1000.0).round() / 1000.0,
            regulation: self.band(t),
            setpoint: self.config.setpoint,
            abandoned_tasks: self.abandoned.load(Ordering::Relaxed),
            retried_tasks: self.retried.load(Ordering::Relaxed),
        }
    }

    /// How long a refused caller should wait: about one cooling time constant.
    pub fn retry_after(&self) -> Duration {
        Duration::from_secs_f64(self.config.cooling_secs.min(30.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bands_at_their_boundaries() {
        let c = Colony::new(ColonyConfig::default());
        let cases = [
            (0.0, Band::Cold),
            (0.149_999, Band::Cold),
            (0.15, Band::Ideal),
            (0.449_999, Band::Ideal),
            (0.45, Band::Warm),
            (0.649_999, Band::Warm),
            (0.65, Band::Hot),
            (0.849_999, Band::Hot),
            (0.85, Band::Critical),
            (1.0, Band::Critical),
        ];
        for (t, band) in cases {
            assert_eq!(c.band(t), band, "temperature {t}");
        }
    }

    #[test]
    fn load_blends_to_a_temperature() {
        assert_eq!(Load::default().temperature(), 0.0);
        let all = Load {
            busy: 1.0,
            memory: 1.0,
            queue: 1.0,
            backlog: 1.0,
        };
        assert!((all.temperature() - 1.0).abs() < 1e-9);
        let busy_only = Load {
            busy: 1.0,
            ..Default::default()
        };
        let c = Colony::new(ColonyConfig::default());
        assert_eq!(
            c.band(busy_only.temperature()),
            Band::Ideal,
            "busy bees alone are fine"
        );
        let swamped = Load {
            busy: 1.0,
            queue: 1.0,
            memory: 1.0,
            backlog: 0.0,
        };
        assert_eq!(c.band(swamped.temperature()), Band::Critical);
        let busy_and_queued = Load {
            memory: 0.5,
            ..swamped
        };
        assert_eq!(c.band(busy_and_queued.temperature()), Band::Hot);
    }

    #[test]
    fn heats_at_once_and_cools_with_time() {
        let c = Colony::new(ColonyConfig::default());
        let t0 = Instant::now();
        let hot = Load {
            busy: 1.0,
            queue: 1.0,
            memory: 1.0,
            backlog: 0.0,
        };
        let t = c.observe_at(hot, t0);
        assert!(t > 0.8, "{t}");
        let later = c.observe_at(Load::default(), t0 + Duration::from_secs(2));
        assert!(
            (later - t / std::f64::consts::E).abs() < 1e-6,
            "one time constant: {later}"
        );
        let cold = c.observe_at(Load::default(), t0 + Duration::from_secs(20));
        assert!(cold < 0.01, "{cold}");
    }

    #[test]
    fn ingest_backlog_heats() {
        let c = Colony::new(ColonyConfig::default());
        c.set_ingest_backlog(1.0);
        assert!((c.observe(Load::default()) - W_BACKLOG).abs() < 1e-6);
    }

    #[test]
    fn trial_limit_decides_retry_or_abandon() {
        let c = Colony::new(ColonyConfig::default());
        assert_eq!(c.on_failure(1), Verdict::Retry);
        assert_eq!(c.on_failure(2), Verdict::Retry);
        assert_eq!(c.on_failure(3), Verdict::Abandon);
        let s = c.status(Load::default());
        assert_eq!((s.retried_tasks, s.abandoned_tasks), (2, 1));
    }

    #[test]
    fn bad_thresholds_are_refused() {
        let bad = ColonyConfig {
            hot: 0.9,
            critical: 0.8,
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().message.contains("thresholds"));
        assert!(ColonyConfig::default().validate().is_ok());
    }
}
