//! Names users give things (hives, boxes, frames, columns, functions, nodes) and the one
//! type that names a frame wherever its identity travels: [`FrameRef`].

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// A name is letters, digits, `_` or `-`, starts with a letter or `_`, and has at most 128
/// characters: safe as an object key, a topic level and (quoted) an SQL identifier.
pub fn validate_name(what: &str, name: &str) -> Result<()> {
    if is_name(name) {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "bad {what} name {name:?}: use letters, digits, _ or - (starting with a letter or _), at most 128 characters"
        )))
    }
}

pub(crate) fn is_name(name: &str) -> bool {
    name.len() <= 128
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// A frame's full name, `hive.box.frame`, each part a valid name. Stored (in a frame's
/// definition) as `hive`, `box` and `name`.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct FrameRef {
    pub hive: String,
    #[serde(rename = "box")]
    pub box_name: String,
    #[serde(rename = "name")]
    pub frame: String,
}

impl FrameRef {
    /// A checked name: each part must be a valid name.
    pub fn new(hive: &str, box_name: &str, frame: &str) -> Result<FrameRef> {
        validate_name("hive", hive)?;
        validate_name("box", box_name)?;
        validate_name("frame", frame)?;
        Ok(FrameRef {
            hive: hive.into(),
            box_name: box_name.into(),
            frame: frame.into(),
        })
    }

    /// This frame as of `version` (`None`: the latest).
    pub fn at(&self, version: Option<i64>) -> FrameAt {
        FrameAt {
            frame: self.clone(),
            version,
        }
    }

    /// The frame that takes the rows this one refuses: `<frame>_rejects`.
    pub fn rejects(&self) -> FrameRef {
        FrameRef {
            frame: format!("{}_rejects", self.frame),
            ..self.clone()
        }
    }

    /// The parts as the object keys and URLs of the meadow spell them.
    pub fn parts(&self) -> [&str; 3] {
        [&self.hive, &self.box_name, &self.frame]
    }
}

impl fmt::Display for FrameRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.hive, self.box_name, self.frame)
    }
}

impl FromStr for FrameRef {
    type Err = Error;
    fn from_str(s: &str) -> Result<FrameRef> {
        match s.split('.').collect::<Vec<_>>().as_slice() {
            [h, b, f] => FrameRef::new(h, b, f),
            _ => Err(Error::invalid(format!(
                "bad frame name {s:?}: expected hive.box.frame"
            ))),
        }
    }
}

/// A frame at one version (time travel) or at its latest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FrameAt {
    pub frame: FrameRef,
    pub version: Option<i64>,
}

impl fmt::Display for FrameAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.version {
            Some(v) => write!(f, "{} VERSION AS OF {v}", self.frame),
            None => write!(f, "{}", self.frame),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn name() -> impl Strategy<Value = String> {
        "[A-Za-z_][A-Za-z0-9_-]{0,20}"
    }

    proptest! {
        #[test]
        fn frame_refs_round_trip(h in name(), b in name(), f in name()) {
            let r = FrameRef::new(&h, &b, &f).unwrap();
            prop_assert_eq!(r.to_string().parse::<FrameRef>().unwrap(), r);
        }
    }

    #[test]
    fn bad_frame_names_are_refused() {
        for bad in ["a.b", "a.b.c.d", "a..c", "1a.b.c", "a.b.c d", ""] {
            assert!(bad.parse::<FrameRef>().is_err(), "{bad}");
        }
        let r: FrameRef = "farm.sensors.readings".parse().unwrap();
        assert_eq!(r.rejects().to_string(), "farm.sensors.readings_rejects");
        assert_eq!(
            r.at(Some(3)).to_string(),
            "farm.sensors.readings VERSION AS OF 3"
        );
    }
}
