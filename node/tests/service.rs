//! `apiary node` as a systemd `Type=notify` service: READY=1 once it serves, watchdog pings
//! at half the period systemd asks for, STOPPING=1 on SIGTERM, all on a real notify socket.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn the_node_tells_the_service_manager_it_is_ready_alive_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let config = dir.path().join("apiary.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\nstate_dir = {:?}\n[http]\nlisten = \"127.0.0.1:0\"\n[ingest]\nenabled = false\n",
            dir.path().join("state")
        ),
    )
    .unwrap();
    let mut node = Command::new(env!("CARGO_BIN_EXE_apiary"))
        .arg("--config")
        .arg(&config)
        .arg("node")
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "300000")
        .env_remove("APIARY_STORAGE")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut seen: Vec<String> = Vec::new();
    let read_until = |want: &str, count: usize, seen: &mut Vec<String>| {
        let end = Instant::now() + Duration::from_secs(60);
        let mut buf = [0u8; 512];
        while seen.iter().filter(|m| m.contains(want)).count() < count {
            assert!(Instant::now() < end, "no {want} in time; got {seen:?}");
            if let Ok(n) = socket.recv(&mut buf) {
                seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    };
    read_until("READY=1", 1, &mut seen);
    assert!(seen[0].contains("STATUS=serving"), "{seen:?}");
    // Pings every 150 ms: three of them within a second or so of being ready.
    let t = Instant::now();
    read_until("WATCHDOG=1", 3, &mut seen);
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    unsafe { libc::kill(node.id() as i32, libc::SIGTERM) };
    read_until("STOPPING=1", 1, &mut seen);
    assert!(node.wait().unwrap().success());
    let ready = seen.iter().position(|m| m.contains("READY=1")).unwrap();
    let first_ping = seen.iter().position(|m| m.contains("WATCHDOG=1")).unwrap();
    assert!(
        ready < first_ping,
        "ready before the watchdog runs: {seen:?}"
    );
}
