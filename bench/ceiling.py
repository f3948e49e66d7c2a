"""Publish rate and raw consume ceiling on one broker, in one run.

    .venv/bin/python bench/ceiling.py [--count 500000] [--tenants 200] [--partitions 12]
                                      [--bootstrap HOST:PORT]

(a) publish: the real publisher validates, Avro-encodes and produces N synthetic events;
(b) ceiling: a bare confluent-kafka consumer decodes every record and encodes it to the JSON
    customers receive. Every later benchmark divides its rate by (b) measured in its own run.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500_000)
    parser.add_argument("--tenants", type=int, default=200)
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--bootstrap", default=None, help="use this cluster instead of a new one")
    args = parser.parse_args()

    print(
        f"machine: {platform.python_implementation()} {platform.python_version()}, "
        f"{_common.cpu_count()} cores"
    )
    with _common.broker(args.bootstrap) as kafka:
        topic = _common.create_topic(kafka, args.partitions)
        produced = _common.publish(kafka, topic, args.count, args.tenants)
        print(f"publish (validate + encode + produce, acks=all): {produced}")
        ceiling = _common.ceiling(kafka, topic, args.count)
        print(f"ceiling (consume + decode + JSON encode):       {ceiling}")
        print(f"peak RSS of the benchmark process: {_common.rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
