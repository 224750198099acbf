//! MQTT ingestion end to end: real brokers (mosquitto started by scripts/test, and the
//! node's embedded one), real node processes, real SIGKILLs.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Node, TestMeadow, fr, free_port, test_certificates};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// The external broker scripts/test started, or `None` (plain `cargo test`).
fn mosquitto() -> Option<(String, u16)> {
    let Ok(url) = std::env::var("APIARY_TEST_MQTT_URL") else {
        if std::env::var("APIARY_REQUIRE_MQTT").is_ok() {
            panic!("APIARY_REQUIRE_MQTT is set but APIARY_TEST_MQTT_URL is not");
        }
        eprintln!("skipping: APIARY_TEST_MQTT_URL not set (scripts/test starts mosquitto)");
        return None;
    };
    let hp = url.trim_start_matches("mqtt://");
    let (h, p) = hp.rsplit_once(':').unwrap();
    Some((h.to_string(), p.parse().unwrap()))
}

struct Setup {
    m: TestMeadow,
    dir: tempfile::TempDir,
    group: String,
}

impl Setup {
    fn new() -> Setup {
        Setup {
            m: common::local(),
            dir: tempfile::tempdir().unwrap(),
            group: format!("t{}", uuid::Uuid::new_v4().simple()),
        }
    }

    /// A config file for node `name` with `mqtt` and `ingest` TOML sections.
    fn config(&self, name: &str, mqtt: &str, ingest: &str) -> PathBuf {
        let state = self.dir.path().join(name);
        let path = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "[node]\nstate_dir = {:?}\n[meadow]\nuri = {:?}\n[http]\nlisten = \"127.0.0.1:0\"\n[mqtt]\n{mqtt}\n[ingest]\n{}shared_group = {:?}\n{ingest}\n",
                state.display().to_string(),
                self.m.uri,
                if ingest.contains("max_latency") {
                    ""
                } else {
                    "max_latency = \"300ms\"\n"
                },
                // One swarm per test: tests share the broker but not their messages.
                self.group,
            ),
        )
        .unwrap();
        path
    }

    /// On the shared mosquitto, a route of this test's own (other tests' messages match
    /// `apiary/+/+/+` too): messages on `<group>/readings` go to `frame`.
    fn private_route(&self, frame: &str) -> (String, String) {
        let topic = format!("{}/readings", self.group);
        let ingest = format!(
            "default_route = false\n[[ingest.routes]]\ntopic = {topic:?}\nframe = {frame:?}\nreceived_at = \"received_at\"\n"
        );
        (topic, ingest)
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    /// (rows, distinct ids) in a frame; (0, 0) before it exists.
    fn counts(&self, frame: &str) -> (u64, u64) {
        let (ok, out, _) = self.m.run(&[
            "sql",
            &format!("SELECT count(*) AS n, count(DISTINCT id) AS d FROM {frame}"),
            "--format",
            "csv",
        ]);
        if !ok {
            return (0, 0);
        }
        let line = out.lines().nth(1).unwrap_or("0,0");
        let (n, d) = line.split_once(',').unwrap();
        (n.parse().unwrap(), d.parse().unwrap())
    }

    /// Wait until `want` distinct ids are in, then a moment more for any extra rows.
    fn wait_for_rows(&self, frame: &str, want: u64, within: Duration) -> (u64, u64) {
        let deadline = Instant::now() + within;
        loop {
            let c = self.counts(frame);
            if c.1 >= want || Instant::now() > deadline {
                std::thread::sleep(Duration::from_millis(1000));
                return self.counts(frame);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// Publish `ids` as JSON messages at QoS 1 and wait for every PUBACK.
/// `per_sec` limits the rate; `payload` can replace some payloads (malformed ones).
async fn publish(
    host: &str,
    port: u16,
    topic: &str,
    ids: std::ops::Range<u64>,
    per_sec: Option<u64>,
    payload: impl Fn(u64) -> Vec<u8>,
) {
    let mut opts = MqttOptions::new(format!("pub-{}", uuid::Uuid::new_v4()), host, port);
    opts.set_inflight(500)
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(opts, 1000);
    let n = ids.end - ids.start;
    let acks = tokio::spawn(async move {
        let mut acked = 0;
        while acked < n {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                // A reconnecting QoS 1 publisher resends what the broker may already have,
                // and the broker then holds (and delivers) two messages: duplicates the node
                // could not tell apart. Say so instead of blaming the node.
                Err(e) => panic!("the test publisher lost its connection: {e}"),
            }
        }
    });
    let started = Instant::now();
    for (k, i) in ids.enumerate() {
        client
            .publish(topic, QoS::AtLeastOnce, false, payload(i))
            .await
            .unwrap();
        if let Some(rate) = per_sec {
            let due = started + Duration::from_secs_f64(k as f64 / rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                tokio::time::sleep(wait).await;
            }
        }
    }
    tokio::time::timeout(Duration::from_secs(300), acks)
        .await
        .expect("all PUBACKs")
        .unwrap();
}

fn reading(i: u64) -> Vec<u8> {
    format!(
        r#"{{"id": {i}, "temp": {}.5, "device": "d{}"}}"#,
        i % 40,
        i % 7
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_messages_through_mosquitto() {
    let Some((host, port)) = mosquitto() else {
        return;
    };
    let s = Setup::new();
    let frame = "mq.s.readings";
    let (topic, ingest) = s.private_route(frame);
    let cfg = s.config("a", &format!("url = \"mqtt://{host}:{port}\""), &ingest);
    let node = Node::start(&cfg, &s.log("a"));
    // mosquitto queues at most 65,535 messages per session (packet ids), so pace the
    // publisher to keep the backlog under that.
    publish(&host, port, &topic, 0..100_000, Some(3_000), reading).await;
    let (n, d) = s.wait_for_rows(frame, 100_000, Duration::from_secs(180));
    assert_eq!((n, d), (100_000, 100_000), "every message once");
    node.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_messages_through_the_embedded_broker() {
    let s = Setup::new();
    let port = free_port();
    let cfg = s.config("a", &format!("listen = \"127.0.0.1:{port}\""), "");
    let node = Node::start(&cfg, &s.log("a"));
    publish(
        "127.0.0.1",
        port,
        "apiary/emb/s/readings",
        0..100_000,
        None,
        reading,
    )
    .await;
    let (n, d) = s.wait_for_rows("emb.s.readings", 100_000, Duration::from_secs(180));
    assert_eq!((n, d), (100_000, 100_000), "every message once");
    // The receive time column was made from the default route.
    let (ok, out, err) = s.m.run(&[
        "sql",
        "SELECT count(received_at) FROM emb.s.readings",
        "--format",
        "csv",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("100000"), "{out}");
    node.stop();
}

/// Ten SIGKILLs at random points while 50k QoS 1 messages arrive: every message lands once.
/// (Restarts after a crash make sled skip ahead in sequence numbers; the redelivery window is
/// kept by count so a broker's resend of an already committed message is still recognised.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_loses_and_duplicates_nothing() {
    let Some((host, port)) = mosquitto() else {
        return;
    };
    let s = Setup::new();
    let frame = "kill.s.readings";
    let (topic, ingest) = s.private_route(frame);
    let cfg = s.config(
        "k",
        &format!("url = \"mqtt://{host}:{port}\""),
        &format!("flush_messages = 200\n{ingest}"),
    );
    // Register the node's persistent session before publishing, so the broker queues for it.
    Node::start(&cfg, &s.log("k")).stop();
    let publisher = {
        let (host, topic) = (host.clone(), topic.clone());
        tokio::spawn(
            async move { publish(&host, port, &topic, 0..50_000, Some(4_000), reading).await },
        )
    };
    let mut rng_state = 0x9e3779b97f4a7c15u64 ^ std::process::id() as u64;
    let mut rand_ms = |lo: u64, hi: u64| {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        lo + rng_state % (hi - lo)
    };
    for _ in 0..10 {
        let node = Node::start(&cfg, &s.log("k"));
        std::thread::sleep(Duration::from_millis(rand_ms(200, 1500)));
        node.kill9();
    }
    publisher.await.unwrap();
    let node = Node::start(&cfg, &s.log("k"));
    let (n, d) = s.wait_for_rows(frame, 50_000, Duration::from_secs(180));
    if d != 50_000 {
        let (_, out, _) = s.m.run(&[
            "sql",
            &format!("SELECT id FROM {frame} ORDER BY id"),
            "--format",
            "csv",
        ]);
        let ids: Vec<u64> = out.lines().skip(1).map(|l| l.parse().unwrap()).collect();
        let mut gaps = Vec::new();
        let mut expect = 0;
        for id in ids {
            if id > expect {
                gaps.push((expect, id - 1));
            }
            expect = id + 1;
        }
        eprintln!("missing id ranges: {gaps:?}");
        let (_, out, _) = s.m.run(&["sql", &format!("SELECT id, count(*) AS c FROM {frame} GROUP BY id HAVING count(*) > 1 ORDER BY id LIMIT 20"), "--format", "csv"]);
        eprintln!("duplicated ids: {out}");
        eprintln!(
            "{}",
            std::fs::read_to_string(s.log("k"))
                .unwrap_or_default()
                .lines()
                .filter(|l| !l.contains("DEBUG"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    if n != d {
        let (_, out, _) = s.m.run(&["sql", &format!("SELECT id, count(*) AS c, min(received_at) AS first, max(received_at) AS last FROM {frame} GROUP BY id HAVING count(*) > 1 ORDER BY id LIMIT 20"), "--format", "csv"]);
        eprintln!("duplicated ids:\n{out}");
        eprintln!(
            "{}",
            std::fs::read_to_string(s.log("k"))
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("replayed")
                    || l.contains("WARN")
                    || l.contains("ERROR")
                    || l.contains("connected to")
                    || l.contains("redelivered"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    assert_eq!(d, 50_000, "no message lost");
    assert_eq!(n, 50_000, "no message stored twice");
    node.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_go_to_rejects_and_the_rest_lands() {
    let s = Setup::new();
    let port = free_port();
    let cfg = s.config(
        "r",
        &format!("listen = \"127.0.0.1:{port}\""),
        "max_payload = \"1KiB\"",
    );
    let node = Node::start(&cfg, &s.log("r"));
    // One in eleven is bad, in four ways.
    let bad = |i: u64| i % 11 == 5;
    let payload = |i: u64| -> Vec<u8> {
        if !bad(i) {
            return reading(i);
        }
        match (i / 11) % 4 {
            0 => b"not json at all".to_vec(),
            1 => format!(r#"{{"id": "id-{i}", "temp": 1.0}}"#).into_bytes(),
            2 => b"[1, 2, 3]".to_vec(),
            _ => format!(r#"{{"id": {i}, "pad": "{}"}}"#, "x".repeat(2000)).into_bytes(),
        }
    };
    // Valid messages first so the frame's columns come from good data.
    publish(
        "127.0.0.1",
        port,
        "apiary/rej/s/readings",
        0..5,
        None,
        reading,
    )
    .await;
    s.wait_for_rows("rej.s.readings", 5, Duration::from_secs(30));
    let started = Instant::now();
    publish(
        "127.0.0.1",
        port,
        "apiary/rej/s/readings",
        5..11_005,
        None,
        payload,
    )
    .await;
    let n_bad = (5..11_005).filter(|i| bad(*i)).count() as u64;
    assert_eq!(n_bad, 1000);
    let good = 11_005 - n_bad;
    let (n, d) = s.wait_for_rows("rej.s.readings", good, Duration::from_secs(120));
    let took = started.elapsed();
    assert_eq!((n, d), (good, good));
    let (ok, out, err) = s.m.run(&[
        "sql",
        "SELECT count(*) AS n, count(DISTINCT error) AS kinds, min(length(error)) AS shortest FROM rej.s.readings_rejects",
        "--format",
        "csv",
    ]);
    assert!(ok, "{err}");
    let vals: Vec<u64> = out
        .lines()
        .nth(1)
        .unwrap()
        .split(',')
        .map(|v| v.parse().unwrap())
        .collect();
    assert_eq!(vals[0], 1000, "every bad message is in the rejects frame");
    assert!(vals[1] >= 4, "with reasons for each kind of fault: {out}");
    assert!(vals[2] > 10);
    assert!(
        took < Duration::from_secs(90),
        "ingest did not stall: {took:?}"
    );
    node.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_one_subscription() {
    let Some((host, port)) = mosquitto() else {
        return;
    };
    let s = Setup::new();
    let url = format!("url = \"mqtt://{host}:{port}\"");
    let frame = "share.s.readings";
    let (topic, ingest) = s.private_route(frame);
    let a = Node::start(&s.config("a", &url, &ingest), &s.log("a"));
    let b = Node::start(&s.config("b", &url, &ingest), &s.log("b"));
    publish(&host, port, &topic, 0..20_000, Some(5_000), reading).await;
    let (n, d) = s.wait_for_rows(frame, 20_000, Duration::from_secs(120));
    if (n, d) != (20_000, 20_000) {
        for name in ["a", "b"] {
            let log = std::fs::read_to_string(s.log(name)).unwrap_or_default();
            let notable: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("connected"))
                .collect();
            let st = apiary::ingest::read_status(&s.dir.path().join(name));
            eprintln!("node {name}: {st:?}\n{}", notable.join("\n"));
        }
    }
    assert_eq!(
        (n, d),
        (20_000, 20_000),
        "each message ingested by exactly one node"
    );
    a.stop();
    b.stop();
    for name in ["a", "b"] {
        let st = apiary::ingest::read_status(&s.dir.path().join(name)).unwrap();
        assert!(st.committed_rows > 0, "node {name} took part: {st:?}");
    }
}

fn parquet_files(dir: &Path) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|f| f != "_delta_log") {
                n += parquet_files(&p);
            }
        } else if p.extension().is_some_and(|e| e == "parquet") {
            n += 1;
        }
    }
    n
}

/// Two nodes ingest with short cell latency (many small cells); the one holding the swarm's
/// compaction lease merges them and vacuums the merged-away files; rows are unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_cells_are_merged_and_vacuumed_by_the_lease_holder() {
    let Some((host, port)) = mosquitto() else {
        return;
    };
    let s = Setup::new();
    let url = format!("url = \"mqtt://{host}:{port}\"");
    let frame = "compact.s.readings";
    let (topic, route) = s.private_route(frame);
    let ingest = format!(
        "compact_interval = \"1s\"\nvacuum_retention = \"1ms\"\nmax_latency = \"100ms\"\n{route}"
    );
    let a = Node::start(&s.config("a", &url, &ingest), &s.log("a"));
    let b = Node::start(&s.config("b", &url, &ingest), &s.log("b"));
    publish(&host, port, &topic, 0..3_000, Some(500), reading).await;
    let (n, d) = s.wait_for_rows(frame, 3_000, Duration::from_secs(120));
    assert_eq!((n, d), (3_000, 3_000));

    let table_dir = PathBuf::from(&s.m.uri).join("compact/s/readings");
    let reader = s.m.open().await;
    let deadline = Instant::now() + Duration::from_secs(90);
    let (cells, files) = loop {
        let cells = reader
            .frames()
            .info(&fr("compact.s.readings"))
            .await
            .unwrap()
            .cell_count;
        let files = parquet_files(&table_dir);
        if cells <= 2 && files == cells as usize {
            break (cells, files);
        }
        assert!(
            Instant::now() < deadline,
            "still {cells} cells and {files} files on disk"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(cells >= 1 && files >= 1);
    assert_eq!(
        s.counts(frame),
        (3_000, 3_000),
        "merging kept every row once"
    );

    a.stop();
    b.stop();
    let statuses: Vec<_> = ["a", "b"]
        .iter()
        .map(|n| apiary::ingest::read_status(&s.dir.path().join(n)).unwrap())
        .collect();
    let compacting: Vec<_> = statuses.iter().filter(|st| st.compactions > 0).collect();
    assert_eq!(compacting.len(), 1, "only the lease holder compacts");
    assert!(compacting[0].cells_compacted >= 10, "{:?}", compacting[0]);
    assert!(compacting[0].cells_vacuumed >= 10, "{:?}", compacting[0]);
    let lease = apiary::meadow::lease::read(reader.meadow(), "compaction")
        .await
        .unwrap()
        .unwrap();
    assert!(!lease.holder.is_empty());
}

/// With a tiny WAL cap the node stops acking (the broker keeps the messages) until its
/// cells are committed, then carries on by itself: everything lands, nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_write_ahead_log_holds_acks_until_commits_catch_up() {
    let s = Setup::new();
    let port = free_port();
    let cfg = s.config(
        "w",
        &format!("listen = \"127.0.0.1:{port}\""),
        "wal_max = \"64KiB\"\nmax_latency = \"1s\"\n",
    );
    let node = Node::start(&cfg, &s.log("w"));
    publish(
        "127.0.0.1",
        port,
        "apiary/bp/s/readings",
        0..5_000,
        None,
        reading,
    )
    .await;
    let (n, d) = s.wait_for_rows("bp.s.readings", 5_000, Duration::from_secs(120));
    assert_eq!((n, d), (5_000, 5_000));
    node.stop();
    let st = apiary::ingest::read_status(&s.dir.path().join("w")).unwrap();
    assert!(st.ack_pauses > 0, "acks were held back: {st:?}");
    assert_eq!(st.acked, 5_000, "{st:?}");
    assert_eq!(st.held_acks, 0, "{st:?}");
}

/// mqtts:// to a broker whose certificate chains to `mqtt.ca_file`: messages land. Without
/// that CA (system roots only) the node refuses the broker's certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_an_external_broker() {
    if mosquitto().is_none() {
        return;
    }
    let s = Setup::new();
    let certs = s.dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    test_certificates(&certs);
    let (tls_port, plain_port) = (free_port(), free_port());
    let conf = certs.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "allow_anonymous true\npersistence false\nlistener {tls_port} 127.0.0.1\ncafile {0}/ca.pem\ncertfile {0}/server.pem\nkeyfile {0}/server.key\nlistener {plain_port} 127.0.0.1\n",
            certs.display()
        ),
    )
    .unwrap();
    let mut broker = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", plain_port)).is_err() {
        assert!(Instant::now() < deadline, "mosquitto did not start");
        std::thread::sleep(Duration::from_millis(20));
    }

    let frame = "tls.s.readings";
    let (topic, route) = s.private_route(frame);
    let mqtt = format!(
        "url = \"mqtts://127.0.0.1:{tls_port}\"\nca_file = {:?}",
        certs.join("ca.pem").display().to_string()
    );
    let node = Node::start(&s.config("t", &mqtt, &route), &s.log("t"));
    publish("127.0.0.1", plain_port, &topic, 0..500, None, reading).await;
    assert_eq!(
        s.wait_for_rows(frame, 500, Duration::from_secs(60)),
        (500, 500)
    );
    node.stop();

    // The same broker without its CA: the certificate is refused, nothing is read.
    let untrusted = Node::start(
        &s.config(
            "u",
            &format!("url = \"mqtts://127.0.0.1:{tls_port}\""),
            &route,
        ),
        &s.log("u"),
    );
    let log = std::fs::read_to_string(s.log("u")).unwrap();
    assert!(
        log.contains("UnknownIssuer") || log.contains("certificate"),
        "the node says why it cannot connect:\n{log}"
    );
    untrusted.stop();
    let _ = broker.kill();
    let _ = broker.wait();
}

/// InfluxDB line protocol through the embedded broker: tags, typed fields and the line's own
/// timestamp become columns of an auto-created frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn influx_line_protocol_lands_with_its_timestamps() {
    let s = Setup::new();
    let port = free_port();
    let cfg = s.config(
        "i",
        &format!("listen = \"127.0.0.1:{port}\""),
        "default_route = false\n[[ingest.routes]]\ntopic = \"telegraf/#\"\nframe = \"tg.s.metrics\"\nformat = \"influx\"\n",
    );
    let node = Node::start(&cfg, &s.log("i"));
    publish("127.0.0.1", port, "telegraf/host1", 0..200, None, |i| {
        format!(
            "cpu,host=h{} id={i}i,load={}.25,busy={}\ncpu,host=h9 id={}i,load=0 {}",
            i % 3,
            i % 4,
            i % 2 == 0,
            i + 1000,
            1_764_000_000_000_000_000u64 + i
        )
        .into_bytes()
    })
    .await;
    let (n, d) = s.wait_for_rows("tg.s.metrics", 400, Duration::from_secs(60));
    assert_eq!((n, d), (400, 400));
    let (ok, out, err) = s.m.run(&[
        "sql",
        "SELECT count(time), min(time), count(DISTINCT host), sum(CAST(busy AS INT)) FROM tg.s.metrics",
        "--format",
        "csv",
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("200,2025-11-24T16:00:00Z,4,100")
            || out.contains("200,2025-11-24T16:00:00,4,100"),
        "{out}"
    );
    node.stop();
}

/// A payload field the frame has no column for: by default the frame gains a nullable
/// column (a Delta schema change) and the value lands; a route may reject such messages
/// (to the rejects frame, naming the fields) or ignore the fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_fields_evolve_the_frame_or_are_rejected_or_ignored_as_the_route_says() {
    let s = Setup::new();
    let port = free_port();
    let cfg = s.config(
        "n",
        &format!("listen = \"127.0.0.1:{port}\""),
        "[[ingest.routes]]\ntopic = \"rj/x\"\nframe = \"evo.s.rj\"\nnew_fields = \"reject\"\n\
         [[ingest.routes]]\ntopic = \"ig/x\"\nframe = \"evo.s.ig\"\nnew_fields = \"ignore\"\n",
    );
    let node = Node::start(&cfg, &s.log("n"));
    let first = |_| br#"{"id": 1, "temp": 20.5}"#.to_vec();
    let second = |_| br#"{"id": 2, "temp": 21.5, "note": "door open", "n": 7}"#.to_vec();
    for (topic, frame) in [
        ("apiary/evo/s/ev", "evo.s.ev"),
        ("rj/x", "evo.s.rj"),
        ("ig/x", "evo.s.ig"),
    ] {
        publish("127.0.0.1", port, topic, 0..1, None, first).await;
        s.wait_for_rows(frame, 1, Duration::from_secs(30));
        publish("127.0.0.1", port, topic, 0..1, None, second).await;
    }
    let sql = |q: &str| {
        let (ok, out, err) = s.m.run(&["sql", q, "--format", "csv"]);
        assert!(ok, "{q}: {err}");
        out
    };
    // evolve (the default route): both new fields are columns, the first row has nulls.
    assert_eq!(
        s.wait_for_rows("evo.s.ev", 2, Duration::from_secs(30)),
        (2, 2)
    );
    assert_eq!(
        sql("SELECT id, note, n FROM evo.s.ev ORDER BY id"),
        "id,note,n\n1,,\n2,door open,7\n"
    );
    let types = sql("DESCRIBE evo.s.ev");
    assert!(
        types.contains("note,utf8") && types.contains("n,int64"),
        "{types}"
    );
    // reject: the message is in the rejects frame with the fields named; the frame is as it was.
    let deadline = Instant::now() + Duration::from_secs(30);
    let rejected = loop {
        let (ok, out, _) = s.m.run(&[
            "sql",
            "SELECT error FROM evo.s.rj_rejects",
            "--format",
            "csv",
        ]);
        if ok && out.lines().count() > 1 || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(rejected.contains("no column for n, note"), "{rejected}");
    assert_eq!(sql("SELECT count(*) AS c FROM evo.s.rj"), "c\n1\n");
    assert!(!sql("DESCRIBE evo.s.rj").contains("note"));
    // ignore: the row lands without the fields.
    assert_eq!(
        s.wait_for_rows("evo.s.ig", 2, Duration::from_secs(30)),
        (2, 2)
    );
    assert!(!sql("DESCRIBE evo.s.ig").contains("note"));
    // A type conflict with an evolved column goes to rejects, as any other.
    publish("127.0.0.1", port, "apiary/evo/s/ev", 0..1, None, |_| {
        br#"{"id": 3, "n": "seven"}"#.to_vec()
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, out, _) = s.m.run(&[
            "sql",
            "SELECT count(*) AS c FROM evo.s.ev_rejects",
            "--format",
            "csv",
        ]);
        if ok && out == "c\n1\n" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no reject for the type conflict: {out}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    node.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_auto_create_messages_for_missing_frames_are_unroutable_and_make_nothing() {
    let s = Setup::new();
    let port = free_port();
    let cfg = s.config(
        "n",
        &format!("listen = \"127.0.0.1:{port}\""),
        "auto_create = false\n",
    );
    for q in [
        "CREATE HIVE have",
        "CREATE BOX have.b",
        "CREATE TABLE have.b.f (id BIGINT, temp DOUBLE)",
    ] {
        let (ok, _, err) = s.m.run(&["sql", q]);
        assert!(ok, "{q}: {err}");
    }
    let node = Node::start(&cfg, &s.log("n"));
    // Two missing frames (their buffers commit in either order) and one that exists.
    for round in 0..3u64 {
        for topic in ["apiary/nope/b/one", "apiary/nope/b/two", "apiary/have/b/f"] {
            publish(
                "127.0.0.1",
                port,
                topic,
                round * 10..round * 10 + 10,
                None,
                reading,
            )
            .await;
        }
    }
    assert_eq!(
        s.wait_for_rows("have.b.f", 30, Duration::from_secs(30)),
        (30, 30)
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let unroutable = loop {
        let (ok, out, _) = s.m.run(&[
            "sql",
            "SELECT topic, count(*) AS n, min(error) AS why FROM apiary.ingest.unroutable \
             GROUP BY topic ORDER BY topic",
            "--format",
            "csv",
        ]);
        if ok && out.contains("two,30") && out.contains("one,30") || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(
        unroutable.contains("apiary/nope/b/one,30,")
            && unroutable.contains("apiary/nope/b/two,30,"),
        "every message for a missing frame is in apiary.ingest.unroutable once: {unroutable}"
    );
    assert!(
        unroutable.contains("nope.b.one"),
        "the reason names the frame: {unroutable}"
    );
    let (_, hives, _) = s.m.run(&["sql", "SHOW HIVES", "--format", "csv"]);
    assert!(!hives.contains("nope"), "a hive was made: {hives}");
    node.stop();
}
