use super::*;

#[test]
fn every_statement_is_documented() {
    let doc = include_str!("../../../../docs/sql.md");
    let examples = [
        "USE HIVE h",
        "USE DATABASE h",
        "USE BOX h.b",
        "USE SCHEMA b",
        "SHOW HIVES",
        "SHOW DATABASES",
        "SHOW BOXES IN h",
        "SHOW SCHEMAS",
        "SHOW FRAMES IN h.b",
        "SHOW TABLES",
        "DESCRIBE h.b.f",
        "CREATE HIVE IF NOT EXISTS h",
        "CREATE DATABASE h",
        "CREATE BOX h.b",
        "CREATE SCHEMA h.b",
        "CREATE FRAME h.b.f (a INT)",
        "CREATE TABLE h.b.f (a INT) PARTITIONED BY (a)",
        "DROP FRAME IF EXISTS h.b.f",
        "DROP TABLE h.b.f",
        "DROP HIVE IF EXISTS h CASCADE",
        "DROP BOX h.b",
        "INSERT INTO h.b.f VALUES (1)",
        "INSERT OVERWRITE h.b.f SELECT 1",
        "DELETE FROM h.b.f WHERE a > 1",
        "UPDATE h.b.f SET a = 2 WHERE a = 1",
        "ALTER TABLE h.b.f ADD COLUMN c DOUBLE",
        "CREATE FUNCTION f AS '/x.wasm' LANGUAGE wasm",
        "CREATE OR REPLACE FUNCTION f AS '/x.wasm'",
        "DROP FUNCTION IF EXISTS f",
    ];
    let mut seen = std::collections::BTreeSet::new();
    for sql in examples {
        let s = parse(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        let syntax = s.syntax().unwrap_or_else(|| panic!("{sql} is not ours"));
        assert!(
            doc.contains(syntax),
            "docs/sql.md does not document {syntax}"
        );
        let first = sql.split(' ').take(2).collect::<Vec<_>>().join(" ");
        assert!(doc.contains(&first), "docs/sql.md does not name {first}");
        seen.insert(syntax);
    }
    assert_eq!(seen.len(), 19, "an example of every statement: {seen:?}");
    assert_eq!(parse("SELECT 1").unwrap().syntax(), None);
}

fn n(parts: &[&str]) -> Name {
    parts.iter().map(|s| s.to_string()).collect()
}

#[test]
fn splits_at_top_level_semicolons_only() {
    let s = parse_script("USE HIVE h; SELECT 'a;b' -- c;d\n; ;SELECT \"x;y\" FROM t").unwrap();
    assert_eq!(s.len(), 3, "{s:?}");
    assert_eq!(s[1].to_string(), "SELECT 'a;b'");
    assert_eq!(s[2].to_string(), "SELECT \"x;y\" FROM t");
    let e = parse_script("SELECT 1; SELEC 2").unwrap_err();
    assert!(e.message.contains("SQL syntax error"), "{e}");
}

#[test]
fn apiary_statements() {
    assert_eq!(parse("use hive H").unwrap(), Statement::UseHive("h".into()));
    assert_eq!(parse("USE \"H\"").unwrap(), Statement::UseHive("H".into()));
    assert_eq!(
        parse("USE SCHEMA h.b").unwrap(),
        Statement::UseBox(n(&["h", "b"]))
    );
    assert_eq!(parse("SHOW DATABASES").unwrap(), Statement::ShowHives);
    assert_eq!(
        parse("SHOW BOXES IN h").unwrap(),
        Statement::ShowBoxes(Some("h".into()))
    );
    assert_eq!(parse("show tables").unwrap(), Statement::ShowFrames(None));
    assert_eq!(
        parse("SHOW FRAMES FROM h.b").unwrap(),
        Statement::ShowFrames(Some(n(&["h", "b"])))
    );
    assert_eq!(
        parse("DESCRIBE h.b.f").unwrap(),
        Statement::Describe(n(&["h", "b", "f"]))
    );
    assert_eq!(
        parse("drop table if exists b.f").unwrap(),
        Statement::DropFrame {
            name: n(&["b", "f"]),
            if_exists: true
        }
    );
    assert!(matches!(parse("SELECT 1").unwrap(), Statement::Query(_)));
    assert!(matches!(
        parse("WITH a AS (SELECT 1) SELECT * FROM a").unwrap(),
        Statement::Query(_)
    ));
}

#[test]
fn create_table_with_types_and_partitions() {
    let s = parse(
        "CREATE TABLE IF NOT EXISTS h.b.t (id BIGINT NOT NULL, name varchar(20), ts timestamp, \
         \"Day\" date) PARTITIONED BY (\"Day\")",
    )
    .unwrap();
    let Statement::CreateFrame {
        name,
        columns,
        partition_by,
        if_not_exists,
    } = s
    else {
        panic!("{s:?}")
    };
    assert_eq!(name, n(&["h", "b", "t"]));
    assert!(if_not_exists);
    let types: Vec<_> = columns.iter().map(|c| c.spelt.as_str()).collect();
    assert_eq!(types, ["BIGINT", "varchar(20)", "timestamp", "date"]);
    let types: Vec<_> = columns.iter().map(|c| c.ty.name()).collect();
    assert_eq!(types, ["int64", "utf8", "timestamp", "date"]);
    assert_eq!(columns[3].name, "Day");
    assert_eq!(partition_by, vec!["Day"]);
}

#[test]
fn insert_forms() {
    let s = parse("INSERT INTO h.b.t (a, B) VALUES (1, 'x'), (2, 'y')").unwrap();
    let Statement::Insert {
        name,
        columns,
        source,
        overwrite,
    } = s
    else {
        panic!()
    };
    assert_eq!(
        (name, columns, overwrite),
        (n(&["h", "b", "t"]), n(&["a", "b"]), false)
    );
    assert!(source.to_string().starts_with("VALUES"), "{source}");
    let s = parse("INSERT OVERWRITE TABLE t SELECT * FROM u").unwrap();
    assert!(
        matches!(
            s,
            Statement::Insert {
                overwrite: true,
                ..
            }
        ),
        "{s:?}"
    );
}

#[test]
fn function_statements() {
    assert_eq!(
        parse("create function C2F as '/tmp/c.wasm' language WASM").unwrap(),
        Statement::CreateFunction {
            name: "c2f".into(),
            source: "/tmp/c.wasm".into(),
            replace: false,
        }
    );
    assert_eq!(
        parse("CREATE OR REPLACE FUNCTION f AS 'file:///x.wasm'").unwrap(),
        Statement::CreateFunction {
            name: "f".into(),
            source: "file:///x.wasm".into(),
            replace: true,
        }
    );
    assert_eq!(
        parse("DROP FUNCTION IF EXISTS f").unwrap(),
        Statement::DropFunction {
            name: "f".into(),
            if_exists: true,
        }
    );
}

#[test]
fn malformed_statements_are_clear_errors() {
    for (sql, want) in [
        ("USE", "expected"),
        ("SHOW NOTHING", "expected HIVES"),
        ("CREATE TABLE t", "column list"),
        ("CREATE TABLE t (a int,", "column name"),
        ("CREATE TABLE t (a)", "has no type"),
        (
            "MERGE INTO t USING u ON t.a = u.a WHEN MATCHED THEN DELETE",
            "MERGE is not supported yet",
        ),
        ("DELETE FROM t USING u WHERE t.a = u.a", "no USING"),
        (
            "DELETE FROM t WHERE a = 1 RETURNING a",
            "no USING, RETURNING",
        ),
        ("DELETE FROM t, u", "one frame at a time"),
        ("UPDATE t SET a = 1, a = 2", "sets column a twice"),
        ("UPDATE t AS x SET a = 1", "takes a frame name"),
        ("UPDATE t SET a = 1 FROM u", "no FROM"),
        ("UPDATE t SET (a, b) = (1, 2)", "one column per assignment"),
        (
            "ALTER TABLE t DROP COLUMN a",
            "DROP is not supported, only ADD COLUMN is",
        ),
        ("ALTER TABLE t", "expected ADD COLUMN"),
        ("ALTER TABLE t ADD COLUMN c", "has no type"),
        ("ALTER TABLE t ADD COLUMN c frobnicate", "frobnicate"),
        ("ALTER VIEW v AS SELECT 1", "ALTER VIEW is not supported"),
        ("DESCRIBE a.b.c.d", "more than three parts"),
        ("SELECT 'unterminated", "syntax error"),
        ("DROP VIEW v", "not supported"),
        ("DROP HIVE h.b", "one part"),
        ("DROP BOX a.b.c", "box or hive.box"),
        ("DROP HIVE h CASCADE now", "end of statement"),
        ("CREATE FUNCTION f", "AS '<path"),
        ("CREATE FUNCTION f AS x", "quoted path"),
        (
            "CREATE FUNCTION f AS 'f.wasm' LANGUAGE python",
            "LANGUAGE python is not supported",
        ),
        (
            "CREATE OR REPLACE TABLE t (a int)",
            "OR REPLACE is for functions",
        ),
        ("DROP FUNCTION a.b", "one part"),
    ] {
        let e = parse(sql).unwrap_err();
        assert!(e.message.contains(want), "{sql}: {e}");
    }
}

#[test]
fn every_statement_prints_as_sql_that_parses_back_to_it() {
    for sql in [
        "USE HIVE h",
        "USE \"Mixed\"",
        "USE BOX h.b",
        "SHOW HIVES",
        "SHOW BOXES IN h",
        "SHOW FRAMES",
        "SHOW FRAMES IN h.b",
        "DESCRIBE h.b.f",
        "CREATE HIVE IF NOT EXISTS h",
        "CREATE BOX h.\"B\"",
        "CREATE TABLE IF NOT EXISTS h.b.t (id BIGINT NOT NULL, name varchar(20), \"Day\" date) \
         PARTITIONED BY (\"Day\")",
        "DROP TABLE IF EXISTS b.f",
        "DROP HIVE h",
        "DROP DATABASE IF EXISTS \"H\" CASCADE",
        "DROP SCHEMA h.b RESTRICT",
        "DROP BOX IF EXISTS b CASCADE",
        "INSERT INTO h.b.t (a, B) VALUES (1, 'x'), (2, 'it''s')",
        "INSERT OVERWRITE TABLE t SELECT * FROM u WHERE k > 2",
        "DELETE FROM t",
        "ALTER FRAME h.b.t ADD COLUMN \"Note\" varchar(20), ADD COLUMN IF NOT EXISTS n BIGINT",
        "DELETE FROM h.b.t WHERE k > 2 AND s LIKE 'a%'",
        "UPDATE t SET v = v + 1, \"S\" = 'it''s' WHERE k IN (1, 2)",
        "CREATE OR REPLACE FUNCTION f AS '/tmp/it''s.wasm'",
        "DROP FUNCTION IF EXISTS f",
        "SELECT k, sum(v) FROM h.b.t VERSION AS OF 3 GROUP BY k ORDER BY k",
        "EXPLAIN SELECT * FROM frame_at('h.b.t', 1)",
    ] {
        let s = parse(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        let printed = s.to_string();
        assert_eq!(parse(&printed).unwrap(), s, "{sql} printed as {printed}");
    }
}

#[test]
fn the_dialect_parses_as_datafusions_generic_one_plus_versions() {
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::parser::Parser;
    for sql in [
        "SELECT a, b::int, 'x' || c AS d FROM t WHERE e IS NOT NULL LIMIT 3",
        "SELECT * FROM a JOIN b USING (k) LEFT JOIN c ON a.x = c.y",
        "WITH w AS (SELECT 1 AS x) SELECT x FROM w UNION ALL SELECT 2",
        "SELECT count(*) FILTER (WHERE v > 1), array_agg(v ORDER BY v) FROM t GROUP BY ALL",
        "SELECT * EXCLUDE (a) FROM t",
        "SELECT {'a': 1}, [1, 2][1], \"Q\".\"R\" FROM \"Q\"",
        "SELECT date_trunc('hour', ts) AS h, avg(v) OVER (PARTITION BY k ORDER BY ts) FROM t",
        "EXPLAIN ANALYZE SELECT 1",
        "SET datafusion.execution.batch_size = 1024",
    ] {
        let generic = Parser::parse_sql(&GenericDialect {}, sql).unwrap();
        let Statement::Query(ours) = parse(sql).unwrap_or_else(|e| panic!("{sql}: {e}")) else {
            panic!("{sql} is not a query")
        };
        assert_eq!(generic, vec![*ours], "{sql}");
    }
    let Statement::Query(q) = parse("SELECT * FROM t VERSION AS OF 2").unwrap() else {
        panic!()
    };
    assert!(q.to_string().contains("VERSION AS OF 2"), "{q}");
}
