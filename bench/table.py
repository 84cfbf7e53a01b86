"""Prints the compare results as a Markdown table with the ratio sseplane/Nchan."""

import json
import sys

FIGURES = [
    ("latency_ms.p50", "p50 publish→deliver (ms)", "lower"),
    ("latency_ms.p99", "p99 publish→deliver (ms)", "lower"),
    ("latency_ms.p99.9", "p99.9 publish→deliver (ms)", "lower"),
    ("lost", "lost events", "lower"),
    ("duplicates", "duplicated events", "lower"),
    ("deliveries_per_s", "deliveries/s", "higher"),
    ("deliveries_per_cpu_s", "deliveries per server CPU-second", "higher"),
    ("publishes_per_s", "publishes/s", "higher"),
    ("redis_commands_per_publish", "Redis commands per publish", "lower"),
    ("established", "streams established", "higher"),
    ("rss_kib_per_stream", "server RSS per idle stream (KiB)", "lower"),
]


def get(record, path):
    value = record
    for part in path.split(".", 1) if path.startswith("latency_ms") else [path]:
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def main(path):
    rows = [json.loads(line) for line in open(path) if line.strip()]
    by = {}
    for r in rows:
        by.setdefault(r["workload"], {})[r["label"]] = r
    print("| workload | figure | sseplane | Nchan | sseplane/Nchan |")
    print("|---|---|---|---|---|")
    for workload, systems in by.items():
        s, n = systems.get("sseplane", {}), systems.get("nchan", {})
        for key, label, _better in FIGURES:
            a, b = get(s, key), get(n, key)
            if a is None and b is None:
                continue
            ratio = f"{a / b:.2f}" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else "—"
            print(f"| {workload} | {label} | {a} | {b} | {ratio} |")


if __name__ == "__main__":
    main(sys.argv[1])
