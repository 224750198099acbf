//! Hives, boxes and frames, kept as small JSON documents in the meadow under
//! `_apiary/registry/`. Creating is put-if-absent: of two nodes racing to create the same
//! thing one wins, and the other gets an idempotent success (same definition) or
//! `AlreadyExists` (a different one).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::types;
use crate::error::{Error, Result};
use crate::meadow::{FORMAT_VERSION, Meadow};

const ROOT: &str = "_apiary/registry";
/// Default cap on distinct partition values of one frame (guards against a partition column
/// with a value per row, which would make one tiny cell per row).
pub const DEFAULT_MAX_PARTITIONS: u32 = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    /// The type string as the user gave it.
    #[serde(rename = "type")]
    pub type_name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FrameDef {
    pub format_version: u32,
    /// Unique per creation: the frame's Delta table carries it too, so a table left by a
    /// dropped frame of the same name is told apart from one a racing creator just made.
    /// Empty in definitions written before ids existed.
    #[serde(default)]
    pub id: String,
    pub hive: String,
    #[serde(rename = "box")]
    pub box_name: String,
    pub name: String,
    pub columns: Vec<Column>,
    pub partition_by: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub max_partitions: u32,
}

impl FrameDef {
    /// A validated definition: known types, unique columns, partition columns that exist.
    pub fn new(
        hive: &str,
        box_name: &str,
        name: &str,
        columns: Vec<Column>,
        partition_by: Vec<String>,
    ) -> Result<FrameDef> {
        validate_name("hive", hive)?;
        validate_name("box", box_name)?;
        validate_name("frame", name)?;
        let full = format!("{hive}.{box_name}.{name}");
        if columns.is_empty() {
            return Err(Error::invalid(format!(
                "frame {full} needs at least one column"
            )));
        }
        let mut seen = std::collections::HashSet::new();
        for c in &columns {
            validate_name("column", &c.name)?;
            types::canonical(&c.type_name).map_err(|e| e.context(format!("column {}", c.name)))?;
            if !seen.insert(c.name.as_str()) {
                return Err(Error::invalid(format!(
                    "column {} appears twice in {full}",
                    c.name
                )));
            }
        }
        for p in &partition_by {
            if !seen.contains(p.as_str()) {
                return Err(Error::invalid(format!(
                    "partition column {p} is not a column of {full}"
                )));
            }
        }
        if partition_by.len() >= columns.len() {
            return Err(Error::invalid(format!(
                "frame {full} needs at least one column that is not a partition column"
            )));
        }
        Ok(FrameDef {
            format_version: FORMAT_VERSION,
            id: uuid::Uuid::new_v4().simple().to_string(),
            hive: hive.into(),
            box_name: box_name.into(),
            name: name.into(),
            columns,
            partition_by,
            created_at: Utc::now(),
            max_partitions: DEFAULT_MAX_PARTITIONS,
        })
    }

    pub fn full_name(&self) -> String {
        format!("{}.{}.{}", self.hive, self.box_name, self.name)
    }

    /// Same columns (names, order, canonical types) and partitioning.
    pub fn same_shape(&self, other: &FrameDef) -> bool {
        let canon = |d: &FrameDef| -> Vec<(String, &'static str)> {
            d.columns
                .iter()
                .map(|c| {
                    (
                        c.name.clone(),
                        types::canonical(&c.type_name).unwrap_or("?"),
                    )
                })
                .collect()
        };
        canon(self) == canon(other) && self.partition_by == other.partition_by
    }

    pub fn is_partition(&self, column: &str) -> bool {
        self.partition_by.iter().any(|p| p == column)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct NamespaceDoc {
    format_version: u32,
    name: String,
    created_at: DateTime<Utc>,
}

/// Names become object keys and Delta table directories: keep them to a portable set.
pub fn validate_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "bad {what} name {name:?}: use letters, digits, _ or - (starting with a letter or _), at most 128 characters"
        )))
    }
}

#[derive(Debug, Clone)]
pub struct Registry {
    meadow: Meadow,
}

fn hive_key(h: &str) -> String {
    format!("{ROOT}/hives/{h}.json")
}
fn box_key(h: &str, b: &str) -> String {
    format!("{ROOT}/boxes/{h}/{b}.json")
}
fn frame_key(h: &str, b: &str, f: &str) -> String {
    format!("{ROOT}/frames/{h}/{b}/{f}.json")
}
fn strip_json(names: Vec<String>) -> Vec<String> {
    names
        .into_iter()
        .filter_map(|n| n.strip_suffix(".json").map(str::to_string))
        .collect()
}

impl Registry {
    pub fn new(meadow: Meadow) -> Self {
        Registry { meadow }
    }

    /// Create a hive; `Ok(false)` when it already existed (not an error).
    pub async fn create_hive(&self, name: &str) -> Result<bool> {
        validate_name("hive", name)?;
        let doc = NamespaceDoc {
            format_version: FORMAT_VERSION,
            name: name.into(),
            created_at: Utc::now(),
        };
        self.meadow.put_json_if_absent(&hive_key(name), &doc).await
    }

    pub async fn create_box(&self, hive: &str, name: &str) -> Result<bool> {
        validate_name("box", name)?;
        self.require_hive(hive).await?;
        let doc = NamespaceDoc {
            format_version: FORMAT_VERSION,
            name: name.into(),
            created_at: Utc::now(),
        };
        self.meadow
            .put_json_if_absent(&box_key(hive, name), &doc)
            .await
    }

    /// Register a frame. `Ok(true)` when this call created it, `Ok(false)` when an identical
    /// definition was already there; `AlreadyExists` when a different one is.
    pub async fn create_frame(&self, def: &FrameDef) -> Result<bool> {
        self.require_box(&def.hive, &def.box_name).await?;
        let key = frame_key(&def.hive, &def.box_name, &def.name);
        if self.meadow.put_json_if_absent(&key, def).await? {
            return Ok(true);
        }
        let existing = self.frame(&def.hive, &def.box_name, &def.name).await?;
        if existing.same_shape(def) {
            Ok(false)
        } else {
            Err(Error::already_exists(format!(
                "frame already exists with a different schema: {}",
                def.full_name()
            )))
        }
    }

    pub async fn drop_frame(&self, h: &str, b: &str, f: &str) -> Result<FrameDef> {
        let def = self.frame(h, b, f).await?;
        self.meadow.delete(&frame_key(h, b, f)).await?;
        Ok(def)
    }

    pub async fn require_hive(&self, h: &str) -> Result<()> {
        match self.meadow.get(&hive_key(h)).await? {
            Some(_) => Ok(()),
            None => Err(Error::not_found(format!("hive not found: {h}"))),
        }
    }

    pub async fn require_box(&self, h: &str, b: &str) -> Result<()> {
        if self.meadow.get(&box_key(h, b)).await?.is_some() {
            return Ok(());
        }
        self.require_hive(h).await?;
        Err(Error::not_found(format!("box not found: {h}.{b}")))
    }

    /// A frame's definition, or the most precise `NotFound` (hive, box or frame).
    pub async fn frame(&self, h: &str, b: &str, f: &str) -> Result<FrameDef> {
        if let Some(v) = self
            .meadow
            .get_json::<FrameDef>(&frame_key(h, b, f))
            .await?
        {
            return Ok(v.value);
        }
        self.require_box(h, b).await?;
        let mut msg = format!("frame not found: {h}.{b}.{f}");
        // Unquoted SQL names are folded to lower case; point at a frame that differs only in case.
        if let Some(other) = self
            .list_frames(h, b)
            .await?
            .into_iter()
            .find(|n| n.eq_ignore_ascii_case(f))
        {
            msg.push_str(&format!(
                " (there is {h}.{b}.\"{other}\": quote the name to keep its case)"
            ));
        }
        Err(Error::not_found(msg))
    }

    pub async fn list_hives(&self) -> Result<Vec<String>> {
        Ok(strip_json(
            self.meadow.list_names(&format!("{ROOT}/hives")).await?,
        ))
    }

    pub async fn list_boxes(&self, h: &str) -> Result<Vec<String>> {
        self.require_hive(h).await?;
        Ok(strip_json(
            self.meadow.list_names(&format!("{ROOT}/boxes/{h}")).await?,
        ))
    }

    pub async fn list_frames(&self, h: &str, b: &str) -> Result<Vec<String>> {
        self.require_box(h, b).await?;
        Ok(strip_json(
            self.meadow
                .list_names(&format!("{ROOT}/frames/{h}/{b}"))
                .await?,
        ))
    }
}
