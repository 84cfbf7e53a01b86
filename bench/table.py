"""Prints the compare results as Markdown: each figure's median over the runs
for sseplane and Nchan with the ratio of the medians and the per-run ratios,
then issue #6's targets checked on those medians."""

import json
import statistics
import sys

FIGURES = [
    ("latency_ms.p50", "p50 publish→deliver (ms)"),
    ("latency_ms.p99", "p99 publish→deliver (ms)"),
    ("latency_ms.p99.9", "p99.9 publish→deliver (ms)"),
    ("lost", "lost events"),
    ("duplicates", "duplicated events"),
    ("deliveries_per_s", "deliveries/s"),
    ("deliveries_per_cpu_s", "deliveries per server CPU-second"),
    ("publishes_per_s", "publishes/s"),
    ("redis_commands_per_publish", "Redis commands per publish"),
    ("established", "streams established"),
    ("rss_kib_per_stream", "server RSS per idle stream (KiB)"),
]

# (workload, figure, comparison, bound, what it says)
TARGETS = [
    ("latency-100x1000", "latency_ms.p99", "≤", 0.5, "p99 publish→deliver across replicas ≤ 0.5× Nchan"),
    ("fanout-2000x1", "deliveries_per_cpu_s", "≥", 1.5, "deliveries per server CPU-second ≥ 1.5× Nchan, 1 channel"),
    ("fanout-2000x100", "deliveries_per_cpu_s", "≥", 1.5, "deliveries per server CPU-second ≥ 1.5× Nchan, 100 channels"),
    ("publish-64x100", "publishes_per_s", "≥", 2.0, "publishes per second through one replica ≥ 2× Nchan"),
    ("idle-", "rss_kib_per_stream", "≤", 0.5, "RSS per idle stream ≤ 0.5× Nchan"),
]


def get(record, path):
    value = record
    for part in path.split(".", 1) if path.startswith("latency_ms") else [path]:
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def median(records, key):
    values = [v for v in (get(r, key) for r in records) if isinstance(v, (int, float))]
    return statistics.median(values) if values else None


def per_run_ratios(ours, theirs, key):
    """Ratios of the runs both systems finished, in run order."""
    by_run = {r.get("run", 1): get(r, key) for r in theirs}
    ratios = []
    for r in ours:
        a, b = get(r, key), by_run.get(r.get("run", 1))
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b:
            ratios.append(a / b)
    return ratios


def fmt(value):
    if value is None:
        return "—"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def main(path):
    rows = [json.loads(line) for line in open(path) if line.strip()]
    by = {}
    for r in rows:
        by.setdefault(r["workload"], {}).setdefault(r["label"], []).append(r)
    runs = max((r.get("run", 1) for r in rows), default=1)
    print(f"Medians of {runs} run(s); the last column has each run's ratio.\n")
    print("| workload | figure | sseplane | Nchan | sseplane/Nchan | per run |")
    print("|---|---|---|---|---|---|")
    medians = {}
    for workload, systems in by.items():
        ours, theirs = systems.get("sseplane", []), systems.get("nchan", [])
        for key, label in FIGURES:
            a, b = median(ours, key), median(theirs, key)
            if a is None and b is None:
                continue
            ratio = a / b if a is not None and b else None
            medians[(workload, key)] = ratio
            runs_text = " ".join(f"{x:.2f}" for x in per_run_ratios(ours, theirs, key))
            ratio_text = f"{ratio:.2f}" if ratio is not None else "—"
            print(f"| {workload} | {label} | {fmt(a)} | {fmt(b)} | {ratio_text} | {runs_text or '—'} |")

    print("\n| target | median ratio | met |")
    print("|---|---|---|")
    for workload, key, comparison, bound, text in TARGETS:
        found = [r for (w, k), r in medians.items() if w.startswith(workload) and k == key]
        ratio = found[0] if found else None
        if ratio is None:
            print(f"| {text} | — | not run |")
            continue
        met = ratio <= bound if comparison == "≤" else ratio >= bound
        print(f"| {text} | {ratio:.2f} | {'yes' if met else 'no'} |")
    # Redis commands per published event at 100 and at 2000 subscribers.
    few = median(by.get("latency-100x1000", {}).get("sseplane", []), "redis_commands_per_publish")
    many = median(by.get("fanout-2000x1", {}).get("sseplane", []), "redis_commands_per_publish")
    if few and many:
        met = abs(many - few) / few < 0.05
        print(
            f"| Redis commands per published event independent of subscribers "
            f"| {few:.2f} at 100, {many:.2f} at 2000 | {'yes' if met else 'no'} |"
        )


if __name__ == "__main__":
    main(sys.argv[1])
