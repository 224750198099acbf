//! Hives, boxes and frames, kept as small JSON documents in the meadow under
//! `_apiary/registry/`. Creating is put-if-absent: of two nodes racing to create the same
//! thing one wins, and the other gets an idempotent success (same definition) or
//! `AlreadyExists` (a different one).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::types::ColumnType;
use crate::error::{Error, ErrorKind, Result};
use crate::layout::{Dir, Key};
use crate::meadow::{Meadow, encode_json, format_version};
use crate::names::{FrameRef, validate_name};

/// Default cap on distinct partition values of one frame (guards against a partition column
/// with a value per row, which would make one tiny cell per row).
pub const DEFAULT_MAX_PARTITIONS: u32 = 10_000;

/// A frame's column. Its type is kept as the user spelt it too (`get_frame` in Python
/// returns the schema as given); two columns are the same when name and type are.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "StoredColumn", into = "StoredColumn")]
pub struct Column {
    pub name: String,
    pub ty: ColumnType,
    pub spelt: String,
}

impl PartialEq for Column {
    fn eq(&self, other: &Column) -> bool {
        self.name == other.name && self.ty == other.ty
    }
}

impl Eq for Column {}

impl Column {
    /// A column of a type written by a user (canonical name or alias).
    pub fn new(name: &str, type_str: &str) -> Result<Column> {
        Ok(Column {
            name: name.into(),
            ty: type_str
                .parse()
                .map_err(|e: Error| e.context(format!("column {name}")))?,
            spelt: type_str.into(),
        })
    }

    pub fn of(name: &str, ty: ColumnType) -> Column {
        Column {
            name: name.into(),
            ty,
            spelt: ty.name().into(),
        }
    }
}

/// A column as the registry keeps it: `{"name": ..., "type": <as spelt>}`.
#[derive(Serialize, Deserialize)]
struct StoredColumn {
    name: String,
    #[serde(rename = "type")]
    type_name: String,
}

impl TryFrom<StoredColumn> for Column {
    type Error = Error;
    fn try_from(c: StoredColumn) -> Result<Column> {
        Column::new(&c.name, &c.type_name)
    }
}

impl From<Column> for StoredColumn {
    fn from(c: Column) -> StoredColumn {
        StoredColumn {
            name: c.name,
            type_name: c.spelt,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FrameDef {
    pub format_version: u32,
    /// Unique per creation: the frame's Delta table carries it too, so a table left by a
    /// dropped frame of the same name is told apart from one a racing creator just made.
    /// Empty in definitions written before ids existed.
    #[serde(default)]
    pub id: String,
    /// Kept as `hive`, `box` and `name`.
    #[serde(flatten)]
    pub frame: FrameRef,
    pub columns: Vec<Column>,
    pub partition_by: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub max_partitions: u32,
}

impl FrameDef {
    /// A validated definition: unique columns, partition columns that exist.
    pub fn new(
        frame: &FrameRef,
        columns: Vec<Column>,
        partition_by: Vec<String>,
    ) -> Result<FrameDef> {
        if columns.is_empty() {
            return Err(Error::invalid(format!(
                "frame {frame} needs at least one column"
            )));
        }
        let mut seen = std::collections::HashSet::new();
        for c in &columns {
            validate_name("column", &c.name)?;
            if !seen.insert(c.name.as_str()) {
                return Err(Error::invalid(format!(
                    "column {} appears twice in {frame}",
                    c.name
                )));
            }
        }
        for p in &partition_by {
            if !seen.contains(p.as_str()) {
                return Err(Error::invalid(format!(
                    "partition column {p} is not a column of {frame}"
                )));
            }
        }
        if partition_by.len() >= columns.len() {
            return Err(Error::invalid(format!(
                "frame {frame} needs at least one column that is not a partition column"
            )));
        }
        Ok(FrameDef {
            format_version: format_version(),
            id: uuid::Uuid::new_v4().simple().to_string(),
            frame: frame.clone(),
            columns,
            partition_by,
            created_at: crate::clock::utc(),
            max_partitions: DEFAULT_MAX_PARTITIONS,
        })
    }

    /// Same columns (names, order, types) and partitioning.
    pub fn same_shape(&self, other: &FrameDef) -> bool {
        self.columns == other.columns && self.partition_by == other.partition_by
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

#[derive(Debug, Clone)]
pub struct Registry {
    meadow: Meadow,
}

fn hive_key(h: &str) -> String {
    Key::Hive(h.into()).to_string()
}
fn box_key(h: &str, b: &str) -> String {
    Key::Box {
        hive: h.into(),
        box_name: b.into(),
    }
    .to_string()
}
fn frame_key(frame: &FrameRef) -> String {
    Key::Frame(frame.clone()).to_string()
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
            format_version: format_version(),
            name: name.into(),
            created_at: crate::clock::utc(),
        };
        self.meadow.put_json_if_absent(&hive_key(name), &doc).await
    }

    pub async fn create_box(&self, hive: &str, name: &str) -> Result<bool> {
        validate_name("box", name)?;
        self.require_hive(hive).await?;
        let doc = NamespaceDoc {
            format_version: format_version(),
            name: name.into(),
            created_at: crate::clock::utc(),
        };
        self.meadow
            .put_json_if_absent(&box_key(hive, name), &doc)
            .await
    }

    /// Register a frame. `Ok(true)` when this call created it, `Ok(false)` when an identical
    /// definition was already there; `AlreadyExists` when a different one is.
    pub async fn create_frame(&self, def: &FrameDef) -> Result<bool> {
        self.require_box(&def.frame.hive, &def.frame.box_name)
            .await?;
        let key = frame_key(&def.frame);
        if self.meadow.put_json_if_absent(&key, def).await? {
            return Ok(true);
        }
        let existing = self.frame(&def.frame).await?;
        if existing.same_shape(def) {
            Ok(false)
        } else {
            Err(Error::already_exists(format!(
                "frame already exists with a different schema: {}",
                def.frame
            )))
        }
    }

    /// Add nullable columns to a frame's definition (schema evolution). Columns another
    /// writer added meanwhile are kept, and a name already there is not added again (its
    /// type stays). The definition afterwards.
    pub async fn add_columns(&self, frame: &FrameRef, columns: &[Column]) -> Result<FrameDef> {
        let key = frame_key(frame);
        for _ in 0..10 {
            let Some(current) = self.meadow.get_json::<FrameDef>(&key).await? else {
                return self.frame(frame).await;
            };
            let mut def = current.value;
            let new: Vec<Column> = columns
                .iter()
                .filter(|c| !def.columns.iter().any(|d| d.name == c.name))
                .cloned()
                .collect();
            if new.is_empty() {
                return Ok(def);
            }
            for c in &new {
                validate_name("column", &c.name)?;
            }
            def.columns.extend(new);
            let body = encode_json(&def)?;
            match self
                .meadow
                .put_if_match(&key, body.clone(), current.version)
                .await
            {
                Ok(()) => return Ok(def),
                Err(e) if e.kind == ErrorKind::Conflict => continue,
                // A local directory: nodes share one machine, a plain write will do.
                Err(e) if e.kind == ErrorKind::Unsupported => {
                    self.meadow.put(&key, body).await?;
                    return Ok(def);
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::conflict(format!(
            "frame {frame}: its definition kept changing while columns were added; try again"
        )))
    }

    pub async fn drop_frame(&self, frame: &FrameRef) -> Result<FrameDef> {
        let def = self.frame(frame).await?;
        self.meadow.delete(&frame_key(frame)).await?;
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
    pub async fn frame(&self, frame: &FrameRef) -> Result<FrameDef> {
        if let Some(v) = self.meadow.get_json::<FrameDef>(&frame_key(frame)).await? {
            return Ok(v.value);
        }
        let [h, b, f] = frame.parts();
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

    /// Remove box `h.b`: only when it holds no frame, unless `cascade`, which drops its frames
    /// first (their cells stay until vacuumed, as with DROP FRAME).
    pub async fn drop_box(&self, h: &str, b: &str, cascade: bool) -> Result<()> {
        let frames = self.list_frames(h, b).await?;
        if !frames.is_empty() && !cascade {
            return Err(Error::invalid(format!(
                "box {h}.{b} is not empty (frames {}): drop them first, or DROP BOX {h}.{b} CASCADE",
                frames.join(", ")
            )));
        }
        for f in frames {
            self.drop_frame(&FrameRef::new(h, b, &f)?).await?;
        }
        self.meadow.delete(&box_key(h, b)).await
    }

    /// Remove hive `h`: only when it holds no box, unless `cascade` (its boxes and their
    /// frames first).
    pub async fn drop_hive(&self, h: &str, cascade: bool) -> Result<()> {
        let boxes = self.list_boxes(h).await?;
        if !boxes.is_empty() && !cascade {
            return Err(Error::invalid(format!(
                "hive {h} is not empty (boxes {}): drop them first, or DROP HIVE {h} CASCADE",
                boxes.join(", ")
            )));
        }
        for b in boxes {
            self.drop_box(h, &b, true).await?;
        }
        self.meadow.delete(&hive_key(h)).await
    }

    pub async fn list_hives(&self) -> Result<Vec<String>> {
        Ok(strip_json(
            self.meadow.list_names(&Dir::Hives.to_string()).await?,
        ))
    }

    pub async fn list_boxes(&self, h: &str) -> Result<Vec<String>> {
        self.require_hive(h).await?;
        Ok(strip_json(
            self.meadow
                .list_names(&Dir::Boxes(h.into()).to_string())
                .await?,
        ))
    }

    pub async fn list_frames(&self, h: &str, b: &str) -> Result<Vec<String>> {
        self.require_box(h, b).await?;
        Ok(strip_json(
            self.meadow
                .list_names(
                    &Dir::Frames {
                        hive: h.into(),
                        box_name: b.into(),
                    }
                    .to_string(),
                )
                .await?,
        ))
    }
}
