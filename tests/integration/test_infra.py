"""Tests of the test infrastructure itself: Kafka, Redis and the mail sink
as started by cluster/mslocal.py, without any Mailstream binary."""

import configparser
import shutil
import smtplib
import subprocess
import uuid

import pytest

import mslocal
from mslocal import read_sink


def test_kafka_topics_exist_with_configured_sizes(kafka_broker):
    topics = kafka_broker.describe_topics(["queue", "events"])
    assert topics["queue"].partitions == 12
    assert topics["events"].partitions == 3
    for t in topics.values():
        assert t.replication_factor == 1
        assert t.configs.get("max.message.bytes") == str(mslocal.MAX_RECORD_BYTES)
    props = kafka_broker.props.read_text()
    assert "auto.create.topics.enable=false" in props
    assert f"message.max.bytes={mslocal.MAX_RECORD_BYTES}" in props


def test_librdkafka_idempotent_produce_and_group_consume(kafka_broker):
    """Debian's librdkafka (through kcat) against this broker version: an
    idempotent acks=all producer, a large record and a consumer group. The
    C code relies on exactly these."""
    kcat = shutil.which("kcat") or shutil.which("kafkacat")
    if not kcat:
        pytest.fail("kcat/kafkacat not installed: run `make deps`")
    topic = f"infra.{uuid.uuid4().hex[:8]}"
    kafka_broker.create_topics({topic: 2})
    big = b"B" * (25 * 1024 * 1024)
    b = kafka_broker.bootstrap
    for key, value in ((b"k1", b"hello"), (b"k2", big)):
        r = subprocess.run([kcat, "-b", b, "-P", "-t", topic, "-k", key.decode(),
                            "-X", "enable.idempotence=true", "-X", "acks=all",
                            "-X", f"message.max.bytes={mslocal.MAX_RECORD_BYTES}"],
                           input=value, capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr.decode()
    r = subprocess.run([kcat, "-b", b, "-G", f"g.{topic}", "-e", "-q",
                        "-X", "auto.offset.reset=earliest",
                        "-X", f"fetch.max.bytes={mslocal.MAX_RECORD_BYTES}",
                        "-X", f"max.partition.fetch.bytes={mslocal.MAX_RECORD_BYTES}",
                        "-X", f"receive.message.max.bytes={mslocal.MAX_RECORD_BYTES + 1024 * 1024}",
                        "-f", "%k %S\n", topic],
                       capture_output=True, timeout=90)
    assert r.returncode == 0, r.stderr.decode()
    got = sorted(r.stdout.decode().split("\n"))
    assert "k1 5" in got and f"k2 {len(big)}" in got, r.stdout[:500]


def test_redis_answers_ping(redis_server):
    assert mslocal.redis_command(redis_server.port, "PING") == b"+PONG\r\n"
    assert mslocal.redis_command(redis_server.port, "SET", "infra", "1").startswith(b"+OK")


def _message(body: bytes) -> bytes:
    return (b"From: Sender <sender@example.org>\r\n"
            b"To: user@mailstream.test\r\n"
            b"Subject: =?utf-8?q?t=C3=A9st?=\r\n"
            b"Message-ID: <infra@example.org>\r\n"
            b"\r\n" + body)


def test_sink_returns_message_byte_identical(sink):
    body = (b"8-bit: caf\xc3\xa9 \xff\xfe\r\n"
            b".a line starting with a dot\r\n"
            b"..two dots\r\n"
            b".\r\n"
            b"\r\n"
            b"trailing space   \r\n"
            + b"L" * 5000 + b"\r\n"
            b"last line\r\n")
    msg = _message(body)
    with smtplib.SMTP(mslocal.HOST, sink.port, timeout=10) as s:
        s.ehlo("client.example")
        s.sendmail("sender@example.org", ["user@mailstream.test", "other@mailstream.test"], msg,
                   mail_options=["BODY=8BITMIME"], rcpt_options=["NOTIFY=NEVER"])
    (env, data), = sink.wait_for(1, timeout=10)
    assert data == msg
    assert env["mail_from"] == "sender@example.org"
    assert env["mail_args"] == "<sender@example.org> BODY=8BITMIME"
    assert env["rcpts"] == ["user@mailstream.test", "other@mailstream.test"]
    assert env["rcpt_args"][0] == "<user@mailstream.test> NOTIFY=NEVER"
    assert env["helo"] == "client.example"
    assert env["client_addr"] == "127.0.0.1"
    assert read_sink(sink.dir) == [(env, data)]


def test_sink_large_message_and_aborted_transaction(sink):
    line = b"0123456789" * 99 + b"\r\n"          # 992 bytes per line
    msg = _message(line * (25 * 1024 * 1024 // len(line)))
    with smtplib.SMTP(mslocal.HOST, sink.port, timeout=60) as s:
        s.mail("a@example.org")
        s.rcpt("b@mailstream.test")
        s.rset()                               # aborted: leaves no dump
        s.sendmail("<>", ["big@mailstream.test"], msg)
    msgs = sink.wait_for(1, timeout=30)
    assert len(msgs) == 1
    env, data = msgs[0]
    assert env["mail_from"] == ""
    assert env["rcpts"] == ["big@mailstream.test"]
    assert len(data) == len(msg) and data == msg


def test_parse_sink_file_golden():
    raw = (b"X-Client-Addr: 127.0.0.1\nX-Client-Proto: ESMTP\nX-Helo-Args: h\n"
           b"X-Mail-Args: <a@b> SIZE=10\nX-Rcpt-Args: <c@d>\n"
           b"Received: from h ([127.0.0.1])\n\tby x (smtp-sink) with ESMTP id 1;\n"
           b"\tTue, 24 Nov 2026 05:08:01 +0000 (UTC)\n"
           b"Subject: x\n\nbody\n\n")
    env, data = mslocal.parse_sink_file(raw)
    assert data == b"Subject: x\r\n\r\nbody\r\n"
    assert env["mail_from"] == "a@b" and env["rcpts"] == ["c@d"]
    with pytest.raises(ValueError):
        mslocal.parse_sink_file(b"X-Client-Addr: 1\n")


def test_generated_configs_follow_docs(tmp_path):
    sup = mslocal.Supervisor(tmp_path)
    spec = mslocal.ClusterSpec(kafka_brokers="127.0.0.1:1", redis_port=2, relay_host="127.0.0.1:3",
                               frontends=2, workers=1, topic="q", events_topic="e", group="g")
    cl = mslocal.Cluster(sup, spec)
    cl.write_configs()
    fe = configparser.ConfigParser()
    fe.read(cl.frontends[1].config)
    assert fe["node"]["metrics"] == "127.0.0.1:9102"
    assert fe["smtp"]["accepted_domains"] == "mailstream.test"
    assert fe["smtp"]["trusted_networks"] == ""
    assert fe["listener.mx"]["listen"] == "127.0.0.1:2525"
    assert fe["listener.submissions"]["role"] == "submissions"
    assert fe["kafka"]["brokers"] == "127.0.0.1:1" and fe["kafka"]["topic"] == "q"
    assert fe["redis"]["port"] == "2"
    wk = configparser.ConfigParser()
    wk.read(cl.workers[0].config)
    assert wk["node"]["metrics"] == "127.0.0.1:9201"
    assert dict(wk["kafka"]) == {"brokers": "127.0.0.1:1", "topic": "q", "events_topic": "e",
                                 "group": "g"}
    assert wk["delivery"]["relay_host"] == "127.0.0.1:3"
    user, hash_, senders = cl.passwd.read_text().strip().split(":")
    assert (user, senders) == (mslocal.DEMO_USER, "mailstream.test") and hash_.startswith("$6$")
    assert b"BEGIN CERTIFICATE" in cl.tls_cert.read_bytes()


def test_kafka_restart_keeps_topics(kafka_control):
    kafka_control.stop()
    assert not kafka_control.running
    assert not mslocal.port_open(mslocal.HOST, kafka_control.port)
    kafka_control.start()
    topics = kafka_control.describe_topics(["queue"])
    assert topics["queue"].partitions == 12


def test_sanitizer_reports_found_in_logs(tmp_path):
    """The check every test ends with (conftest._no_sanitizer_errors): an
    AddressSanitizer error, a UBSan runtime error and a LeakSanitizer report
    at exit are found, its summary line and ordinary lines are not."""
    from conftest import sanitizer_reports

    log = tmp_path / "worker-1.log"
    log.write_bytes(
        b"ts=2026-12-07T13:52:04.515Z level=info node=wk1 event=stopped\n"
        b"==11281==ERROR: LeakSanitizer: detected memory leaks\n"
        b"SUMMARY: AddressSanitizer: 312 byte(s) leaked in 3 allocation(s).\n"
        b"==9==ERROR: AddressSanitizer: heap-use-after-free on address 0x6020\n"
        b"worker/delivery.c:12:5: runtime error: signed integer overflow\n")
    clean = tmp_path / "frontend-1.log"
    clean.write_bytes(b"ts=x level=warn node=fe1 event=smtp_error reason=\"runtime\"\n")
    found = sanitizer_reports([str(clean), str(log)])
    assert [f.split(": ", 1)[1] for f in found] == [
        "==11281==ERROR: LeakSanitizer: detected memory leaks",
        "==9==ERROR: AddressSanitizer: heap-use-after-free on address 0x6020",
        "worker/delivery.c:12:5: runtime error: signed integer overflow"]
    assert all(f.startswith(str(log)) for f in found)
