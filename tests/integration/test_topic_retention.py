"""Each topic's retention, read back from the broker (issue 25;
docs/reliability.md "What Kafka holds and for how long").

`mailstream-ctl topics create NAME:PARTITIONS[:REPLICATION][@RETENTION]`
sets retention.ms and segment.ms (a quarter of it, MS_KAFKA_SEGMENTS_PER_
RETENTION) per topic, also on a topic that exists, and the local cluster creates its topics with the
retention topic_retention_s() derives from the outage it survives. The
broker's own answer (TopicCommand --describe, which lists a topic's
non-default configs) is what is checked, not the command line.
"""

from __future__ import annotations

import os
import subprocess
import uuid

import mslocal

CTL = os.path.join(os.environ.get("MAILSTREAM_BUILD_DIR", "build"), "mailstream-ctl")


def test_ctl_sets_retention_per_topic(kafka_broker):
    tag = uuid.uuid4().hex[:8]
    a, b, c = f"keep3d.{tag}", f"keep90m.{tag}", f"plain.{tag}"
    r = subprocess.run([CTL, "-b", kafka_broker.bootstrap, "topics", "create", f"{a}:2@3d",
                        f"{b}:1:1@90m", f"{c}:1", "-c", "retention.ms=1000",
                        "-c", "compression.type=lz4"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    got = kafka_broker.describe_topics([a, b, c])
    assert got[a].partitions == 2
    # A topic's own retention wins over a -c retention.ms for all of them.
    assert got[a].configs["retention.ms"] == str(3 * 86400 * 1000)
    assert got[a].configs["segment.ms"] == str(3 * 86400 * 1000 // 4)
    assert got[b].configs["retention.ms"] == str(90 * 60 * 1000)
    assert got[b].configs["segment.ms"] == str(90 * 60 * 1000 // 4)
    assert got[c].configs["retention.ms"] == "1000" and "segment.ms" not in got[c].configs
    for t in (a, b, c):
        assert got[t].configs["max.message.bytes"] == str(mslocal.MAX_RECORD_BYTES)
        assert got[t].configs["compression.type"] == "lz4"

    # Again on the existing topics: a's retention follows the new value and
    # keeps its other configs and partitions; c, given none, is left alone.
    r = subprocess.run([CTL, "-b", kafka_broker.bootstrap, "topics", "create", f"{a}:5@1h",
                        f"{c}:1"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    again = kafka_broker.describe_topics([a, c])
    assert again[a].partitions == 2
    assert again[a].configs["retention.ms"] == str(3600 * 1000)
    assert again[a].configs["segment.ms"] == str(3600 * 1000 // 4)
    assert again[a].configs["compression.type"] == "lz4"
    assert again[a].configs["max.message.bytes"] == str(mslocal.MAX_RECORD_BYTES)
    assert again[c].configs == got[c].configs

    for bad in (f"x.{tag}:1@", f"x.{tag}:1@0", f"x.{tag}:1@3 days", f"x.{tag}:1@-1h"):
        r = subprocess.run([CTL, "-b", kafka_broker.bootstrap, "topics", "create", bad],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, (bad, r.stderr)


def test_local_cluster_topics_keep_what_they_must(kafka_broker):
    """The retention cluster/local gives its topics (Stack._start_kafka),
    for an outage of 2 h: the queue 2 h, each retry tier the 4 h of
    retry_max_ms plus 2 h, events the 5 d of max_age_s plus a day."""
    tag = uuid.uuid4().hex[:8]
    queue, events = f"queue.{tag}", f"events.{tag}"
    keep = mslocal.topic_retention_s(2 * 3600, queue=queue, events=events, tiers=2)
    topics = {queue: 2, events: 1, f"{queue}.retry.1": 1, f"{queue}.retry.2": 1}
    assert set(keep) == set(topics)
    kafka_broker.create_topics(topics, retention=keep)
    got = kafka_broker.describe_topics(list(topics))
    hour = 3600 * 1000
    assert got[queue].configs["retention.ms"] == str(2 * hour)
    assert got[f"{queue}.retry.1"].configs["retention.ms"] == str(6 * hour)
    assert got[f"{queue}.retry.2"].configs["retention.ms"] == str(6 * hour)
    assert got[events].configs["retention.ms"] == str(144 * hour)
    assert got[queue].configs["segment.ms"] == str(hour // 2)
