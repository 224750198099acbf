//! The command line with malformed input: each mistake gives a one-line error naming it,
//! a non-zero exit, and no commit.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;

use common::TestMeadow;

/// Set up h.b.t (id int64, v float64, p utf8; partitioned by p) with one row.
fn setup() -> TestMeadow {
    let m = common::local();
    ok(&m, &["hive", "create", "h"]);
    ok(&m, &["box", "create", "h.b"]);
    ok(
        &m,
        &[
            "frame",
            "create",
            "h.b.t",
            "--schema",
            "id:int64,v:float64,p:utf8",
            "--partition-by",
            "p",
        ],
    );
    ok(&m, &["sql", "INSERT INTO h.b.t VALUES (1, 1.5, 'x')"]);
    m
}

fn ok(m: &TestMeadow, args: &[&str]) -> String {
    let (success, out, err) = m.run(args);
    assert!(success, "apiary {args:?} failed: {err}");
    out
}

/// Run a command that must fail; returns its error line.
fn fails(m: &TestMeadow, args: &[&str]) -> String {
    let (success, _, err) = m.run(args);
    assert!(!success, "apiary {args:?} should have failed");
    let lines: Vec<&str> = err.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 1, "one error line, got: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    lines[0].to_string()
}

fn version(m: &TestMeadow) -> String {
    let out = ok(m, &["frame", "describe", "h.b.t"]);
    out.lines()
        .nth(3)
        .unwrap()
        .split('|')
        .nth(7)
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn a_session_of_commands_round_trips() {
    let m = setup();
    assert_eq!(ok(&m, &["hive", "list"]).trim(), "h");
    assert_eq!(ok(&m, &["box", "list", "h"]).trim(), "b");
    assert_eq!(ok(&m, &["frame", "list", "h.b"]).trim(), "t");
    let out = ok(
        &m,
        &[
            "sql",
            "USE HIVE h; USE BOX b; SELECT id, v FROM t",
            "--format",
            "json",
        ],
    );
    assert_eq!(out.trim(), r#"[{"id":1,"v":1.5}]"#);
    let status: serde_json::Value = serde_json::from_str(&ok(&m, &["status"])).unwrap();
    assert_eq!(status["storage"], "local");
    assert!(status["bees"].as_u64().unwrap() >= 1);
    assert!(status["node_id"].as_str().unwrap().starts_with("node-"));
    for key in [
        "name",
        "cores",
        "memory_gb",
        "memory_per_bee_mb",
        "target_cell_size_mb",
        "state",
    ] {
        assert!(!status[key].is_null(), "status has {key}");
    }
    let bees: serde_json::Value = serde_json::from_str(&ok(&m, &["bees"])).unwrap();
    let bee = &bees[0];
    assert_eq!(bee["bee_id"], "bee-0");
    assert_eq!(bee["state"], "idle");
    for key in [
        "task",
        "memory_used",
        "memory_budget",
        "memory_used_mb",
        "memory_budget_mb",
    ] {
        assert!(bee.get(key).is_some(), "bee status has {key}");
    }
    let colony: serde_json::Value = serde_json::from_str(&ok(&m, &["colony"])).unwrap();
    assert_eq!(colony["regulation"], "cold");
    for key in [
        "temperature",
        "setpoint",
        "abandoned_tasks",
        "retried_tasks",
    ] {
        assert!(!colony[key].is_null(), "colony status has {key}");
    }
}

#[test]
fn write_reads_csv_jsonl_parquet_and_stdin() {
    let m = setup();
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("rows.csv");
    std::fs::write(&csv, "id,v,p\n2,2.5,y\n3,,z\n").unwrap();
    ok(&m, &["write", "h.b.t", csv.to_str().unwrap()]);
    let jsonl = dir.path().join("rows.jsonl");
    std::fs::write(
        &jsonl,
        "{\"id\": 4, \"v\": 4.5, \"p\": \"x\"}\n{\"id\": 5, \"p\": \"y\"}\n",
    )
    .unwrap();
    ok(&m, &["write", "h.b.t", jsonl.to_str().unwrap()]);
    // Parquet made by the CLI itself (arrow IPC would be another format): export then re-import.
    let parquet = dir.path().join("rows.parquet");
    {
        use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
        use arrow::datatypes::{DataType, Field, Schema};
        use std::sync::Arc;
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int32, false),
            Field::new("v", DataType::Float64, true),
            Field::new("p", DataType::Utf8, false),
        ]));
        let b = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(arrow::array::Int32Array::from(vec![6])),
                Arc::new(Float64Array::from(vec![6.5])),
                Arc::new(StringArray::from(vec!["w"])),
            ],
        )
        .unwrap();
        let _ = Int64Array::from(vec![0]);
        let f = std::fs::File::create(&parquet).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(f, schema, None).unwrap();
        w.write(&b).unwrap();
        w.close().unwrap();
    }
    ok(&m, &["write", "h.b.t", parquet.to_str().unwrap()]);
    let mut child = m
        .cli()
        .args(["write", "h.b.t", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"{\"id\": 7, \"v\": 7.5, \"p\": \"q\"}\n")
        .unwrap();
    assert!(child.wait().unwrap().success());
    let out = ok(
        &m,
        &[
            "sql",
            "SELECT count(*) AS n, sum(id) AS s, count(v) AS nv FROM h.b.t",
            "--format",
            "csv",
        ],
    );
    assert_eq!(out.trim(), "n,s,nv\n7,28,5");
}

#[test]
fn malformed_input_gives_clear_errors_and_commits_nothing() {
    let m = setup();
    let v0 = version(&m);
    let dir = tempfile::tempdir().unwrap();

    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["sql".into(), "SELEC 1".into()], "syntax error"),
        (
            vec!["sql".into(), "SELECT * FROM h.b.nope".into()],
            "frame not found: h.b.nope",
        ),
        (
            vec!["sql".into(), "SELECT * FROM h.nobox.t".into()],
            "box not found: h.nobox",
        ),
        (
            vec!["sql".into(), "SELECT * FROM nohive.b.t".into()],
            "hive not found: nohive",
        ),
        (
            vec!["sql".into(), "SELECT * FROM t".into()],
            "needs a hive and box",
        ),
        (
            vec!["sql".into(), "SELECT nocolumn FROM h.b.t".into()],
            "nocolumn",
        ),
        (
            vec!["sql".into(), "UPDATE h.b.t SET nope = 2".into()],
            "no column nope",
        ),
        (
            vec![
                "sql".into(),
                "DELETE FROM h.b.t WHERE id IN (SELECT 1)".into(),
            ],
            "subquery in DELETE or UPDATE is not supported",
        ),
        (
            vec!["sql".into(), "MERGE INTO h.b.t USING u ON true".into()],
            "MERGE is not supported yet",
        ),
        (
            vec!["sql".into(), "CREATE VIEW v AS SELECT 1".into()],
            "not supported",
        ),
        (
            vec![
                "sql".into(),
                "INSERT INTO h.b.t VALUES ('abc', 1.0, 'x')".into(),
            ],
            "column id",
        ),
        (
            vec![
                "sql".into(),
                "INSERT INTO h.b.t VALUES (2, 1.0, NULL)".into(),
            ],
            "null partition value in column p",
        ),
        (
            vec!["sql".into(), "INSERT INTO h.b.t VALUES (2, 1.0)".into()],
            "2 values per row for 3 columns",
        ),
        (
            vec![
                "sql".into(),
                "INSERT INTO h.b.t (id, nope) VALUES (2, 1)".into(),
            ],
            "unknown column nope",
        ),
        (
            vec![
                "sql".into(),
                "INSERT INTO h.b.t VALUES (1, 1.0, 'x'); SELEC".into(),
            ],
            "syntax error",
        ),
        (
            vec![
                "frame".into(),
                "create".into(),
                "h.b.u".into(),
                "--schema".into(),
                "a:varchar2000x".into(),
            ],
            "unknown column type \"varchar2000x\"",
        ),
        (
            vec![
                "frame".into(),
                "create".into(),
                "h.b.u".into(),
                "--schema".into(),
                "a".into(),
            ],
            "write name:type",
        ),
        (
            vec![
                "frame".into(),
                "create".into(),
                "h.b".into(),
                "--schema".into(),
                "a:int".into(),
            ],
            "expected hive.box.frame",
        ),
        (
            vec![
                "frame".into(),
                "create".into(),
                "h.b.t".into(),
                "--schema".into(),
                "a:int".into(),
            ],
            "different schema",
        ),
        (
            vec![
                "frame".into(),
                "create".into(),
                "h.b.bad name".into(),
                "--schema".into(),
                "a:int".into(),
            ],
            "bad frame name",
        ),
    ];
    for (args, want) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let err = fails(&m, &args);
        assert!(err.contains(want), "{args:?}: expected {want:?} in {err}");
    }

    // A bad value in a file fails the whole write.
    let csv = dir.path().join("bad.csv");
    std::fs::write(&csv, "id,v,p\n2,2.5,y\nthree,3.5,z\n").unwrap();
    let err = fails(&m, &["write", "h.b.t", csv.to_str().unwrap()]);
    assert!(err.contains("column id") && err.contains("three"), "{err}");
    let jsonl = dir.path().join("bad.jsonl");
    std::fs::write(&jsonl, "{\"id\": 2, \"p\": \"y\"}\n{\"id\": \"x\"\n").unwrap();
    assert!(fails(&m, &["write", "h.b.t", jsonl.to_str().unwrap()]).contains("JSON"));
    let unknown = dir.path().join("rows.txt");
    std::fs::write(&unknown, "id\n1\n").unwrap();
    assert!(fails(&m, &["write", "h.b.t", unknown.to_str().unwrap()]).contains("--format"));
    assert!(fails(&m, &["write", "h.b.t", "/no/such/file.csv"]).contains("cannot open"));

    assert_eq!(version(&m), v0, "no malformed input committed anything");
    let out = ok(
        &m,
        &["sql", "SELECT count(*) AS n FROM h.b.t", "--format", "csv"],
    );
    assert_eq!(out.trim(), "n\n1");
}

#[test]
fn bad_uris_and_config_are_refused() {
    let m = common::local();
    for (uri, want) in [
        ("ftp://host/x", "unknown scheme ftp://"),
        ("s3://", "no bucket name"),
        ("", "it is empty"),
    ] {
        let mut cmd = m.cli_at(uri);
        let out = cmd.args(["hive", "list"]).output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("bad storage URI") && err.contains(want),
            "{uri}: {err}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("apiary.toml");
    std::fs::write(&cfg, "[meadow]\nurl = 'x'\n").unwrap();
    let err = fails(&m, &["--config", cfg.to_str().unwrap(), "status"]);
    assert!(
        err.contains("unknown field `url`") && err.contains("apiary.toml"),
        "{err}"
    );
    let err = fails(&m, &["--config", "/no/such/apiary.toml", "status"]);
    assert!(err.contains("cannot read config"), "{err}");
    let mut cmd = m.cli();
    let out = cmd
        .env("APIARY_MEMORY_PER_BEE", "lots")
        .arg("status")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("APIARY_MEMORY_PER_BEE"));
}

/// `apiary config check` and `config get`, which the Pi image's boot script uses on the boot
/// partition's apiary.toml; the image's template itself must pass.
#[test]
fn config_check_and_get_serve_the_boot_script() {
    let m = common::local();
    let template = concat!(env!("CARGO_MANIFEST_DIR"), "/../images/boot/apiary.toml");
    let out = ok(&m, &["--config", template, "config", "check"]);
    assert!(out.trim_end().ends_with("apiary.toml: ok"), "{out}");

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("apiary.toml");
    let c = cfg.to_str().unwrap();
    std::fs::write(
        &cfg,
        "[device]\nhostname = \"hive-3\"\nssh_authorized_keys = [\"ssh-ed25519 AAAA a@b\", \
         \"ssh-rsa BBBB c@d\"]\n[device.wifi]\nssid = \"Bee's \\\"Net\\\" $HOME\"\n\
         psk = \"p4ss phrase!\"\n",
    )
    .unwrap();
    ok(&m, &["--config", c, "config", "check"]);
    assert_eq!(
        ok(&m, &["--config", c, "config", "get", "device.hostname"]),
        "hive-3\n"
    );
    assert_eq!(
        ok(&m, &["--config", c, "config", "get", "device.wifi.ssid"]),
        "Bee's \"Net\" $HOME\n"
    );
    assert_eq!(
        ok(
            &m,
            &["--config", c, "config", "get", "device.ssh_authorized_keys"]
        ),
        "ssh-ed25519 AAAA a@b\nssh-rsa BBBB c@d\n"
    );
    assert_eq!(
        ok(&m, &["--config", c, "config", "get", "device.wifi.country"]),
        ""
    );
    // The config file is this machine's even with --remote: nothing is asked of a node.
    let out = ok(
        &m,
        &[
            "--remote",
            "http://127.0.0.1:9",
            "--config",
            c,
            "config",
            "get",
            "device.hostname",
        ],
    );
    assert_eq!(out, "hive-3\n");

    for (text, want) in [
        ("[device]\nhostname = \"my_pi\"\n", "device.hostname"),
        (
            "[device.wifi]\nssid = \"x\"\npsk = \"short\"\n",
            "device.wifi.psk",
        ),
        ("[meadow]\nendpont = \"x\"\n", "unknown field `endpont`"),
        ("[mqtt\nurl = 1\n", "apiary.toml"),
    ] {
        std::fs::write(&cfg, text).unwrap();
        let err = fails(&m, &["--config", c, "config", "check"]);
        assert!(err.contains(want), "{text:?}: {err}");
        fails(&m, &["--config", c, "config", "get", "device.hostname"]);
    }
}

/// An "S3" endpoint that accepts every PUT, ignoring If-None-Match: Apiary must refuse it.
#[test]
fn store_without_conditional_writes_is_refused() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            std::thread::spawn(move || serve_ignoring_preconditions(stream));
        }
    });
    let m = common::local();
    let mut cmd = m.cli_at("s3://bucket/prefix");
    let out = cmd
        .args(["hive", "create", "h"])
        .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"))
        .env("AWS_ACCESS_KEY_ID", "x")
        .env("AWS_SECRET_ACCESS_KEY", "x")
        .env("AWS_REGION", "us-east-1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not honour conditional writes"), "{err}");
    assert!(err.contains("conditional_put"), "names the setting: {err}");
}

fn serve_ignoring_preconditions(stream: std::net::TcpStream) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let mut request = String::new();
        if reader.read_line(&mut request).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let response = if request.starts_with("PUT") {
            "HTTP/1.1 200 OK\r\nETag: \"abc\"\r\nContent-Length: 0\r\n\r\n"
        } else if request.starts_with("DELETE") {
            "HTTP/1.1 204 No Content\r\n\r\n"
        } else {
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
        };
        if out.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

#[test]
fn shell_reads_statements_across_lines_and_quits() {
    let m = setup();
    let mut child = m
        .cli()
        .arg("shell")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"USE HIVE h;\nSELECT count(*)\n  AS n FROM b.t;\nSELEC oops;\nSELECT 40 + 2 AS answer;\n\\q\nSELECT 'after quit';\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("| 1 |"),
        "USE carried over and the count ran: {stdout}"
    );
    assert!(
        stdout.contains("| 42     |"),
        "an error does not end the shell: {stdout}"
    );
    assert!(!stdout.contains("after quit"), "\\q quits");
    assert!(stderr.contains("syntax error"), "{stderr}");
}

#[test]
fn release_commands_say_what_is_wrong() {
    let m = common::local();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("release.key");
    let key = key.to_str().unwrap();
    let printed = ok(&m, &["release", "keygen", key]);
    assert!(
        printed.contains("[update]\nchannel = \"stable\"\ntrusted_keys = [\""),
        "{printed}"
    );
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the signing key is private");
    assert!(fails(&m, &["release", "keygen", key]).contains("never overwritten"));
    let missing = dir.path().join("nope.deb");
    let e = fails(
        &m,
        &[
            "release",
            "publish",
            missing.to_str().unwrap(),
            "--key",
            key,
        ],
    );
    assert!(e.contains("is not a Debian package"), "{e}");
    let e = fails(&m, &["release", "publish", key, "--key", "/no/such/key"]);
    assert!(e.contains("cannot read signing key /no/such/key"), "{e}");
    // Nothing a node follows was written.
    assert!(
        !std::path::Path::new(&m.uri)
            .join("_apiary/releases")
            .exists()
    );
}
