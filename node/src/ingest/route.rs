//! Routes: which frame a topic's messages go to, in which format, with which extra columns.

use std::collections::BTreeMap;

use crate::config::{NewFields, PayloadFormat, RouteConfig};
use crate::error::{Error, Result};
use crate::names::FrameRef;

/// The default route: `apiary/<hive>/<box>/<frame>`, JSON, frames made on first sight.
pub const DEFAULT_FILTER: &str = "apiary/+/+/+";
/// The column the default route fills with the receive time (when the frame has it).
pub const RECEIVED_AT: &str = "received_at";

#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    pub filter: String,
    /// `None`: the frame comes from the topic (`apiary/<hive>/<box>/<frame>`).
    pub frame: Option<FrameRef>,
    pub format: PayloadFormat,
    /// column → topic level index
    pub columns: BTreeMap<String, usize>,
    pub received_at: Option<String>,
    pub new_fields: NewFields,
    /// The default route's hives (`ingest.default_route_hives`); empty: any.
    pub hives: Vec<String>,
}

impl Route {
    pub fn default_route() -> Route {
        Route {
            name: "default".into(),
            filter: DEFAULT_FILTER.into(),
            frame: None,
            format: PayloadFormat::Json,
            columns: BTreeMap::new(),
            received_at: Some(RECEIVED_AT.into()),
            new_fields: NewFields::Evolve,
            hives: Vec::new(),
        }
    }

    pub fn from_config(i: usize, c: &RouteConfig) -> Result<Route> {
        let ctx = |e: Error| e.context(format!("ingest route {} ({})", i + 1, c.topic));
        validate_filter(&c.topic).map_err(ctx)?;
        let frame: FrameRef = c.frame.parse().map_err(ctx)?;
        let mut columns = BTreeMap::new();
        for (col, spec) in &c.columns {
            let level = spec
                .strip_prefix('{')
                .and_then(|s| s.strip_suffix('}'))
                .and_then(|s| s.parse::<usize>().ok())
                .ok_or_else(|| {
                    ctx(Error::invalid(format!(
                        "column {col} = {spec:?}: write a topic level as \"{{1}}\""
                    )))
                })?;
            columns.insert(col.clone(), level);
        }
        Ok(Route {
            name: format!("route{}", i + 1),
            filter: c.topic.clone(),
            frame: Some(frame),
            format: c.format,
            columns,
            received_at: c.received_at.clone(),
            new_fields: c.new_fields,
            hives: Vec::new(),
        })
    }

    /// The frame a topic's message goes to; `Err` names why the topic cannot be stored.
    pub fn frame_for(&self, topic: &str) -> Result<FrameRef> {
        if let Some(f) = &self.frame {
            return Ok(f.clone());
        }
        let levels: Vec<&str> = topic.split('/').collect();
        match levels.as_slice() {
            ["apiary", h, _, _] if !self.hives.is_empty() && !self.hives.iter().any(|x| x == h) => {
                Err(Error::invalid(format!(
                    "topic {topic}: the default route takes only hives {:?} (ingest.default_route_hives)",
                    self.hives
                )))
            }
            ["apiary", h, b, f] => FrameRef::new(h, b, f),
            _ => Err(Error::invalid(format!(
                "topic {topic} is not apiary/<hive>/<box>/<frame>"
            ))),
        }
    }

    /// Extra column values taken from the topic.
    pub fn topic_columns(&self, topic: &str) -> Vec<(String, String)> {
        let levels: Vec<&str> = topic.split('/').collect();
        self.columns
            .iter()
            .filter_map(|(col, i)| levels.get(*i).map(|v| (col.clone(), v.to_string())))
            .collect()
    }
}

pub fn validate_filter(filter: &str) -> Result<()> {
    let levels: Vec<&str> = filter.split('/').collect();
    let ok = !filter.is_empty()
        && levels.iter().enumerate().all(|(i, l)| match *l {
            "#" => i == levels.len() - 1,
            "+" => true,
            l => !l.contains(['+', '#']),
        });
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!("bad MQTT topic filter {filter:?}")))
    }
}

/// MQTT topic matching with `+` (one level) and `#` (the rest).
pub fn matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_filters_match_like_mqtt() {
        assert!(matches("a/+/c", "a/b/c"));
        assert!(!matches("a/+/c", "a/b/d"));
        assert!(matches("a/#", "a/b/c/d"));
        assert!(matches("#", "x"));
        assert!(!matches("a/+", "a/b/c"));
        assert!(matches(DEFAULT_FILTER, "apiary/h/b/f"));
        assert!(!matches(DEFAULT_FILTER, "apiary/h/b"));
    }

    #[test]
    fn default_route_takes_the_frame_from_the_topic() {
        let r = Route::default_route();
        assert_eq!(
            r.frame_for("apiary/farm/s/t").unwrap(),
            "farm.s.t".parse().unwrap()
        );
        assert!(r.frame_for("apiary/bad name/s/t").is_err());
        let limited = Route {
            hives: vec!["sensors".into()],
            ..Route::default_route()
        };
        assert!(limited.frame_for("apiary/sensors/s/t").is_ok());
        let e = limited.frame_for("apiary/farm/s/t").unwrap_err();
        assert!(e.message.contains("default_route_hives"), "{e}");
    }

    #[test]
    fn configured_routes_are_checked() {
        let mut c = RouteConfig {
            topic: "sensors/+/temp".into(),
            frame: "farm.s.temps".into(),
            format: PayloadFormat::Json,
            columns: [("device".to_string(), "{1}".to_string())].into(),
            received_at: None,
            new_fields: NewFields::Reject,
        };
        let r = Route::from_config(0, &c).unwrap();
        assert_eq!(r.new_fields, NewFields::Reject);
        assert_eq!(
            r.topic_columns("sensors/d7/temp"),
            vec![("device".to_string(), "d7".to_string())]
        );
        c.frame = "farm.temps".into();
        assert!(
            Route::from_config(0, &c)
                .unwrap_err()
                .message
                .contains("hive.box.frame")
        );
        c.frame = "farm.s.temps".into();
        c.topic = "a/#/b".into();
        assert!(
            Route::from_config(0, &c)
                .unwrap_err()
                .message
                .contains("bad MQTT topic filter")
        );
        c.topic = "a/b".into();
        c.columns = [("x".to_string(), "1".to_string())].into();
        assert!(
            Route::from_config(0, &c)
                .unwrap_err()
                .message
                .contains("topic level")
        );
    }
}
