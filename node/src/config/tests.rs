//! The config's own tests: parsing, layering, validation and its documentation.

use super::units::Period;
use super::*;

/// Dotted keys of a serialised config section (a map or list of tables is one key).
fn keys(prefix: &str, v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) if !m.is_empty() && prefix != "meadow.options" => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                keys(&key, v, out);
            }
        }
        _ => out.push(prefix.to_string()),
    }
}

#[test]
fn every_key_is_documented() {
    let doc = include_str!("../../../docs/configuration.md");
    let row = |key: &str| {
        doc.lines()
            .find(|l| l.starts_with(&format!("| `{key}` |")))
            .unwrap_or_else(|| panic!("docs/configuration.md does not document {key}"))
    };
    let mut all = Vec::new();
    keys(
        "",
        &serde_json::to_value(Config::default()).unwrap(),
        &mut all,
    );
    let declared: Vec<String> = Config::keys().map(|k| k.path()).collect();
    for key in &all {
        assert!(
            declared.contains(key) || key == "device.wifi",
            "{key} is not declared"
        );
    }
    assert_eq!(declared.len(), all.len(), "{declared:?} vs {all:?}");
    for key in Config::keys() {
        let row = row(&key.path());
        if let Some(var) = key.env {
            assert!(
                row.contains(var),
                "docs: {} does not name {var}",
                key.path()
            );
        }
        assert!(!key.doc.is_empty(), "{} has no doc", key.path());
    }
    let route: RouteConfig = toml::from_str("topic = \"t\"\nframe = \"h.b.f\"").unwrap();
    let mut sub = Vec::new();
    keys(
        "ingest.routes",
        &serde_json::to_value(route).unwrap(),
        &mut sub,
    );
    let wifi = WifiConfig {
        ssid: "s".into(),
        psk: "p".into(),
        country: None,
    };
    keys(
        "device.wifi",
        &serde_json::to_value(wifi).unwrap(),
        &mut sub,
    );
    for key in sub {
        row(&key);
    }
}

#[test]
fn device_settings_are_checked() {
    let ok = |t: &str| Config::from_toml(t).and_then(|c| c.validate().map(|_| c));
    let c = ok(r#"
        [device]
        hostname = "hive-7"
        ssh_authorized_keys = ["ssh-ed25519 AAAAC3Nza me@laptop"]
        wifi = { ssid = "Bee Net", psk = "pollen-2026", country = "GB" }
        "#)
    .unwrap();
    assert_eq!(c.device.hostname.as_deref(), Some("hive-7"));
    assert!(ok("[device.wifi]\nssid = \"x\"\npsk = \"").is_err());
    let hex = "ab".repeat(32);
    ok(&format!("[device.wifi]\nssid = \"x\"\npsk = \"{hex}\"")).unwrap();
    let bad = |t: &str| ok(t).unwrap_err().to_string();
    assert!(bad("[device]\nhostname = \"-pi\"").contains("device.hostname"));
    assert!(bad("[device]\nhostname = \"pi_4\"").contains("device.hostname"));
    assert!(bad("[device]\nssh_authorized_keys = [\"hello\"]").contains("public key"));
    assert!(bad("[device.wifi]\nssid = \"x\"\npsk = \"short\"").contains("8 to 63"));
    assert!(bad("[device.wifi]\nssid = \"\"\npsk = \"12345678\"").contains("ssid"));
    let country = "[device.wifi]\nssid = \"x\"\npsk = \"12345678\"\ncountry = \"uk\"";
    assert!(bad(country).contains("two capital letters"));
    assert!(bad("[device]\nwifi_ssid = \"x\"").contains("unknown field"));
}

#[test]
fn the_cache_dir_comes_from_the_environment_too() {
    let mut c = Config::from_toml("[cache]\ndir = \"/srv/cache\"").unwrap();
    assert_eq!(c.cache.dir.as_deref(), Some(Path::new("/srv/cache")));
    c.apply_env(|k| (k == "APIARY_CACHE_DIR").then(|| "/var/cache/apiary".into()))
        .unwrap();
    assert_eq!(c.cache.dir.as_deref(), Some(Path::new("/var/cache/apiary")));
}

#[test]
fn lookup_reads_dotted_keys_for_scripts() {
    let text = r#"
        [device]
        hostname = "hive-7"
        ssh_authorized_keys = ["ssh-ed25519 A a@b", "ssh-rsa B c@d"]
        [device.wifi]
        ssid = "Bee \"Net\""
        [bees]
        count = 2
        "#;
    let get = |k: &str| Config::lookup(text, k).unwrap();
    assert_eq!(get("device.hostname").as_deref(), Some("hive-7"));
    assert_eq!(get("device.wifi.ssid").as_deref(), Some("Bee \"Net\""));
    assert_eq!(
        get("device.ssh_authorized_keys").as_deref(),
        Some("ssh-ed25519 A a@b\nssh-rsa B c@d")
    );
    assert_eq!(get("bees.count").as_deref(), Some("2"));
    assert_eq!(get("device.wifi.psk"), None);
    assert_eq!(get("nothing.here"), None);
    assert!(Config::lookup("[device", "device.hostname").is_err());
}

#[test]
fn sizes_parse() {
    assert_eq!("64MiB".parse::<ByteSize>().unwrap(), ByteSize(64 << 20));
    assert_eq!("1 GiB".parse::<ByteSize>().unwrap(), ByteSize(1 << 30));
    assert_eq!("4096".parse::<ByteSize>().unwrap(), ByteSize(4096));
    assert_eq!("1.5kib".parse::<ByteSize>().unwrap(), ByteSize(1536));
    for bad in ["", "MiB", "12 parsecs", "-3MiB"] {
        assert!(bad.parse::<ByteSize>().is_err(), "{bad} should not parse");
    }
}

#[test]
fn durations_parse() {
    let d = |s: &str| s.parse::<Period>().map(|d| d.0);
    assert_eq!(d("300s").unwrap(), std::time::Duration::from_secs(300));
    assert_eq!(d("5m").unwrap(), std::time::Duration::from_secs(300));
    assert_eq!(d("250ms").unwrap(), std::time::Duration::from_millis(250));
    assert_eq!(d("2").unwrap(), std::time::Duration::from_secs(2));
    for bad in ["", "0s", "soon", "-1s", "5 fortnights"] {
        assert!(d(bad).is_err(), "{bad}");
    }
    let c = Config::from_toml("[bees]\ntask_timeout = \"2s\"\n[colony]\ncritical = 0.5").unwrap();
    assert_eq!(c.bees.task_timeout.0, std::time::Duration::from_secs(2));
    assert_eq!(c.colony.critical, 0.5);
    assert_eq!(Config::default().udf.timeout.to_string(), "5s");
    let mut c = Config::from_toml("[udf]\ntimeout = \"750ms\"").unwrap();
    assert_eq!(c.udf.timeout.to_string(), "750ms");
    c.apply_env(|k| (k == "APIARY_UDF_TIMEOUT").then(|| "2s".into()))
        .unwrap();
    assert_eq!(c.udf.timeout.0, std::time::Duration::from_secs(2));
}

#[test]
fn toml_and_env_layer() {
    let mut c = Config::from_toml(
        r#"
        [meadow]
        uri = "s3://b/p"
        options = { endpoint = "http://127.0.0.1:9000" }
        [bees]
        count = 2
        memory_per_bee = "64MiB"
        "#,
    )
    .unwrap();
    assert_eq!(c.bees.memory_per_bee, Some(ByteSize(64 << 20)));
    c.apply_env(|k| (k == "APIARY_BEES").then(|| "3".to_string()))
        .unwrap();
    assert_eq!(c.bees.count, Some(3));
    assert_eq!(c.meadow_uri(), "s3://b/p");
}

#[test]
fn bad_config_is_a_clear_error() {
    let e = Config::from_toml("[meadow]\nurl = \"x\"").unwrap_err();
    assert!(e.message.contains("unknown field `url`"), "{e}");
    let e = Config::from_toml("[bees]\nmemory_per_bee = \"lots\"").unwrap_err();
    assert!(e.message.contains("bad size"), "{e}");
    let mut c = Config::default();
    let e = c
        .apply_env(|k| (k == "APIARY_BEES").then(|| "zero".into()))
        .unwrap_err();
    assert!(e.message.contains("APIARY_BEES"), "{e}");
    let e = c
        .apply_env(|k| (k == "APIARY_UDF_TIMEOUT").then(|| "forever".into()))
        .unwrap_err();
    assert!(e.message.contains("APIARY_UDF_TIMEOUT"), "{e}");
    let e = Config::from_toml("[udf]\nmemory = \"1GiB\"").unwrap_err();
    assert!(e.message.contains("unknown field `memory`"), "{e}");
}

/// Why a config that parses is refused.
fn refusal(toml: &str) -> String {
    Config::from_toml(toml)
        .unwrap()
        .validate()
        .unwrap_err()
        .message
}

#[test]
fn bad_http_settings_are_refused() {
    let bad = refusal;
    assert!(bad("[http]\nlisten = \"localhost\"").contains("http.listen"));
    assert!(bad("[http]\ntoken = \"short\"").contains("at least 16"));
    assert!(bad("[http]\ntoken = \"has spaces in the token!\"").contains("without spaces"));
    assert!(bad("[http]\ntls_cert = \"c.pem\"").contains("go together"));
    let mut c = Config::default();
    let e = c
        .apply_env(|k| (k == "APIARY_HTTP_LISTEN").then(|| "nowhere".into()))
        .unwrap_err();
    assert!(e.message.contains("http.listen"), "{e}");
    let ok = Config::from_toml("[http]\nlisten = \"0.0.0.0:0\"\ntoken = \"0123456789abcdef\"");
    ok.unwrap().validate().unwrap();
}

#[test]
fn bad_swarm_settings_are_refused() {
    let bad = refusal;
    assert!(bad("[swarm]\nheartbeat_interval = \"10ms\"").contains("at least 100ms"));
    assert!(bad("[swarm]\nsuspect_after = 5\ndead_after = 5").contains("suspect_after <"));
    assert!(bad("[swarm]\nsuspect_after = 0").contains("suspect_after"));
    assert!(bad("[swarm]\ntask_trials = 0").contains("at least one"));
    assert!(bad("[swarm]\nforage_min = \"20s\"").contains("forage_max"));
    let e = Config::from_toml("[swarm]\nheartbeat = \"2s\"").unwrap_err();
    assert!(e.message.contains("unknown field `heartbeat`"), "{e}");
    let e = Config::from_toml("[cache]\nmax_bytes = \"huge\"").unwrap_err();
    assert!(e.message.contains("bad size"), "{e}");
    let ok = Config::from_toml(
        "[swarm]\nheartbeat_interval = \"5s\"\ndistribute_min_bytes = \"1GiB\"\n\
         [cache]\nmax_bytes = \"0\"",
    );
    ok.unwrap().validate().unwrap();
}

#[test]
fn update_settings_are_checked() {
    let key = "MCowBQYDK2VwAyEAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"; // not 32 bytes
    let good = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";
    let c = Config::from_toml(&format!(
        "[update]\nchannel = \"stable\"\ntrusted_keys = [\"{good}\"]\ncheck_interval = \"10m\""
    ))
    .unwrap();
    c.validate().unwrap();
    assert_eq!(c.update.ready_timeout.0.as_secs(), 300, "the default");
    Config::default().validate().unwrap();
    assert!(Config::default().update.channel.is_none(), "off by default");
    let bad = refusal;
    assert!(bad("[update]\nchannel = \"stable\"").contains("trusted_keys is empty"));
    assert!(
        bad(&format!(
            "[update]\nchannel = \"stable\"\ntrusted_keys = [\"{key}\"]"
        ))
        .contains("is not a public key")
    );
    assert!(
        bad(&format!(
            "[update]\nchannel = \"a/b\"\ntrusted_keys = [\"{good}\"]"
        ))
        .contains("update.channel")
    );
}
