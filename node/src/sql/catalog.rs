//! DataFusion sees hives as catalogs, boxes as schemas and frames as tables. Catalog lookups
//! in DataFusion are synchronous while the registry lives in the meadow, so each statement is
//! bound first (every frame it names is loaded, asynchronously, with precise errors) and these
//! providers only hand out what was bound.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::catalog::{
    CatalogProvider, CatalogProviderList, SchemaProvider, TableFunctionArgs, TableFunctionImpl,
};
use datafusion::common::ScalarValue;
use datafusion::datasource::TableProvider;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::Expr;

use crate::names::{FrameAt, FrameRef};

/// A frame and the version for time travel (`None`: latest).
pub type TableKey = FrameAt;

/// The frames bound for the statement being planned.
#[derive(Debug, Default)]
pub struct Bound {
    tables: Mutex<HashMap<TableKey, Arc<dyn TableProvider>>>,
}

impl Bound {
    pub fn insert(&self, key: TableKey, table: Arc<dyn TableProvider>) {
        self.tables.lock().expect("bound lock").insert(key, table);
    }

    pub fn contains(&self, key: &TableKey) -> bool {
        self.tables.lock().expect("bound lock").contains_key(key)
    }

    pub fn clear(&self) {
        self.tables.lock().expect("bound lock").clear();
    }

    fn get(&self, key: &TableKey) -> Option<Arc<dyn TableProvider>> {
        self.tables.lock().expect("bound lock").get(key).cloned()
    }

    fn names(&self, filter: impl Fn(&TableKey) -> Option<String>) -> Vec<String> {
        let mut v: Vec<String> = self
            .tables
            .lock()
            .expect("bound lock")
            .keys()
            .filter_map(filter)
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

#[derive(Debug)]
pub struct HiveList {
    pub bound: Arc<Bound>,
}

impl CatalogProviderList for HiveList {
    fn register_catalog(
        &self,
        _name: String,
        _catalog: Arc<dyn CatalogProvider>,
    ) -> Option<Arc<dyn CatalogProvider>> {
        None // hives are created with CREATE HIVE, not registered in memory
    }

    fn catalog_names(&self) -> Vec<String> {
        self.bound.names(|k| Some(k.frame.hive.clone()))
    }

    fn catalog(&self, name: &str) -> Option<Arc<dyn CatalogProvider>> {
        Some(Arc::new(HiveCatalog {
            hive: name.to_string(),
            bound: self.bound.clone(),
        }))
    }
}

#[derive(Debug)]
struct HiveCatalog {
    hive: String,
    bound: Arc<Bound>,
}

impl CatalogProvider for HiveCatalog {
    fn schema_names(&self) -> Vec<String> {
        self.bound
            .names(|k| (k.frame.hive == self.hive).then(|| k.frame.box_name.clone()))
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        Some(Arc::new(BoxSchema {
            hive: self.hive.clone(),
            name: name.to_string(),
            bound: self.bound.clone(),
        }))
    }
}

#[derive(Debug)]
struct BoxSchema {
    hive: String,
    name: String,
    bound: Arc<Bound>,
}

impl BoxSchema {
    fn key(&self, frame: &str) -> TableKey {
        FrameRef {
            hive: self.hive.clone(),
            box_name: self.name.clone(),
            frame: frame.to_string(),
        }
        .at(None)
    }
}

#[async_trait]
impl SchemaProvider for BoxSchema {
    fn table_names(&self) -> Vec<String> {
        self.bound.names(|k| {
            (k.frame.hive == self.hive && k.frame.box_name == self.name)
                .then(|| k.frame.frame.clone())
        })
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        Ok(self.bound.get(&self.key(name)))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.bound.contains(&self.key(name))
    }
}

/// `frame_at('hive.box.frame', version)`: a frame as it was at a Delta version. The SQL layer
/// rewrites `h.b.f VERSION AS OF n` into this and binds the version before planning.
#[derive(Debug)]
pub struct FrameAtFunction {
    pub bound: Arc<Bound>,
}

pub const FRAME_AT: &str = "frame_at";

impl TableFunctionImpl for FrameAtFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> DfResult<Arc<dyn TableProvider>> {
        let usage = || {
            DataFusionError::Plan(
                "frame_at takes a frame name and a version: frame_at('hive.box.frame', 3)".into(),
            )
        };
        let (name, version) = match args.exprs() {
            [
                Expr::Literal(ScalarValue::Utf8(Some(n)), _),
                Expr::Literal(v, _),
            ] => {
                let v = match v {
                    ScalarValue::Int64(Some(v)) => *v,
                    ScalarValue::Int32(Some(v)) => *v as i64,
                    ScalarValue::UInt64(Some(v)) => *v as i64,
                    _ => return Err(usage()),
                };
                (n.clone(), v)
            }
            _ => return Err(usage()),
        };
        let key = name
            .parse::<FrameRef>()
            .map_err(|_| usage())?
            .at(Some(version));
        self.bound.get(&key).ok_or_else(|| {
            DataFusionError::Plan(format!("frame_at: {name} version {version} was not bound"))
        })
    }
}
