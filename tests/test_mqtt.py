"""The embedded MQTT listener, as publishers see it: acknowledged means stored (through
SIGKILLs of the node), no false duplicates, and a front door that is closed by default.
Real clients: paho-mqtt (PyPI) and mosquitto_pub; a real node process on a local meadow."""

import collections
import hashlib
import json
import os
import random
import signal
import socket
import ssl
import subprocess
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from deltalake import DeltaTable
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(what, ok, within=30.0, node=None):
    deadline = time.monotonic() + within
    while not ok():
        if node is not None:
            node.check_alive()
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class Node:
    """An `apiary node` process with its config, restartable on the same state dir."""

    def __init__(self, binary, tmp_path, mqtt_toml, port):
        self.binary = binary
        self.dir = tmp_path
        self.port = port
        self.meadow = tmp_path / "meadow"
        self.state = tmp_path / "state"
        self.config = tmp_path / "apiary.toml"
        self.config.write_text(
            f'[node]\nstate_dir = "{self.state}"\n[meadow]\nuri = "{self.meadow}"\n'
            f"[http]\nenabled = false\n[ingest]\nmax_latency = \"200ms\"\n"
            f"{mqtt_toml}"
        )
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("APIARY_")}
        self.proc = None
        self.log = open(tmp_path / "node.log", "ab")

    def start(self):
        self.proc = subprocess.Popen(
            [self.binary, "--config", str(self.config), "node"],
            stdout=subprocess.DEVNULL, stderr=self.log, env=self.env,
        )
        wait("the MQTT listener", self.accepting, within=60, node=self)

    def accepting(self):
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def check_alive(self):
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"the node exited ({self.proc.returncode}); log: {self.log_text()}")

    def log_text(self):
        return (self.dir / "node.log").read_text(errors="replace")[-4000:]

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc = None

    def stop(self):
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=60)
            self.proc = None

    def cli(self, *args, input=None):
        return subprocess.run([self.binary, "--config", str(self.config), *args], input=input,
                              capture_output=True, env=self.env, timeout=120, check=True).stdout

    def rows(self, frame):
        path = self.meadow.joinpath(*frame.split("."))
        try:
            return DeltaTable(str(path)).to_pyarrow_table().to_pylist()
        except Exception:
            return []


@pytest.fixture
def node_factory(tmp_path, apiary_binary):
    made = []

    def make(mqtt_toml="", port=None, sub="n"):
        port = port or free_port()
        d = tmp_path / sub
        d.mkdir()
        n = Node(apiary_binary, d, mqtt_toml or f'[mqtt]\nlisten = "127.0.0.1:{port}"\n', port)
        made.append(n)
        return n

    yield make
    for n in made:
        n.stop()


class Publisher:
    """A paho client publishing numbered JSON readings, keeping which were acknowledged.
    A persistent session, so that after the node comes back it resends what was unacked."""

    def __init__(self, port, name, qos, v5, topic, identical=False):
        self.name, self.qos, self.topic, self.identical = name, qos, topic, identical
        self.lock = threading.Lock()  # never held while calling paho
        self.pending = {}  # mid -> n
        self.done_mids = collections.deque()  # from paho's thread: appends only
        self.acked = []
        self.sent = 0
        self.stopped = threading.Event()
        protocol = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
        kw = {} if v5 else {"clean_session": False}
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=protocol, **kw)
        self.client.reconnect_delay_set(min_delay=0.05, max_delay=0.3)
        self.client.max_inflight_messages_set(50)
        self.client.on_publish = lambda c, u, mid, rc, props: self.done_mids.append((mid, rc))
        if v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
            self.client.connect_async("127.0.0.1", port, clean_start=False, properties=props)
        else:
            self.client.connect_async("127.0.0.1", port)
        self.client.loop_start()

    def payload(self, n):
        if self.identical:
            return json.dumps({"v": 1})
        return json.dumps({"pub": self.name, "n": n})

    def settle(self):
        """Move what was acknowledged (PUBACK, or PUBCOMP after PUBREC) from pending to acked;
        returns how many are still pending."""
        with self.lock:
            early = []
            while self.done_mids:
                mid, rc = self.done_mids.popleft()
                n = self.pending.pop(mid, None)
                if n is None:
                    early.append((mid, rc))  # acked before publish() returned its mid
                elif not rc.is_failure:
                    self.acked.append(n)
            self.done_mids.extend(early)
            return len(self.pending)

    def run(self, count=None, rate=400):
        """Publish until stopped (or `count` messages), at most `rate` a second, with at most
        200 unacknowledged at once."""
        while not self.stopped.is_set() and (count is None or self.sent < count):
            if self.settle() >= 200:
                time.sleep(0.01)
                continue
            n = self.sent
            info = self.client.publish(self.topic, self.payload(n), qos=self.qos)
            with self.lock:
                self.pending[info.mid] = n
            self.sent += 1
            time.sleep(1.0 / rate)

    def drained(self):
        return self.settle() == 0

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def mosquitto_pub_loop(port, topic, stop, acked):
    """One mosquitto_pub per message (QoS 1): exit 0 means its PUBACK came."""
    n = 0
    while not stop.is_set():
        payload = json.dumps({"pub": "mosquitto_pub", "n": n})
        try:
            done = subprocess.run(
                ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-q", "1",
                 "-i", f"mp-{n}", "-t", topic, "-m", payload],
                capture_output=True, timeout=10,
            )
            if done.returncode == 0:
                acked.append(n)
        except subprocess.TimeoutExpired:
            pass
        n += 1


def test_every_acknowledged_message_is_stored_once_across_20_sigkills(node_factory):
    node = node_factory()
    topic = "apiary/crash/s/readings"
    node.start()
    publishers = [
        Publisher(node.port, "paho-q1", 1, False, topic),
        Publisher(node.port, "paho-q2-v5", 2, True, topic),
    ]
    threads = [threading.Thread(target=p.run, daemon=True) for p in publishers]
    stop_mp = threading.Event()
    mp_acked = []
    threads.append(threading.Thread(target=mosquitto_pub_loop, args=(node.port, topic, stop_mp, mp_acked),
                                    daemon=True))
    for t in threads:
        t.start()
    rng = random.Random(int(os.environ.get("APIARY_TEST_SEED", time.time())))
    try:
        for _ in range(20):
            time.sleep(rng.uniform(0.2, 1.2))
            node.kill()
            node.start()
        time.sleep(1.0)
        for p in publishers:
            p.stopped.set()
        stop_mp.set()
        for t in threads:
            t.join(timeout=60)
        for p in publishers:
            wait(f"{p.name}'s last acks", p.drained, within=60, node=node)
        acked = {(p.name, n) for p in publishers for n in p.acked} | {("mosquitto_pub", n) for n in mp_acked}
        assert all(len(p.acked) > 100 for p in publishers), [len(p.acked) for p in publishers]
        assert len(mp_acked) > 10, len(mp_acked)

        def stored():
            return [(r["pub"], r["n"]) for r in node.rows("crash.s.readings")]

        wait("every acknowledged message in the frame", lambda: acked <= set(stored()), within=60, node=node)
        rows = stored()
        dupes = len(rows) - len(set(rows))
        twice = sorted({r for r in rows if rows.count(r) > 1})
        assert dupes == 0, f"{dupes} messages stored twice: {twice[:20]}"
    finally:
        for p in publishers:
            p.close()


def test_a_thousand_identical_readings_across_a_forced_reconnect_all_land_once(node_factory):
    node = node_factory()
    node.start()
    topic = "apiary/same/s/readings"
    p = Publisher(node.port, "identical", 1, False, topic, identical=True)
    t = threading.Thread(target=p.run, kwargs={"count": 1000, "rate": 1000}, daemon=True)
    t.start()
    try:
        wait("half acked", lambda: p.settle() is not None and len(p.acked) >= 500, within=60, node=node)
        # The connection goes mid-stream; the node comes back on the same state.
        node.kill()
        node.start()
        t.join(timeout=60)
        wait("every ack", lambda: p.drained() and len(p.acked) == 1000, within=60, node=node)
        wait("1000 rows", lambda: len(node.rows("same.s.readings")) >= 1000, within=60, node=node)
        time.sleep(1.0)  # a late duplicate would show up by now
        rows = node.rows("same.s.readings")
        assert len(rows) == 1000
        assert all(r["v"] == 1 for r in rows)
    finally:
        p.close()


def connect(port, user=None, password=None, v5=False, tls_ca=None, host="127.0.0.1"):
    """Connect a paho client; returns (client, CONNACK reason code)."""
    done = threading.Event()
    result = {}
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{random.random()}",
                         protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311)

    def on_connect(c, userdata, flags, reason_code, properties):
        result["rc"] = reason_code
        done.set()

    def on_disconnect(c, userdata, flags, reason_code, properties):
        result.setdefault("rc", reason_code)
        done.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    if user is not None:
        client.username_pw_set(user, password)
    if tls_ca is not None:
        client.tls_set(ca_certs=str(tls_ca))
    client.connect(host, port)
    client.loop_start()
    assert done.wait(15), "no CONNACK"
    return client, result["rc"]


def publish_and_wait(client, topic, payload, qos=1):
    """Publish; returns the PUBACK's reason code, or None when the connection closed instead."""
    got = {}
    done = threading.Event()

    def on_publish(c, userdata, mid, reason_code, properties):
        got["rc"] = reason_code
        done.set()

    def on_disconnect(c, userdata, flags, reason_code, properties):
        done.set()

    client.on_publish = on_publish
    client.on_disconnect = on_disconnect
    client.publish(topic, payload, qos=qos)
    done.wait(10)
    return got.get("rc")


def test_a_listener_beyond_loopback_wants_credentials_and_keeps_to_their_topics(node_factory, tmp_path):
    port, tls_port = free_port(), free_port()
    node = node_factory(port=port, mqtt_toml="# [mqtt] follows\n")
    hashed = node.cli("mqtt", "passwd", "kitchen", input=b"correct horse\n").decode()
    assert "argon2" in hashed and "correct horse" not in hashed
    hashed = hashed.replace('publish = ["#"]', 'publish = ["apiary/home/kitchen/#"]')
    node.config.write_text(
        node.config.read_text()
        + f'[mqtt]\nlisten = "0.0.0.0:{port}"\ntls_listen = "127.0.0.1:{tls_port}"\n\n{hashed}\n'
    )
    node.start()
    frame = "home.kitchen.air"
    try:
        # Anonymous: refused, with paho (3.1.1 and 5) and with mosquitto_pub.
        for v5 in (False, True):
            c, rc = connect(port, v5=v5)
            c.loop_stop()
            assert rc.is_failure and "authori" in str(rc).lower(), rc
        anon = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-q", "1",
                               "-t", "apiary/home/kitchen/air", "-m", '{"t": 1}'],
                              capture_output=True, timeout=30)
        assert anon.returncode != 0
        # A wrong password: refused.
        c, rc = connect(port, "kitchen", "wrong horse")
        c.loop_stop()
        assert rc.is_failure and "password" in str(rc).lower(), rc
        # The right one: its topics are stored, others refused (v5: a negative PUBACK; 3.1.1,
        # which has none: the connection closes, nothing acked).
        c, rc = connect(port, "kitchen", "correct horse", v5=True)
        assert not rc.is_failure
        assert not publish_and_wait(c, "apiary/home/kitchen/air", '{"t": 21.5}').is_failure
        refused = publish_and_wait(c, "apiary/home/garage/air", '{"t": 1}')
        assert refused is not None and refused.is_failure and "authori" in str(refused).lower()
        c.disconnect()
        c.loop_stop()
        c, rc = connect(port, "kitchen", "correct horse", v5=False)
        assert publish_and_wait(c, "apiary/home/garage/air", '{"t": 2}') is None
        c.loop_stop()
        ok = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-q", "1",
                             "-u", "kitchen", "-P", "correct horse",
                             "-t", "apiary/home/kitchen/air", "-m", '{"t": 22.5}'],
                            capture_output=True, timeout=30)
        assert ok.returncode == 0, ok.stderr
        # mqtts with the certificate the node made: verified against it, fingerprint as written.
        cert = node.state / "mqtt-tls" / "cert.pem"
        fingerprint = (node.state / "mqtt-tls" / "cert.sha256").read_text().strip()
        der = ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate(("127.0.0.1", tls_port)))
        assert hashlib.sha256(der).hexdigest().upper() == fingerprint.replace(":", "")
        c, rc = connect(tls_port, "kitchen", "correct horse", tls_ca=cert, host="localhost")
        assert not rc.is_failure
        assert not publish_and_wait(c, "apiary/home/kitchen/air", '{"t": 23.5}').is_failure
        c.disconnect()
        c.loop_stop()
        wait("the stored readings", lambda: len(node.rows(frame)) >= 3, node=node)
        assert sorted(r["t"] for r in node.rows(frame)) == [21.5, 22.5, 23.5]
        assert node.rows("home.garage.air") == []
    finally:
        node.stop()


def test_without_users_the_device_credential_is_made_and_works(node_factory):
    port = free_port()
    node = node_factory(port=port, mqtt_toml=f'[mqtt]\nlisten = "0.0.0.0:{port}"\n')
    out = node.cli("mqtt", "credentials").decode()
    fields = dict(line.split(" = ", 1) for line in out.strip().splitlines())
    user, password = json.loads(fields["user"]), json.loads(fields["password"])
    assert user == "device" and len(password) >= 16
    node.start()
    c, rc = connect(port)
    c.loop_stop()
    assert rc.is_failure
    c, rc = connect(port, user, password)
    assert not rc.is_failure
    assert not publish_and_wait(c, "apiary/dev/s/air", '{"t": 1}').is_failure
    c.disconnect()
    c.loop_stop()
    wait("the row", lambda: len(node.rows("dev.s.air")) == 1, node=node)
