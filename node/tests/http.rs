//! The node's HTTP API end to end: real `apiary node` processes, real HTTP clients (reqwest,
//! the `apiary --remote` CLI, headless Chromium for the status page).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Node, free_port, test_certificates};
use futures::StreamExt;
use reqwest::StatusCode;

/// A node on `meadow` with its state in `dir/<name>`, HTTP on a free port, the embedded MQTT
/// broker on another, and `extra` TOML appended.
struct ApiNode {
    node: Node,
    url: String,
    token: String,
    state: PathBuf,
}

impl ApiNode {
    fn start(dir: &Path, name: &str, meadow: &Path, extra: &str) -> ApiNode {
        let state = dir.join(name);
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "[node]\nstate_dir = {:?}\n[meadow]\nuri = {:?}\n[mqtt]\nlisten = \"127.0.0.1:{}\"\n\
                 [http]\nlisten = \"127.0.0.1:0\"\n{extra}\n",
                state.display().to_string(),
                meadow.display().to_string(),
                free_port(),
            ),
        )
        .unwrap();
        let node = Node::start(&config, &dir.join(format!("{name}.log")));
        let url = node.http_url();
        let token = Node::token(&state);
        ApiNode {
            node,
            url,
            token,
            state,
        }
    }

    fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap()
    }

    async fn sql(&self, sql: &str, accept: &str) -> (StatusCode, String) {
        let resp = self
            .client()
            .post(format!("{}/v1/sql", self.url))
            .bearer_auth(&self.token)
            .header("accept", accept)
            .body(sql.to_string())
            .send()
            .await
            .unwrap();
        (resp.status(), resp.text().await.unwrap())
    }

    /// The `apiary` CLI talking to this node.
    fn cli(&self, token: &str) -> Command {
        self.cli_to(&self.url, token)
    }

    /// The `apiary` CLI talking to `url` (through APIARY_REMOTE) with `token`.
    fn cli_to(&self, url: &str, token: &str) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_apiary"));
        cmd.env("APIARY_REMOTE", url)
            .env("APIARY_TOKEN", token)
            .env_remove("APIARY_CONFIG")
            .env("APIARY_STATE_DIR", self.state.join("cli"));
        cmd
    }
}

fn run(cmd: &mut Command, stdin: Option<&str>) -> (bool, String, String) {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    {
        use std::io::Write;
        let mut input = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every route but the health probe: 401 without the token or with a wrong one (bearer or
/// basic, or a scheme we do not know), 200 with it. Then the bad requests: too big (413),
/// malformed SQL (400 with the parser's words), and other bad input, each with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_need_the_token_and_bad_requests_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let meadow = dir.path().join("meadow");
    let n = ApiNode::start(dir.path(), "a", &meadow, "max_udf = \"1MiB\"");
    let c = n.client();
    let wasm = std::fs::read(common::udf_example("celsius_to_f")).unwrap();

    let health = c.get(format!("{}/healthz", n.url)).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK, "the probe needs no token");

    let routes: Vec<(&str, &str, Vec<u8>)> = vec![
        ("GET", "/", vec![]),
        ("GET", "/metrics", vec![]),
        ("GET", "/v1/status", vec![]),
        ("GET", "/v1/swarm", vec![]),
        ("GET", "/v1/colony", vec![]),
        ("GET", "/v1/bees", vec![]),
        ("GET", "/v1/frames", vec![]),
        ("GET", "/v1/ingest", vec![]),
        ("POST", "/v1/sql", b"SELECT 1 AS one".to_vec()),
        ("PUT", "/v1/udfs/celsius_to_f", wasm.clone()),
        ("GET", "/v1/udfs/celsius_to_f", vec![]),
        ("GET", "/v1/udfs", vec![]),
        ("DELETE", "/v1/udfs/celsius_to_f", vec![]),
    ];
    use base64::Engine as _;
    let basic = |pass: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("me:{pass}"))
        )
    };
    let wrong = [
        None,
        Some("Bearer not-the-token".to_string()),
        Some(format!("Bearer {}x", n.token)),
        Some(basic("nope")),
        Some(format!("Token {}", n.token)),
        Some("Basic %%%".to_string()),
    ];
    for (method, path, body) in &routes {
        let req = |auth: Option<String>| {
            let mut r = c
                .request(method.parse().unwrap(), format!("{}{path}", n.url))
                .body(body.clone());
            if let Some(a) = auth {
                r = r.header("authorization", a);
            }
            r
        };
        for auth in &wrong {
            let resp = req(auth.clone()).send().await.unwrap();
            assert_eq!(
                resp.status(),
                StatusCode::UNAUTHORIZED,
                "{method} {path} {auth:?}"
            );
            assert!(resp.headers().contains_key("www-authenticate"));
        }
        let resp = req(Some(format!("Bearer {}", n.token)))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        assert_eq!(
            status,
            StatusCode::OK,
            "{method} {path}: {}",
            resp.text().await.unwrap()
        );
    }
    // The page also takes the token as a Basic password (what a browser sends).
    let page = c
        .get(format!("{}/", n.url))
        .header("authorization", basic(&n.token))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);

    // Too big: SQL over http.max_sql (1 MiB), a component over http.max_udf (1 MiB here).
    let huge = format!("SELECT '{}'", "x".repeat(2 << 20));
    let (status, _) = n.sql(&huge, "application/json").await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let resp = c
        .put(format!("{}/v1/udfs/big", n.url))
        .bearer_auth(&n.token)
        .body(vec![0u8; 2 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // Malformed SQL: 400 and the parser's words.
    let (status, body) = n.sql("SELEC 1", "application/json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let err: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["error"], "invalid_input");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("SQL syntax error"),
        "{body}"
    );
    for (sql, status, words) in [
        ("", StatusCode::BAD_REQUEST, "no SQL statement"),
        (
            "SELECT * FROM no.such.frame",
            StatusCode::NOT_FOUND,
            "not found",
        ),
        (
            "SELECT 1; SELEC 2",
            StatusCode::BAD_REQUEST,
            "SQL syntax error",
        ),
    ] {
        let (got, body) = n.sql(sql, "application/json").await;
        assert_eq!(got, status, "{sql}: {body}");
        assert!(body.contains(words), "{sql}: {body}");
    }
    let resp = c
        .post(format!("{}/v1/sql", n.url))
        .bearer_auth(&n.token)
        .body(vec![0xff, 0xfe, 0x00])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(resp.text().await.unwrap().contains("not UTF-8"));
    let (status, body) = n.sql("SELECT 1", "image/png").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body.contains("text/csv"),
        "says what it can answer in: {body}"
    );
    let scoped = c
        .post(format!("{}/v1/sql", n.url))
        .bearer_auth(&n.token)
        .header("apiary-hive", "nohive")
        .body("SELECT 1")
        .send()
        .await
        .unwrap();
    assert_eq!(scoped.status(), StatusCode::NOT_FOUND);

    // Bad UDF uploads: not WebAssembly, a bad name; nothing stored.
    for (name, body, words) in [
        ("notwasm", b"hello".to_vec(), "WebAssembly"),
        ("bad%20name", wasm.clone(), "name"),
    ] {
        let resp = c
            .put(format!("{}/v1/udfs/{name}", n.url))
            .bearer_auth(&n.token)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{name}");
        let text = resp.text().await.unwrap();
        assert!(text.contains(words), "{name}: {text}");
    }
    let missing = c
        .get(format!("{}/v1/udfs/notwasm", n.url))
        .bearer_auth(&n.token)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let nowhere = c
        .get(format!("{}/v2/anything", n.url))
        .bearer_auth(&n.token)
        .send()
        .await
        .unwrap();
    assert_eq!(nowhere.status(), StatusCode::NOT_FOUND);

    // Results in each format, and USE carried by headers.
    let (status, _) = n
        .sql(
            "CREATE HIVE h; CREATE BOX h.b; CREATE TABLE h.b.t (id BIGINT, s TEXT); \
             INSERT INTO h.b.t VALUES (1, 'a'), (2, 'b,c')",
            "application/json",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, csv) = n.sql("SELECT * FROM h.b.t ORDER BY id", "text/csv").await;
    assert_eq!(csv, "id,s\n1,a\n2,\"b,c\"\n");
    let (_, json) = n.sql("SELECT * FROM h.b.t ORDER BY id", "").await;
    let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(rows[1]["s"], "b,c");
    let used = c
        .post(format!("{}/v1/sql", n.url))
        .bearer_auth(&n.token)
        .body("USE h.b")
        .send()
        .await
        .unwrap();
    assert_eq!(used.headers()["apiary-hive"], "h");
    assert_eq!(used.headers()["apiary-box"], "b");
    let metrics = c
        .get(format!("{}/metrics", n.url))
        .bearer_auth(&n.token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("apiary_queries_total{outcome=\"error\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("apiary_temperature "), "{metrics}");
    assert!(
        metrics.contains("apiary_ingest_received_total "),
        "{metrics}"
    );
    n.node.stop();
}

/// A UDF uploaded over HTTP to node A is usable from the CLI through node B (another node on
/// the same meadow, nothing compiled there yet), and from the CLI on the meadow directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udf_uploaded_over_http_is_usable_from_another_node() {
    let dir = tempfile::tempdir().unwrap();
    let meadow = dir.path().join("meadow");
    let a = ApiNode::start(dir.path(), "a", &meadow, "");
    let b = ApiNode::start(dir.path(), "b", &meadow, "");
    let wasm = std::fs::read(common::udf_example("celsius_to_f")).unwrap();
    let resp = a
        .client()
        .put(format!("{}/v1/udfs/c2f", a.url))
        .bearer_auth(&a.token)
        .body(wasm)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let manifest: serde_json::Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!(manifest["returns"], "float64", "{manifest}");

    let (ok, out, err) = run(
        b.cli(&b.token).args([
            "sql",
            "SELECT c2f(100.0) AS f, c2f(-40.0) AS g",
            "--format",
            "csv",
        ]),
        None,
    );
    assert!(ok, "{err}");
    assert_eq!(out, "f,g\n212.0,-40.0\n");
    let (ok, out, err) = run(
        Command::new(env!("CARGO_BIN_EXE_apiary"))
            .env_remove("APIARY_TOKEN")
            .args(["--storage", meadow.to_str().unwrap()])
            .env_remove("APIARY_REMOTE")
            .env("APIARY_STATE_DIR", dir.path().join("cli"))
            .args(["sql", "SELECT c2f(0.0) AS f", "--format", "csv"]),
        None,
    );
    assert!(ok, "{err}");
    assert_eq!(out, "f\n32.0\n");
    // Listing and removing over the remote CLI.
    let (ok, out, _) = run(b.cli(&b.token).args(["udf", "list"]), None);
    assert!(ok && out.contains("\"c2f\""), "{out}");
    let (ok, _, err) = run(b.cli(&b.token).args(["udf", "rm", "c2f"]), None);
    assert!(ok, "{err}");
    let (ok, _, err) = run(b.cli(&b.token).args(["sql", "SELECT c2f(1.0)"]), None);
    assert!(!ok && err.contains("c2f"), "{err}");
    a.node.stop();
    b.node.stop();
}

/// `apiary --remote ... shell` with statements piped in: USE carries over between
/// statements, an error is reported and the shell goes on. And the remote CLI's own bad
/// input: a wrong token, no token, a bad URL, a command that needs the meadow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_remote_shell_and_cli() {
    let dir = tempfile::tempdir().unwrap();
    let n = ApiNode::start(dir.path(), "a", &dir.path().join("meadow"), "");
    let script = "CREATE HIVE h;\nCREATE BOX h.b;\nUSE h.b;\nCREATE TABLE t (id BIGINT);\n\
                  INSERT INTO t VALUES (1), (2), (3);\nSELECT count(*) AS n FROM t;\n\
                  SELEC oops;\nSELECT sum(id) AS total\n  FROM t;\n\\q\n";
    let (ok, out, err) = run(n.cli(&n.token).arg("shell"), Some(script));
    assert!(ok, "{err}");
    assert!(out.contains("| n |") && out.contains("| 3 |"), "{out}");
    assert!(
        out.contains("| total |") && out.contains("| 6     |"),
        "{out}"
    );
    assert!(err.contains("error: SQL syntax error"), "{err}");

    let (ok, out, _) = run(n.cli(&n.token).arg("status"), None);
    assert!(ok && out.contains("\"node_id\""), "{out}");
    for cmd in ["swarm", "colony", "bees"] {
        let (ok, out, err) = run(n.cli(&n.token).arg(cmd), None);
        assert!(ok, "{cmd}: {err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap();
    }
    let (ok, _, err) = run(n.cli("wrong-token-0000000").args(["sql", "SELECT 1"]), None);
    assert!(!ok && err.contains("refused the token"), "{err}");
    let (ok, _, err) = run(n.cli("").args(["sql", "SELECT 1"]), None);
    assert!(!ok && err.contains("needs the node's token"), "{err}");
    let (ok, _, err) = run(n.cli_to("pi.local:8080", &n.token).arg("status"), None);
    assert!(!ok && err.contains("like http://host:8080"), "{err}");
    let elsewhere = format!("http://127.0.0.1:{}", free_port());
    let (ok, _, err) = run(n.cli_to(&elsewhere, &n.token).arg("status"), None);
    assert!(!ok && err.contains("cannot reach the node"), "{err}");
    let (ok, _, err) = run(n.cli(&n.token).args(["hive", "list"]), None);
    assert!(!ok && err.contains("not over --remote"), "{err}");
    n.node.stop();
}

/// A result of over 1 GB streams through a node whose memory stays bounded: its peak RSS
/// (VmHWM) stays far below the result's size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gigabyte_result_streams_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let n = ApiNode::start(dir.path(), "a", &dir.path().join("meadow"), "");
    let rows = 1_050_000u64;
    let resp = n
        .client()
        .post(format!("{}/v1/sql", n.url))
        .bearer_auth(&n.token)
        .header("accept", "application/vnd.apache.arrow.stream")
        .body(format!(
            "SELECT value, repeat('x', 1000) AS pad FROM generate_series(1, {rows})"
        ))
        .timeout(Duration::from_secs(600))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.bytes_stream();
    let mut total = 0u64;
    let mut tail = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap();
        total += chunk.len() as u64;
        tail.extend_from_slice(&chunk[chunk.len().saturating_sub(8)..]);
        tail.drain(..tail.len().saturating_sub(8));
    }
    assert!(total > rows * 1000, "{total} bytes");
    assert_eq!(
        tail,
        [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0],
        "the stream ends properly"
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", n.node.child.id())).unwrap();
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    eprintln!(
        "streamed {:.2} GB; node peak RSS {} MiB",
        total as f64 / 1e9,
        peak_kib / 1024
    );
    assert!(
        peak_kib < 400 * 1024,
        "node peak RSS {} MiB while streaming {total} bytes",
        peak_kib / 1024
    );
    n.node.stop();
}

/// HTTPS with a configured certificate; a missing certificate file stops the node with a
/// clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_configured_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    test_certificates(&certs);
    let tls = format!(
        "tls_cert = {:?}\ntls_key = {:?}\n",
        certs.join("server.pem").display().to_string(),
        certs.join("server.key").display().to_string()
    );
    // The [http] table is already open in the config: these keys land in it.
    let n = ApiNode::start(dir.path(), "a", &dir.path().join("meadow"), &tls);
    assert!(n.url.starts_with("https://"), "{}", n.url);
    let ca = reqwest::Certificate::from_pem(&std::fs::read(certs.join("ca.pem")).unwrap()).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let resp = client
        .get(format!("{}/v1/status", n.url))
        .bearer_auth(&n.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let plain = n.url.replace("https://", "http://");
    assert!(
        reqwest::get(format!("{plain}/healthz")).await.is_err(),
        "no plain HTTP on the TLS port"
    );
    n.node.stop();

    std::fs::write(
        dir.path().join("bad.toml"),
        format!(
            "[node]\nstate_dir = {:?}\n[http]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"/nonexistent.pem\"\ntls_key = \"/nonexistent.key\"\n[ingest]\nenabled = false\n",
            dir.path().join("bad").display().to_string()
        ),
    )
    .unwrap();
    let (ok, _, err) = run(
        Command::new(env!("CARGO_BIN_EXE_apiary"))
            .arg("--config")
            .arg(dir.path().join("bad.toml"))
            .arg("node"),
        None,
    );
    assert!(!ok && err.contains("http.tls_cert"), "{err}");
}

/// The status page in headless Chromium: it renders (a real screenshot, not a blank one) and
/// shows live values: a frame's row count grows between two loads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_renders_live_values_in_chromium() {
    let Some(chromium) = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| {
            Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
    else {
        assert!(
            std::env::var("APIARY_REQUIRE_CHROMIUM").is_err(),
            "APIARY_REQUIRE_CHROMIUM is set but no chromium is installed"
        );
        eprintln!("skipping: no chromium (scripts/setup installs it)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let n = ApiNode::start(dir.path(), "a", &dir.path().join("meadow"), "");
    let (status, _) = n
        .sql(
            "CREATE HIVE farm; CREATE BOX farm.barn; CREATE TABLE farm.barn.temps (v DOUBLE); \
             INSERT INTO farm.barn.temps VALUES (1.0), (2.0)",
            "",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let page = format!(
        "http://apiary:{}@{}/",
        n.token,
        n.url.trim_start_matches("http://")
    );
    let browse = |extra: &[&str]| {
        let out = Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
            ])
            .arg(format!(
                "--user-data-dir={}",
                dir.path().join("chromium").display()
            ))
            .args(extra)
            .arg(&page)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dom = browse(&["--dump-dom"]);
    assert!(dom.contains("data-frame=\"farm.barn.temps\">2<"), "{dom}");
    assert!(
        dom.contains(&format!("<span id=\"node-id\">{}", node_id(&n.state))),
        "{dom}"
    );
    let (status, _) = n
        .sql("INSERT INTO farm.barn.temps VALUES (3.0), (4.0), (5.0)", "")
        .await;
    assert_eq!(status, StatusCode::OK);
    let dom = browse(&["--dump-dom"]);
    assert!(
        dom.contains("data-frame=\"farm.barn.temps\">5<"),
        "live: {dom}"
    );

    let shot = dir.path().join("page.png");
    browse(&[
        &format!("--screenshot={}", shot.display()),
        "--window-size=1024,768",
    ]);
    let png = std::fs::read(&shot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert_eq!((width, height), (1024, 768));
    // A blank 1024×768 page compresses to a few KiB; text, cards and tables do not.
    assert!(
        png.len() > 15_000,
        "screenshot of {} bytes looks blank",
        png.len()
    );
    n.node.stop();
}

fn node_id(state: &Path) -> String {
    std::fs::read_to_string(state.join("node_id"))
        .unwrap()
        .trim()
        .to_string()
}
