"""Parses a /metrics scrape on stdin with Prometheus's official Python client and prints
its samples as JSON lines: {"name", "labels", "value", "family", "type"}.

usage: parse_metrics.py text|openmetrics < scrape
A scrape the parser rejects exits non-zero with the parser's message.
"""

import json
import sys

from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families as text_families


def main() -> None:
    fmt = sys.argv[1]
    scrape = sys.stdin.read()
    parse = openmetrics_families if fmt == "openmetrics" else text_families
    for family in parse(scrape):
        for s in family.samples:
            print(
                json.dumps(
                    {
                        "family": family.name,
                        "type": family.type,
                        "name": s.name,
                        "labels": s.labels,
                        "value": s.value,
                    }
                )
            )


if __name__ == "__main__":
    main()
