"""
The scale run of the stsd benchmark: 10 and 100,000 PolicyBindings.

    python -m bench.scale [--sizes 10,100000] [--output scale.json]

For each size, a fresh subprocess (pinned to the daemon core) is handed the
PolicyBinding list exactly as the API server returns it (the JSON body of
C{GET /apis/sts.min.io/v1beta1/policybindings}, built here beforehand and
read from a file: "the list body received") and does what the daemon does
with it: C{json.loads} (L{stsd.upstream.kube.KubernetesClient.list}),
L{stsd.state.bindings.parse_binding} of every item and L{BindingIndex.replace}
(L{stsd.state.sync}). It reports:

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

With C{--daemon} (as C{make bench} runs it), the same sizes end to end: the
real daemon (jwks mode, pinned to the daemon core) started against the fake
API server holding that many PolicyBindings: wall time and daemon CPU from
start to C{/readyz}, its RSS when ready and after re-lists, and the latency
of one client's requests (wrk -c1), steady and while the daemon lists
everything again (the fake API server cuts its watches, as a restarting API
server does; a re-list parses the whole list on the reactor thread, so its
cost shows up as the maximum latency; the safety-net re-list every
C{kubernetes.resync_seconds} costs the same).
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
# "Flat": a lookup among 10^5 bindings costs less than 1 us more than among 10
# (a dict lookup either way; a big table only misses the CPU caches more
# often), i.e. under 0.1 % of the daemon's CPU per credential.
FLAT_EXTRA_NS = 1000.0


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
    from stsd.state.bindings import BindingIndex, parse_binding

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
    parsed = [b for b in (parse_binding(i) for i in items) if b is not None]  # sync.py (transform=)
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
    # The whole list as one document is not what the daemon does (it reads
    # pages of 500, parsed as they arrive): its RSS is the target, checked
    # end to end by --daemon; this peak is shown for what it is.
    checks.append({"target": f"RSS with {large['bindings']} bindings listed in one unpaged "
                             f"document (information: the {RSS_TARGET_MB:g} MB target is the "
                             "daemon's, below)",
                   "met": None,
                   "value": f"peak {large['rss_peak_mb']:.0f} MB, {large['rss_after_mb']:.0f} MB after"})
    if large is not small:
        parts, flat = [], True
        for key in ("lookup_hit_ns", "lookup_miss_ns"):
            extra = large[key] - small[key]
            flat = flat and extra < FLAT_EXTRA_NS
            parts.append(f"{key.split('_')[1]} {small[key]:.0f} -> {large[key]:.0f} ns "
                         f"(x{large[key] / small[key]:.2f})")
        checks.append({"target": f"lookup latency flat ({small['bindings']} -> {large['bindings']} "
                                 f"bindings: under {FLAT_EXTRA_NS:g} ns more per lookup)",
                       "met": flat, "value": ", ".join(parts)})
    return "\n".join(lines), checks


def _proc_status(pid: int) -> dict[str, float]:
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) / 1024
    return found


async def daemon_scale(reactor: Any, sizes: Sequence[int], core: int,
                       seconds: float) -> list[dict[str, Any]]:
    """The real daemon with C{size} PolicyBindings in the fake API server."""
    from twisted.internet.task import deferLater

    from bench import run as bench_run
    from stsd.testing.world import World

    os.sched_setaffinity(0, {1 - core} if os.cpu_count() and os.cpu_count() > 1 else {0})
    results = []
    for size in sizes:
        directory = Path(tempfile.mkdtemp(prefix=f"stsd-scale-{size}-"))
        world = World.start(directory, reactor)
        try:
            started = time.perf_counter()
            for i in range(max(0, size - 2)):  # the world binds apps/photo-sa twice
                world.kubernetes.add_policybinding(
                    f"tenant-{i % 2 + 1}", f"binding-{i}", app_namespace=f"app-{i}",
                    serviceaccount=f"sa-{i}", policies=[POLICIES[i % len(POLICIES)]])
            populate = time.perf_counter() - started
            started = time.perf_counter()
            server = await bench_run.start_stsd(
                world, "jwks", core, name=f"stsd-{size}", ready_timeout=300)
            ready = time.perf_counter() - started
            cpu_ready = bench_run._cpu_seconds(server.pid)
            memory_ready = _proc_status(server.pid)
            token_file = directory / "token.txt"
            token_file.write_text(world.mint("apps", "photo-sa") + "\n")
            args = bench_run.parse_args(["--connections", "1", "--duration", f"{seconds:g}",
                                         "--daemon-core", str(core),
                                         "--load-core", str(1 - core)])
            await bench_run.measure(world, server, "jwks-reused", 0, token_file, False,
                                    bench_run.replace(args, duration=1))  # warm-up
            steady = await bench_run.measure(world, server, "jwks-reused", 1, token_file,
                                             False, args)
            # Cut the watches one second in: the daemon lists everything again.
            lists_before = world.kubernetes.count("/apis/sts.min.io/v1beta1/policybindings")
            reactor.callLater(1.0, world.kubernetes.cut_watches)
            relisting = await bench_run.measure(world, server, "jwks-reused", 2, token_file,
                                                False, args)
            await deferLater(reactor, 0.5, lambda: None)
            memory_after = _proc_status(server.pid)
            results.append({
                "bindings": size,
                "fake_populate_s": round(populate, 2),
                "start_to_ready_s": round(ready, 2),
                "daemon_cpu_at_ready_s": round(cpu_ready, 2),
                "rss_ready_mb": round(memory_ready["VmRSS"], 1),
                "rss_after_relist_mb": round(memory_after["VmRSS"], 1),
                "rss_peak_mb": round(memory_after["VmHWM"], 1),
                "steady": {"requests": steady.ok, "errors": sum(steady.errors.values()),
                           "p50_ms": steady.p50_ms, "p99_ms": steady.p99_ms,
                           "max_ms": steady.max_ms},
                "relist": {"requests": relisting.ok, "errors": sum(relisting.errors.values()),
                           "p50_ms": relisting.p50_ms, "p99_ms": relisting.p99_ms,
                           "max_ms": relisting.max_ms,
                           "lists": world.kubernetes.count("/apis/sts.min.io/v1beta1/policybindings")
                           - lists_before},
            })
        finally:
            await world.stop()
            import shutil

            shutil.rmtree(directory, ignore_errors=True)
    return results


def daemon_report(results: list[dict[str, Any]], seconds: float) -> str:
    lines = [f"scale, end to end: the daemon (jwks mode) started with N PolicyBindings in the fake "
             f"API server, then one client (wrk -c1, {seconds:g} s, one token): steady, and while "
             f"the daemon re-lists (watches cut 1 s in)",
             f"{'bindings':>9} {'start->ready s':>14} {'CPU at ready s':>14} {'RSS ready MB':>12} "
             f"{'after re-list':>13} {'peak':>5}  {'steady p50/p99 ms':>17}  {'re-list p50/p99/max ms':>22}"]
    lines.append("-" * len(lines[1]))
    for r in results:
        st, rl = r["steady"], r["relist"]
        errors = st["errors"] + rl["errors"]
        lines.append(
            f"{r['bindings']:>9} {r['start_to_ready_s']:>14.2f} {r['daemon_cpu_at_ready_s']:>14.2f} "
            f"{r['rss_ready_mb']:>12.0f} {r['rss_after_relist_mb']:>13.0f} {r['rss_peak_mb']:>5.0f}  "
            f"{st['p50_ms']:>8.2f}/{st['p99_ms']:<8.2f}  "
            f"{rl['p50_ms']:>7.2f}/{rl['p99_ms']:.2f}/{rl['max_ms']:.0f}"
            + (f"  [{errors} errors]" if errors else "")
            + ("" if rl["lists"] else "  [no re-list happened]"))
    return "\n".join(lines)


def daemon_checks(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    large = max(results, key=lambda r: r["bindings"])
    small = min(results, key=lambda r: r["bindings"])
    checks = []
    if large is not small:
        # The daemon's CPU from start to ready, less what it takes with the
        # small list: what listing (reading, parsing, indexing) the large one cost.
        cpu = large["daemon_cpu_at_ready_s"] - small["daemon_cpu_at_ready_s"]
        wall = large["start_to_ready_s"] - small["start_to_ready_s"]
        checks.append({
            "target": f"daemon: {large['bindings']} bindings ready <= {READY_TARGET_S:g} s after the list",
            "met": cpu <= READY_TARGET_S,
            "value": f"{cpu:.2f} s of daemon CPU more than with {small['bindings']} "
                     f"({wall:.2f} s more wall time from start, the fake's serving included)"})
    checks.append({
        "target": f"daemon: RSS <= {RSS_TARGET_MB:g} MB with {large['bindings']} bindings",
        "met": max(large["rss_ready_mb"], large["rss_after_relist_mb"],
                   large["rss_peak_mb"]) <= RSS_TARGET_MB,
        "value": f"{large['rss_ready_mb']:.0f} MB when ready, {large['rss_after_relist_mb']:.0f} MB "
                 f"after one re-list, peak {large['rss_peak_mb']:.0f} MB "
                 f"({small['rss_ready_mb']:.0f} MB with {small['bindings']})"})
    if large is not small:
        a, b = small["steady"]["p50_ms"], large["steady"]["p50_ms"]
        checks.append({
            "target": "daemon: request latency flat (one client, p50)",
            "met": b - a < 0.1,
            "value": f"{a:.2f} ms with {small['bindings']}, {b:.2f} ms with {large['bindings']}"})
    checks.append({
        "target": "daemon: a re-list does not stall requests (max latency < 100 ms)",
        "met": large["relist"]["max_ms"] < 100,
        "value": f"max {large['relist']['max_ms']:.0f} ms while re-listing {large['bindings']} "
                 f"bindings (p99 {large['relist']['p99_ms']:.0f} ms); "
                 f"{small['relist']['max_ms']:.0f} ms with {small['bindings']}"})
    return checks


def _verdict(met: bool | None) -> str:
    return "info" if met is None else "met" if met else "NOT met"


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="stsd scale run (see bench/README.md)")
    p.add_argument("--sizes", default="10,100000")
    p.add_argument("--core", type=int, default=0, help="CPU to run the measurement on (-1: any)")
    p.add_argument("--output", default=None, help="write the results as JSON here")
    p.add_argument("--daemon", action="store_true",
                   help="also run the sizes end to end against the real daemon")
    p.add_argument("--seconds", type=float, default=5.0,
                   help="--daemon: seconds of client load per size (5)")
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
        print(f"  [{_verdict(c['met'])}] {c['target']}: {c['value']}")
    document: dict[str, Any] = {"results": results, "targets": checks}
    if args.daemon:
        from twisted.internet.defer import Deferred
        from twisted.internet.task import react

        core = max(0, args.core)
        end_to_end: list[dict[str, Any]] = []

        async def go(reactor: Any) -> None:
            end_to_end.extend(await daemon_scale(reactor, sizes, core, args.seconds))

        try:
            react(lambda reactor: Deferred.fromCoroutine(go(reactor)))
        except SystemExit as e:
            if e.code:
                raise
        print()
        print(daemon_report(end_to_end, args.seconds))
        daemon_targets = daemon_checks(end_to_end)
        print("targets:")
        for c in daemon_targets:
            print(f"  [{_verdict(c['met'])}] {c['target']}: {c['value']}")
        document["daemon"] = end_to_end
        document["daemon_targets"] = daemon_targets
    if args.output:
        Path(args.output).write_text(json.dumps(document, indent=2) + "\n")
        print(f"written: {args.output}")


if __name__ == "__main__":
    main()
