//! Helpers shared by the integration tests: meadows to run against (a local directory, and
//! the real S3 server that scripts/test starts), and the `apiary` binary.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use apiary::Apiary;
use apiary::config::Config;
use apiary::sql::QueryResult;
use arrow::array::{Array, Int64Array, RecordBatch};

/// A meadow for one test: its URI, store options, and the env a child process needs.
pub struct TestMeadow {
    pub label: &'static str,
    pub uri: String,
    pub options: BTreeMap<String, String>,
    pub env: Vec<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

pub fn local() -> TestMeadow {
    let dir = tempfile::tempdir().unwrap();
    TestMeadow {
        label: "local",
        uri: dir.path().join("meadow").display().to_string(),
        options: BTreeMap::new(),
        env: vec![],
        _dir: Some(dir),
    }
}

/// The S3 meadow under a fresh prefix, or `None` when no S3 server was started (plain
/// `cargo test`). scripts/test sets APIARY_REQUIRE_S3=1 so a missing server fails there.
pub fn s3() -> Option<TestMeadow> {
    let Ok(endpoint) = std::env::var("APIARY_TEST_S3_ENDPOINT") else {
        if std::env::var("APIARY_REQUIRE_S3").is_ok() {
            panic!("APIARY_REQUIRE_S3 is set but APIARY_TEST_S3_ENDPOINT is not");
        }
        eprintln!("skipping the S3 half: APIARY_TEST_S3_ENDPOINT not set (scripts/test sets it)");
        return None;
    };
    let bucket = std::env::var("APIARY_TEST_S3_BUCKET").unwrap_or_else(|_| "apiary-test".into());
    let prefix = uuid::Uuid::new_v4();
    let options: BTreeMap<String, String> = [
        ("endpoint", endpoint.as_str()),
        ("access_key_id", "test"),
        ("secret_access_key", "test"),
        ("region", "us-east-1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let env = vec![
        ("AWS_ENDPOINT_URL".to_string(), endpoint.clone()),
        ("AWS_ACCESS_KEY_ID".to_string(), "test".to_string()),
        ("AWS_SECRET_ACCESS_KEY".to_string(), "test".to_string()),
        ("AWS_REGION".to_string(), "us-east-1".to_string()),
    ];
    Some(TestMeadow {
        label: "s3",
        uri: format!("s3://{bucket}/{prefix}"),
        options,
        env,
        _dir: None,
    })
}

impl TestMeadow {
    pub fn config(&self) -> Config {
        let mut c = Config::default();
        c.meadow.uri = Some(self.uri.clone());
        c.meadow.options = self.options.clone();
        c.node.state_dir =
            std::env::temp_dir().join(format!("apiary-test-{}", uuid::Uuid::new_v4()));
        c
    }

    pub async fn open(&self) -> Apiary {
        Apiary::open(self.config()).await.unwrap()
    }

    /// The `apiary` binary pointed at this meadow.
    pub fn cli(&self) -> Command {
        self.cli_at(&self.uri)
    }

    /// The `apiary` binary with this meadow's environment but another storage URI.
    pub fn cli_at(&self, uri: &str) -> Command {
        self.cli_node(uri, &std::env::temp_dir().join("apiary-test-cli"))
    }

    /// The `apiary` binary as a node with its own state dir (its own UDF cache, WAL, ...).
    pub fn cli_node(&self, uri: &str, state_dir: &std::path::Path) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_apiary"));
        cmd.arg("--storage").arg(uri);
        cmd.arg("--state-dir").arg(state_dir);
        cmd.env_remove("APIARY_CONFIG");
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Run the CLI with `args`; returns (success, stdout, stderr).
    pub fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out: Output = self.cli().args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// Run SQL in a fresh session and return the last statement's result.
/// A frame's name from `hive.box.frame`.
pub fn fr(name: &str) -> apiary::names::FrameRef {
    name.parse().expect("a frame name")
}

pub async fn sql(apiary: &Apiary, sql: &str) -> QueryResult {
    match apiary.sql(sql).await {
        Ok(mut r) => r.pop().unwrap(),
        Err(e) => panic!("{sql}: {e}"),
    }
}

/// All values of an Int64 column across batches (nulls as None).
pub fn i64s(batches: &[RecordBatch], col: usize) -> Vec<Option<i64>> {
    batches
        .iter()
        .flat_map(|b| {
            let a =
                arrow::compute::cast(b.column(col), &arrow::datatypes::DataType::Int64).unwrap();
            let a = a.as_any().downcast_ref::<Int64Array>().unwrap().clone();
            (0..a.len()).map(move |i| a.is_valid(i).then(|| a.value(i)))
        })
        .collect()
}

/// A single Int64 scalar result.
pub async fn scalar(apiary: &Apiary, q: &str) -> i64 {
    let r = sql(apiary, q).await;
    i64s(&r.batches, 0)[0].unwrap()
}

/// Where `cargo build -p apiary-udf --examples --target wasm32-wasip2 --release` puts the
/// components: the target dir this test binary was built in.
pub fn udf_examples() -> std::path::PathBuf {
    let dir = match std::env::var("APIARY_UDF_EXAMPLES") {
        Ok(d) => std::path::PathBuf::from(d),
        Err(_) => {
            let exe = std::env::current_exe().unwrap();
            // <target>/debug/deps/udf-<hash>
            let target = exe.ancestors().nth(3).unwrap().to_path_buf();
            target.join("wasm32-wasip2/release/examples")
        }
    };
    assert!(
        dir.join("celsius_to_f.wasm").exists(),
        "no UDF examples in {}: build them first with `cargo build -p apiary-udf --examples --target wasm32-wasip2 --release` (scripts/test does)",
        dir.display()
    );
    dir
}

pub fn udf_example(name: &str) -> std::path::PathBuf {
    udf_examples().join(format!("{name}.wasm"))
}

pub fn udf_wasm(name: &str) -> bytes::Bytes {
    std::fs::read(udf_example(name)).unwrap().into()
}

/// A port nothing listens on right now (for a server that cannot pick its own).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Log text without terminal colour codes.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// An `apiary node` process with its log file.
pub struct Node {
    pub child: Child,
    pub log: PathBuf,
}

impl Node {
    /// Start `apiary node` with this config body and wait until it says it is ready.
    pub fn start(config: &Path, log: &Path) -> Node {
        Node::start_with(config, log, &[])
    }

    /// Started with these environment variables added.
    pub fn start_with(config: &Path, log: &Path, env: &[(&str, &str)]) -> Node {
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_apiary"))
            .arg("--config")
            .arg(config)
            .arg("node")
            .env_remove("APIARY_STORAGE")
            .envs(env.iter().copied())
            .env(
                "APIARY_LOG",
                std::env::var("APIARY_TEST_NODE_LOG").unwrap_or_else(|_| "warn,apiary=info".into()),
            )
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap();
        let mut node = Node {
            child,
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        // The log is appended to across restarts: wait for one more "ready" line.
        let before = std::fs::read_to_string(log)
            .unwrap_or_default()
            .matches("apiary node ready")
            .count();
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if text.matches("apiary node ready").count() > before {
                break;
            }
            if let Ok(Some(status)) = node.child.try_wait() {
                panic!("node exited ({status}) before it was ready:\n{text}");
            }
            assert!(Instant::now() < deadline, "node not ready in time:\n{text}");
            std::thread::sleep(Duration::from_millis(20));
        }
        node
    }

    /// The node's HTTP API (`http://127.0.0.1:<port>`), from its latest "ready" line.
    pub fn http_url(&self) -> String {
        let text = strip_ansi(&std::fs::read_to_string(&self.log).unwrap());
        let line = text
            .lines()
            .rfind(|l| l.contains("apiary node ready"))
            .expect("a ready line");
        let at = line
            .find(" http=")
            .expect("the ready line names the HTTP address")
            + 6;
        line[at..].split_whitespace().next().unwrap().to_string()
    }

    /// The token the node made in its state dir.
    pub fn token(state_dir: &Path) -> String {
        std::fs::read_to_string(state_dir.join("api-token"))
            .unwrap()
            .trim()
            .to_string()
    }

    pub fn kill9(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }

    pub fn stop(mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "node exit: {status}\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }
}

/// A test that fails half-way must not leave its nodes running.
impl Drop for Node {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A CA and a certificate for 127.0.0.1 signed by it, made with the openssl command.
pub fn test_certificates(dir: &Path) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl (scripts/setup installs it)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=apiary test CA",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    // mosquitto started as root reads its files as the `mosquitto` user: let it (and it must
    // get through the temporary directories above too).
    use std::os::unix::fs::PermissionsExt;
    let open = std::fs::Permissions::from_mode(0o755);
    for d in dir.ancestors().take(2) {
        let _ = std::fs::set_permissions(d, open.clone());
    }
    for f in ["ca.pem", "server.pem", "server.key"] {
        std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
}
