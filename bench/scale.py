"""
The scale run of the stsd benchmark: 10 and 100,000 PolicyBindings.

    python -m bench.scale [--sizes 10,100000] [--output scale.json]

For each size, a fresh subprocess (pinned to the daemon core) is handed the
PolicyBinding list exactly as the API server returns it (the JSON body of
C{GET /apis/sts.min.io/v1beta1/policybindings}, built here beforehand and
read from a file: "the list body received") and does what the daemon does
with it: C{json.loads} (L{stsd.kube.KubernetesClient.list}),
L{stsd.bindings.parse_binding} of every item and L{BindingIndex.replace}
(L{stsd.watch}). It reports:

  - time to ready after the list: from the body in memory to the index
    swapped in, split into JSON parsing, binding parsing and the index;
  - memory: the process's resident set before the body, the peak while
    loading (VmHWM: what a container limit has to allow) and once the body
    and the parsed document are freed (what stays for the index);
  - lookup latency: L{BindingIndex.lookup} of bound ServiceAccounts (the
    first lookup of a key builds its Grant, later ones are cached: both are
    timed) and of unbound ones, in ns per lookup.

The bindings are spread as in a large cluster: 100 tenant namespaces (fewer
for small sizes), every binding granting a distinct ServiceAccount of its
own application namespace one to three of five policies.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
POLICIES = ("readwrite", "readonly", "photos", "logs-writer", "diagnostics")

# Targets (the issue): ready <= 3 s after the list, RSS <= 250 MB, lookups flat.
READY_TARGET_S = 3.0
RSS_TARGET_MB = 250.0
FLAT_FACTOR = 2.0  # "flat": 10^5 bindings cost at most twice what 10 do per lookup


def binding_list(count: int, seed: int = 1) -> bytes:
    """A PolicyBindingList as kube-apiserver serializes it."""
    rng = random.Random(seed)
    tenants = max(1, min(100, count // 10))
    items = []
    for i in range(count):
        namespace = f"tenant-{i % tenants}"
        items.append({
            "apiVersion": "sts.min.io/v1beta1",
            "kind": "PolicyBinding",
            "metadata": {
                "name": f"binding-{i}",
                "namespace": namespace,
                "uid": f"{rng.getrandbits(128):032x}",
                "resourceVersion": str(1000 + i),
                "generation": 1,
                "creationTimestamp": "2026-01-01T00:00:00Z",
            },
            "spec": {
                "application": {"namespace": f"app-{i}", "serviceaccount": f"sa-{i}"},
                "policies": rng.sample(POLICIES, rng.randint(1, 3)),
            },
        })
    document = {
        "apiVersion": "sts.min.io/v1beta1",
        "kind": "PolicyBindingList",
        "metadata": {"resourceVersion": str(1000 + count)},
        "items": items,
    }
    return json.dumps(document, separators=(",", ":")).encode()


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> None:
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0).
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _ns_per_call(fn: Any, keys: Sequence[tuple[str, str, str]], repeat: int = 5) -> float:
    """The best of C{repeat} passes over C{keys}, in ns per call."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter_ns()
        for key in keys:
            fn(*key)
        best = min(best, (time.perf_counter_ns() - started) / len(keys))
    return best


def child(path: str, count: int) -> dict[str, Any]:
    """In the measuring subprocess: load the list like the daemon does."""
    from stsd.bindings import BindingIndex, parse_binding

    gc.collect()
    rss_start = _status_kib("VmRSS") / 1024
    body = Path(path).read_bytes()  # the list body as received
    rss_body = _status_kib("VmRSS") / 1024
    _reset_peak()
    index = BindingIndex()

    t0 = time.perf_counter()
    document = json.loads(body)  # KubernetesClient._call
    items = [i for i in document.get("items") or [] if isinstance(i, dict)]  # .list
    t1 = time.perf_counter()
    parsed = [b for b in (parse_binding(i) for i in items) if b is not None]  # watch.py
    t2 = time.perf_counter()
    index.replace(parsed)
    t3 = time.perf_counter()

    peak = _status_kib("VmHWM") / 1024
    del document, items, body, parsed
    gc.collect()
    rss_after = _status_kib("VmRSS") / 1024
    assert len(index) == count, (len(index), count)

    # Keys: every bound ServiceAccount (sampled), and as many unbound ones.
    rng = random.Random(2)
    tenants = max(1, min(100, count // 10))
    sample = [rng.randrange(count) for _ in range(20_000)]
    hits = [(f"tenant-{i % tenants}", f"app-{i}", f"sa-{i}") for i in sample]
    misses = [(f"tenant-{i % tenants}", f"app-{i}", f"nobody-{i}") for i in sample]
    distinct = list(dict.fromkeys(hits))
    first = 0.0
    if distinct:
        started = time.perf_counter_ns()
        for key in distinct:  # each builds and caches its Grant
            assert index.lookup(*key) is not None
        first = (time.perf_counter_ns() - started) / len(distinct)
    return {
        "bindings": count,
        "body_mb": round(Path(path).stat().st_size / 1e6, 2),
        "ready_after_list_s": round(t3 - t0, 4),
        "json_loads_s": round(t1 - t0, 4),
        "parse_bindings_s": round(t2 - t1, 4),
        "index_replace_s": round(t3 - t2, 4),
        "rss_start_mb": round(rss_start, 1),
        "rss_with_body_mb": round(rss_body, 1),
        "rss_peak_mb": round(peak, 1),
        "rss_after_mb": round(rss_after, 1),
        "lookup_first_ns": round(first, 1),
        "lookup_hit_ns": round(_ns_per_call(index.lookup, hits), 1),
        "lookup_miss_ns": round(_ns_per_call(index.lookup, misses), 1),
    }


def run_size(count: int, directory: Path, core: int | None) -> dict[str, Any]:
    path = directory / f"bindings-{count}.json"
    path.write_bytes(binding_list(count))
    argv = [sys.executable, "-m", "bench.scale", "--child", str(path), "--count", str(count)]
    if core is not None:
        argv = ["taskset", "-c", str(core), *argv]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"scale child failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(results: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    lines = [
        f"{'bindings':>9} {'list MB':>8} {'ready s':>8} {'(json':>7} {'parse':>6} {'index)':>7} "
        f"{'RSS start':>9} {'peak':>6} {'after':>6}  {'lookup ns: first':>16} {'hit':>5} {'miss':>5}",
    ]
    lines.append("-" * len(lines[0]))
    for r in results:
        lines.append(
            f"{r['bindings']:>9} {r['body_mb']:>8.1f} {r['ready_after_list_s']:>8.3f} "
            f"{r['json_loads_s']:>7.3f} {r['parse_bindings_s']:>6.3f} {r['index_replace_s']:>7.3f} "
            f"{r['rss_start_mb']:>9.0f} {r['rss_peak_mb']:>6.0f} {r['rss_after_mb']:>6.0f}  "
            f"{r['lookup_first_ns']:>16.0f} {r['lookup_hit_ns']:>5.0f} {r['lookup_miss_ns']:>5.0f}")
    checks = []
    large = max(results, key=lambda r: r["bindings"])
    small = min(results, key=lambda r: r["bindings"])
    checks.append({"target": f"{large['bindings']} bindings ready <= {READY_TARGET_S:g} s after the list",
                   "met": large["ready_after_list_s"] <= READY_TARGET_S,
                   "value": f"{large['ready_after_list_s']:.2f} s"})
    checks.append({"target": f"RSS <= {RSS_TARGET_MB:g} MB with {large['bindings']} bindings (peak while loading)",
                   "met": large["rss_peak_mb"] <= RSS_TARGET_MB,
                   "value": f"peak {large['rss_peak_mb']:.0f} MB, {large['rss_after_mb']:.0f} MB after"})
    if large is not small:
        ratios = {k: large[k] / small[k] for k in ("lookup_hit_ns", "lookup_miss_ns") if small[k]}
        checks.append({"target": f"lookup latency flat ({large['bindings']} vs {small['bindings']} "
                                 f"bindings, within {FLAT_FACTOR:g}x)",
                       "met": all(v <= FLAT_FACTOR for v in ratios.values()),
                       "value": ", ".join(f"{k.split('_')[1]} x{v:.2f}" for k, v in ratios.items())})
    return "\n".join(lines), checks


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="stsd scale run (see bench/README.md)")
    p.add_argument("--sizes", default="10,100000")
    p.add_argument("--core", type=int, default=0, help="CPU to run the measurement on (-1: any)")
    p.add_argument("--output", default=None, help="write the results as JSON here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.count)))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    results = []
    with tempfile.TemporaryDirectory(prefix="stsd-scale-") as directory:
        for size in sizes:
            results.append(run_size(size, Path(directory), None if args.core < 0 else args.core))
    text, checks = report(results)
    print("scale: PolicyBindings list -> index (json.loads + parse_binding + BindingIndex.replace), "
          "in a fresh process per size")
    print(text)
    print("targets:")
    for c in checks:
        print(f"  [{'met' if c['met'] else 'NOT met'}] {c['target']}: {c['value']}")
    if args.output:
        Path(args.output).write_text(json.dumps({"results": results, "targets": checks}, indent=2) + "\n")
        print(f"written: {args.output}")


if __name__ == "__main__":
    main()
