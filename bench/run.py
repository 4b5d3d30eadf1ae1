"""
The stsd throughput benchmark: credentials per second on one core, against
the framework ceiling.

    python -m bench.run [--rounds 3] [--duration 5] [--connections 16]
                        [--output bench-results.json] [--profile jwks-fresh]

Layout (two cores): this process pins itself to the load core (1) and runs
the simulated cluster there (the fake Kubernetes API server and the fake
MinIO tenants of L{stsd.testing.world}, on loopback TLS); the server under
test, either the bare Klein baseline (C{bench/baseline.py}) or the real
daemon (C{twistd -n --pidfile= stsd --config FILE}), runs alone on the
daemon core (0), started through C{taskset -c 0}; the load generator,
C{wrk} (keep-alive, C{bench/fresh_tokens.lua}), runs on the load core too.

Modes, measured in alternating rounds (every mode once per round):

  - baseline: the bare Klein TLS resource, the framework ceiling (a);
  - tokenreview-reused / jwks-reused: stsd, one token sent again and again
    (identical requests: the TokenReview cache and credential reuse
    apply) (b);
  - tokenreview-fresh / jwks-fresh: stsd, a token never seen before in
    every request (pre-minted RS256 tokens, as many as the round needs) (c).

For each round: credentials/s (HTTP 200 answers per second), p50/p99
latency (wrk, closed loop at C{--connections}), the daemon's CPU ms per
credential (C{/proc/PID/stat}), Kubernetes and MinIO calls per credential
(the fakes' own counters), the CPU used on each core by the daemon, the
fakes, wrk and anything else. A round with any non-2xx answer or socket
error is marked invalid; a "fresh" round that ran out of tokens is run
again with more; a round during which other processes used more than
C{--max-other} of either core is run again (up to C{--noise-retries} times)
and, if still noisy, kept but flagged. The table gives the medians over the
quiet rounds and the ratio to the baseline.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater, react
from twisted.internet.utils import getProcessOutputAndValue

from stsd.testing.world import Daemon, World, free_port, twistd_command

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LUA = HERE / "fresh_tokens.lua"
TOKENREVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"
TICKS = os.sysconf("SC_CLK_TCK")
NAMESPACE = "tenant-1"  # the bound ServiceAccount: apps/photo-sa -> readwrite

MODES = ("baseline", "tokenreview-reused", "tokenreview-fresh", "jwks-reused", "jwks-fresh")

# Nothing may be throttled during the benchmark.
UNLIMITED = {"rate": 1_000_000, "burst": 1_000_000}


# -- processes -----------------------------------------------------------------


class _Child(ProcessProtocol):
    """A child whose output goes to a file (not through this reactor)."""

    def __init__(self, ready_marker: bytes | None = None) -> None:
        self.ended: Deferred[int | None] = Deferred()
        self.ready: Deferred[bytes] = Deferred()
        self._marker = ready_marker
        self._buffer = b""

    def outReceived(self, data: bytes) -> None:
        if self._marker is not None and not self.ready.called:
            self._buffer += data
            for line in self._buffer.splitlines():
                if line.startswith(self._marker):
                    self.ready.callback(line)
                    break

    def processEnded(self, reason: Any) -> None:
        value = reason.value
        code = getattr(value, "exitCode", None)
        if code is None and getattr(value, "signal", None) is not None:
            code = -value.signal
        if self._marker is not None and not self.ready.called:
            self.ready.errback(RuntimeError(f"process ended (code {code}) before it was ready"))
        self.ended.callback(code)


def _env(root: Path = ROOT) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    return env


#: The suffix of a mode run by the daemon of the C{--versus} checkout.
VERSUS = "@versus"


def versus_twistd(checkout: Path) -> list[str]:
    """The C{twistd} of another checkout's environment (C{CHECKOUT/.venv})."""
    script = checkout / ".venv" / "bin" / "twistd"
    if not script.exists():
        raise SystemExit(f"--versus: {script} not found (make the checkout's venv: "
                         f"python3 -m venv .venv && .venv/bin/pip install -r requirements-test.lock -e .)")
    return [str(script)]


def _affinity(pid: int) -> set[str]:
    """The CPU lists of every thread of C{pid}."""
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                found.add(line.split(":", 1)[1].strip())
    return found


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _core_busy() -> dict[int, float]:
    """Busy seconds per core since boot (everything but idle and iowait)."""
    busy = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name != "cpu":
            ticks = [int(v) for v in values[:8]]
            busy[int(name[3:])] = (sum(ticks) - ticks[3] - ticks[4]) / TICKS
    return busy


@dataclass
class Server:
    mode_prefix: str
    url: str
    pid: int
    protocol: _Child
    transport: Any
    daemon: Daemon | None = None


async def start_baseline(world: World, core: int, directory: Path) -> Server:
    port = free_port()
    log = (directory / "baseline.log").open("ab")
    argv = ["taskset", "-c", str(core), sys.executable, str(HERE / "baseline.py"),
            "--cert", str(world.pki.cert_path), "--key", str(world.pki.key_path),
            "--port", str(port)]
    protocol = _Child(ready_marker=b"READY")
    transport = world.reactor.spawnProcess(
        protocol, argv[0], argv, env=_env(), childFDs={0: "w", 1: "r", 2: log.fileno()})
    log.close()
    await protocol.ready
    return Server("baseline", f"https://127.0.0.1:{port}", transport.pid, protocol, transport)


async def start_stsd(world: World, verification: str, core: int, *, name: str | None = None,
                     ready_timeout: float = 30.0, args: Sequence[str] = (),
                     checkout: Path | None = None, **overrides: dict[str, Any]) -> Server:
    """
    C{twistd -n --pidfile= stsd --config FILE} (what L{World.start_daemon}
    runs) prefixed by C{taskset -c CORE}; its log goes straight to a file.
    With C{checkout}, the daemon is that checkout's (its code, its venv).
    """
    name = name or f"stsd-{verification}"
    port = free_port()
    sections: dict[str, dict[str, Any]] = {
        "kubernetes": {"token_verification": verification, "resync_seconds": 30,
                       "timeout_seconds": 10},
        "tenants": {"timeout_seconds": 10},
        "limits": {"failed_auth_per_client": UNLIMITED, "per_serviceaccount": UNLIMITED},
    }
    for section, values in overrides.items():
        sections.setdefault(section, {}).update(values)
    config = world.config(port, **sections)
    config_path = world.directory / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log_path = world.directory / f"{name}.log"
    log = log_path.open("ab")
    twistd = twistd_command() if checkout is None else versus_twistd(checkout)
    argv = ["taskset", "-c", str(core), *twistd, "-n", "--pidfile=", "stsd",
            "--config", str(config_path), *args]
    protocol = _Child()
    transport = world.reactor.spawnProcess(
        protocol, argv[0], argv, env=_env(checkout or ROOT),
        childFDs={0: "w", 1: log.fileno(), 2: log.fileno()})
    log.close()
    daemon = Daemon(f"https://127.0.0.1:{port}", config_path, log_path, protocol, transport)  # type: ignore[arg-type]
    world._daemons.append(daemon)
    await world.wait_ready(daemon, timeout=ready_timeout)
    return Server(name, daemon.url, transport.pid, protocol, transport, daemon)


# -- one measurement ---------------------------------------------------------------


@dataclass
class CPU:
    wall: float
    server: float
    fakes: float
    children: float
    cores: dict[int, float]

    @classmethod
    def take(cls, pid: int) -> CPU:
        own = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return cls(
            wall=time.monotonic(),
            server=_cpu_seconds(pid),
            fakes=own.ru_utime + own.ru_stime,
            children=children.ru_utime + children.ru_stime,
            cores=_core_busy(),
        )


@dataclass
class Calls:
    kube_total: int
    kube_reviews: int
    minio_total: int
    minio_assumerole: int
    answered: int | None  # STS requests the daemon answered (its own metric)

    @classmethod
    async def take(cls, world: World, server: Server) -> Calls:
        minio = [t.minio for t in world.tenants.values()]
        return cls(
            kube_total=len(world.kubernetes.requests),
            kube_reviews=world.kubernetes.count(TOKENREVIEW_PATH),
            minio_total=sum(sum(m.calls.values()) for m in minio),
            minio_assumerole=sum(m.count("assumerole") for m in minio),
            answered=await _answered(server),
        )


async def _answered(server: Server) -> int | None:
    """The daemon's C{stsd_requests_total}, all outcomes together."""
    if server.daemon is None:
        return None
    import treq

    response = await treq.get(server.daemon.metrics_url + "/metrics", persistent=False)
    text = (await treq.content(response)).decode()
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("stsd_requests_total{")))


@dataclass
class Round:
    mode: str
    round: int
    credentials_per_s: float
    ok: int
    requests: int
    errors: dict[str, int]
    answered: int
    bytes_per_response: float  # headers + body, as wrk read them
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    cpu_ms_per_credential: float
    kube_calls_per_credential: float
    tokenreviews_per_credential: float
    minio_calls_per_credential: float
    assumeroles_per_credential: float
    daemon_core_busy: float      # the server's CPU / wall time
    fakes_busy: float            # this process (the fakes) CPU / wall time
    wrk_busy: float
    other_daemon_core: float     # busy time of each core not accounted to the above
    other_load_core: float
    tokens_generated: int
    tokens_available: int
    valid: bool
    noisy: bool  # other processes used more than --max-other of a core
    problems: list[str] = field(default_factory=list)


def _wrk_summary(output: bytes) -> dict[str, Any]:
    for line in output.decode(errors="replace").splitlines():
        if line.startswith("BENCH "):
            return json.loads(line[len("BENCH "):])
    raise RuntimeError(f"wrk printed no summary:\n{output.decode(errors='replace')}")


async def measure(world: World, server: Server, mode: str, round_no: int, token_file: Path,
                  fresh: bool, args: argparse.Namespace) -> Round:
    calls_before = await Calls.take(world, server)
    before = CPU.take(server.pid)
    out, err, code = await getProcessOutputAndValue(
        "taskset",
        ["-c", str(args.load_core), "wrk", f"-t{args.threads}", f"-c{args.connections}",
         f"-d{args.duration:g}s", "--timeout", "10s", "--latency", "-s", str(LUA),
         f"{server.url}/sts/{NAMESPACE}", "--", str(token_file), str(args.threads)],
        env=dict(os.environ), reactor=world.reactor)
    after = CPU.take(server.pid)
    # Let the requests wrk abandoned at the end finish upstream before counting.
    await deferLater(world.reactor, 0.3, lambda: None)
    calls_after = await Calls.take(world, server)
    if code != 0:
        raise RuntimeError(f"wrk failed ({code}): "
                           f"{err.decode(errors='replace')} {out.decode(errors='replace')}")
    s = _wrk_summary(out)
    wall = after.wall - before.wall
    seconds = s["duration_us"] / 1e6
    errors = {k: s[k] for k in ("non2xx", "connect_errors", "read_errors", "write_errors", "timeouts")}
    ok = s["requests"] - s["non2xx"]
    # Calls per credential: upstream calls over the requests the daemon
    # answered (its own counter: wrk's 200s miss the up to --connections
    # requests in flight when it stops, whose upstream calls were made).
    answered = (calls_after.answered - calls_before.answered
                if calls_after.answered is not None and calls_before.answered is not None else ok)
    per = (lambda n: n / answered) if answered else (lambda n: float("nan"))
    server_cpu = after.server - before.server
    fakes_cpu = after.fakes - before.fakes
    wrk_cpu = after.children - before.children
    busy = {core: after.cores[core] - before.cores[core] for core in after.cores}
    other_daemon_core = max(0.0, busy.get(args.daemon_core, 0) - server_cpu) / wall
    other_load_core = max(0.0, busy.get(args.load_core, 0) - fakes_cpu - wrk_cpu) / wall
    problems = [f"{v} {k}" for k, v in errors.items() if v]
    if fresh and s["generated"] > s["tokens"]:
        problems.append(f"ran out of fresh tokens ({s['generated']} requests, {s['tokens']} tokens)")
    if ok == 0:
        problems.append("no successful answer")
    return Round(
        mode=mode, round=round_no,
        credentials_per_s=ok / seconds,
        ok=ok, requests=s["requests"], errors=errors,
        bytes_per_response=s["bytes"] / s["requests"] if s["requests"] else float("nan"),
        p50_ms=s["p50_us"] / 1000, p90_ms=s["p90_us"] / 1000, p99_ms=s["p99_us"] / 1000,
        max_ms=s["max_us"] / 1000,
        answered=answered,
        cpu_ms_per_credential=server_cpu * 1000 / ok if ok else float("nan"),
        kube_calls_per_credential=per(calls_after.kube_total - calls_before.kube_total),
        tokenreviews_per_credential=per(calls_after.kube_reviews - calls_before.kube_reviews),
        minio_calls_per_credential=per(calls_after.minio_total - calls_before.minio_total),
        assumeroles_per_credential=per(calls_after.minio_assumerole - calls_before.minio_assumerole),
        daemon_core_busy=server_cpu / wall,
        fakes_busy=fakes_cpu / wall,
        wrk_busy=wrk_cpu / wall,
        other_daemon_core=other_daemon_core, other_load_core=other_load_core,
        tokens_generated=s["generated"], tokens_available=s["tokens"],
        valid=not problems, problems=problems,
        noisy=max(other_daemon_core, other_load_core) > args.max_other,
    )


# -- tokens ----------------------------------------------------------------------------


class Tokens:
    """
    Token files for wrk: one fixed token per daemon for the "reused" modes,
    a new file of never-used tokens for every "fresh" round.
    """

    def __init__(self, world: World, directory: Path) -> None:
        self._world = world
        self._directory = directory
        self._serial = 0
        self.minted = 0
        self.mint_seconds = 0.0

    async def _mint(self, count: int) -> list[str]:
        issuer = self._world.issuer
        tokens: list[str] = []
        started = time.perf_counter()
        while len(tokens) < count:
            for _ in range(min(500, count - len(tokens))):
                self._serial += 1
                tokens.append(issuer.mint("apps", "photo-sa", jti=f"bench-{self._serial}"))
            # Let the fakes answer the daemons' background calls meanwhile.
            await deferLater(self._world.reactor, 0, lambda: None)
        self.mint_seconds += time.perf_counter() - started
        self.minted += count
        return tokens

    async def file(self, name: str, count: int) -> Path:
        path = self._directory / f"tokens-{name}.txt"
        path.write_text("\n".join(await self._mint(count)) + "\n")
        return path


# -- the run ---------------------------------------------------------------------------------


def _median(values: Sequence[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else float("nan")


def summarize(rounds: list[Round], modes: Sequence[str]) -> list[dict[str, Any]]:
    rows = []
    base = None
    for mode in modes:
        mine = [r for r in rounds if r.mode == mode]
        good = [r for r in mine if r.valid and not r.noisy]
        valid = good or [r for r in mine if r.valid] or mine
        row: dict[str, Any] = {
            "mode": mode,
            "rounds": len(mine),
            "valid_rounds": sum(r.valid for r in mine),
            "quiet_rounds": len(good),
        }
        for key in ("credentials_per_s", "p50_ms", "p99_ms", "cpu_ms_per_credential",
                    "kube_calls_per_credential", "tokenreviews_per_credential",
                    "minio_calls_per_credential", "assumeroles_per_credential",
                    "daemon_core_busy", "fakes_busy", "wrk_busy",
                    "other_daemon_core", "other_load_core"):
            row[key] = _median([getattr(r, key) for r in valid])
        row["other_busy_max"] = max((max(r.other_daemon_core, r.other_load_core) for r in mine),
                                    default=0.0)
        if mode == "baseline":
            base = row["credentials_per_s"]
        row["ratio_to_baseline"] = (row["credentials_per_s"] / base) if base else float("nan")
        row["bottleneck"] = _bottleneck(row, mode)
        rows.append(row)
    return rows


def _versus_first(modes: Sequence[str]) -> list[str]:
    """C{modes} with each C{M@versus} moved before C{M}: every other round runs the
    other checkout first, so neither side always follows the other."""
    out = list(modes)
    for i, mode in enumerate(out):
        if mode.endswith(VERSUS) and i and out[i - 1] == mode.removesuffix(VERSUS):
            out[i - 1], out[i] = mode, out[i - 1]
    return out


def versus_pairs(rounds: list[Round], modes: Sequence[str]) -> list[dict[str, Any]]:
    """
    For each mode run by both daemons: the median, over rounds, of this
    tree's figure divided by the other checkout's in the same round (only
    rounds where both were valid and quiet).
    """
    out = []
    for mode in modes:
        if mode == "baseline" or mode.endswith(VERSUS):
            continue
        mine = {r.round: r for r in rounds if r.mode == mode and r.valid and not r.noisy}
        other = {r.round: r for r in rounds if r.mode == mode + VERSUS and r.valid and not r.noisy}
        both = sorted(set(mine) & set(other))

        def ratio(key: str) -> float:
            return _median([getattr(mine[n], key) / getattr(other[n], key) for n in both
                            if getattr(other[n], key)])

        out.append({"mode": mode, "pairs": len(both),
                    "credentials_per_s": ratio("credentials_per_s"),
                    "cpu_ms_per_credential": ratio("cpu_ms_per_credential"),
                    "p99_ms": ratio("p99_ms")})
    return out


def versus_table(pairs: list[dict[str, Any]]) -> str:
    head = f"{'mode':<20} {'pairs':>5} {'cred/s':>7} {'CPU ms/cred':>11} {'p99 ms':>7}"
    lines = [head, "-" * len(head)]
    def x(value: float, width: int) -> str:
        return (_fmt(value, ".3f") + ("" if math.isnan(value) else "x")).rjust(width)

    for p in pairs:
        lines.append(f"{p['mode']:<20} {p['pairs']:>5} {x(p['credentials_per_s'], 7)} "
                     f"{x(p['cpu_ms_per_credential'], 11)} {x(p['p99_ms'], 7)}")
    return "\n".join(lines)


def _bottleneck(row: dict[str, Any], mode: str) -> str:
    daemon, load = row["daemon_core_busy"], row["fakes_busy"] + row["wrk_busy"]
    if daemon >= 0.9:
        return "daemon core"
    if daemon + row["other_daemon_core"] >= 0.9:
        return "daemon core, SHARED with other processes"
    if load >= 0.9:
        return "load core (fakes+wrk)" if mode != "baseline" else "load core (wrk)"
    if load + row["other_load_core"] >= 0.9:
        return "load core, SHARED with other processes"
    return "neither core saturated (latency-bound)"


def _fmt(value: float, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'mode':<26} {'cred/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'CPU ms/cred':>11} "
            f"{'k8s/cred':>8} {'MinIO/cred':>10} {'x (a)':>6}  {'daemon':>6} {'fakes':>6} {'wrk':>5} "
            f"{'other':>9}  bottleneck")
    lines = [head, "-" * len(head)]
    for r in rows:
        base = r["mode"] == "baseline"
        lines.append(
            f"{r['mode']:<26} {_fmt(r['credentials_per_s'], '8.0f')} {_fmt(r['p50_ms'], '7.2f')} "
            f"{_fmt(r['p99_ms'], '7.2f')} {_fmt(r['cpu_ms_per_credential'], '11.3f')} "
            f"{'-' if base else _fmt(r['kube_calls_per_credential'], '8.4f'):>8} "
            f"{'-' if base else _fmt(r['minio_calls_per_credential'], '10.4f'):>10} "
            f"{_fmt(r['ratio_to_baseline'], '6.2f')}  {r['daemon_core_busy']:6.0%} "
            f"{r['fakes_busy']:6.0%} {r['wrk_busy']:5.0%} "
            f"{r['other_daemon_core']:>4.0%}/{r['other_load_core']:<4.0%}  {r['bottleneck']}"
            + ("" if r["valid_rounds"] == r["rounds"]
               else f"  [{r['rounds'] - r['valid_rounds']} INVALID rounds]")
            + ("" if r["quiet_rounds"] == r["rounds"]
               else f"  [{r['rounds'] - r['quiet_rounds']} NOISY rounds]"))
    return "\n".join(lines)


def targets(rows: list[dict[str, Any]]) -> list[tuple[str, bool | None, str]]:
    by = {r["mode"]: r for r in rows}
    out: list[tuple[str, bool | None, str]] = []

    def ratio(mode: str, need: float, what: str) -> None:
        if mode in by and "baseline" in by:
            value = by[mode]["ratio_to_baseline"]
            out.append((f"{what}: {mode} >= {need} x baseline", value >= need, f"{value:.2f} x"))

    ratio("tokenreview-reused", 0.5, "(b)")
    ratio("jwks-reused", 0.5, "(b)")
    ratio("jwks-fresh", 0.4, "(c)")
    if "jwks-fresh" in by:
        v = by["jwks-fresh"]["tokenreviews_per_credential"]
        total = by["jwks-fresh"]["kube_calls_per_credential"]
        out.append(("Kubernetes calls per credential = 0 in jwks mode (fresh tokens)",
                    v == 0 and total < 0.001,
                    f"{v:.4f} TokenReviews/cred, {total:.4f} calls/cred in all"))
    if "jwks-reused" in by:
        v = by["jwks-reused"]["kube_calls_per_credential"]
        out.append(("Kubernetes calls per credential = 0 in jwks mode (reused token)",
                    v < 0.001, f"{v:.4f} calls/cred"))
    def minio(mode: str) -> str:
        v, a = by[mode]["minio_calls_per_credential"], by[mode]["assumeroles_per_credential"]
        return f"{v:.4f} (AssumeRole {a:.4f}, admin API {v - a:.4f})"

    for mode in ("tokenreview-fresh", "jwks-fresh"):
        if mode in by:
            # As for Kubernetes above: what is not per request (the canned
            # policies re-read every 30 s, the region every 5 min) is held to
            # < 0.001 per credential, not to zero.
            v = by[mode]["minio_calls_per_credential"]
            a = by[mode]["assumeroles_per_credential"]
            out.append((f"MinIO calls per credential <= 1 ({mode}): AssumeRole <= 1, "
                        "time-driven admin calls < 0.001", a <= 1 and v - a < 0.001, minio(mode)))
    for mode in ("tokenreview-reused", "jwks-reused"):
        if mode in by:
            v = by[mode]["minio_calls_per_credential"]
            out.append((f"MinIO calls per credential < 1 under identical requests ({mode})",
                        v < 1, minio(mode)))
    return out


async def profile(world: World, server: Server, mode: str, token_file: Path, fresh: bool,
                  args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    """
    py-spy on the daemon during one more (longer) round of C{mode}: the top
    functions by own time, and every sample charged to an area of the code.
    """
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        return {"error": "py-spy not installed (pip install py-spy): no profile"}
    raw = directory / f"profile-{mode}.txt"
    seconds = args.profile_seconds
    # Blocking sampling (the default): exact stacks, the daemon paused for
    # a few microseconds per sample, 100 samples a second.
    spy = getProcessOutputAndValue(
        "taskset", ["-c", str(args.load_core), py_spy, "record", "--format", "raw",
                    "-o", str(raw), "-p", str(server.pid), "-d", str(math.ceil(seconds + 1))],
        env=dict(os.environ), reactor=world.reactor)
    await deferLater(world.reactor, 0.5, lambda: None)
    measured = await measure(world, server, mode, -1, token_file, fresh,
                             replace(args, duration=seconds))
    out, err, code = await spy
    if code != 0 or not raw.exists():
        return {"error": f"py-spy failed ({code}): {err.decode(errors='replace')[-500:]}"}
    if args.keep_profile:
        shutil.copy(raw, args.keep_profile)
    return {"round": asdict(measured), **top_costs(raw.read_text())}


def _frame(frame: str) -> tuple[str, str]:
    """"function (path/to/file.py:123)" -> ("function (to/file.py)", "path/to/file.py")."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if len(parts) >= 2 else path
    return f"{name} ({short})", path


# Walking up from the sampled (innermost) frame, the first frame in one of
# these places names the area the sample is charged to; Deferred plumbing and
# the standard library are charged to whoever called them.
AREAS = (
    ("TLS (pyOpenSSL, both directions)", ("OpenSSL/", "twisted/protocols/tls.py",
                                          "twisted/internet/_sslverify.py")),
    ("log lines + audit events", ("twisted/logger/", "stsd/ops/audit.py", "stsd/ops/logs.py",
                                  "twisted/python/log.py")),
    ("metrics (prometheus_client)", ("prometheus_client/", "stsd/ops/metrics.py")),
    ("token verification (JWT/JWKS, cache)", ("jwt/", "stsd/auth/jwt.py", "stsd/auth/keyset.py",
                                              "stsd/auth/tokencache.py",
                                              "stsd/auth/tokenreview.py")),
    ("upstream HTTP clients (treq/Agent, SigV4, XML)", (
        "treq/", "twisted/web/client.py", "twisted/web/_newclient.py", "twisted/web/http_headers.py",
        "stsd/upstream/http.py", "stsd/upstream/kube.py", "stsd/upstream/minio.py", "minio/", "urllib3/")),
    ("Klein routing (werkzeug)", ("klein/", "werkzeug/")),
    ("HTTP server (twisted.web)", ("twisted/web/",)),
    ("stsd request logic", ("stsd/",)),
    ("reactor + sockets", ("twisted/internet/", "twisted/python/")),
)


def _area(paths: list[str]) -> str:
    for path in reversed(paths):
        if "twisted/internet/defer.py" in path:
            continue
        for name, places in AREAS:
            if any(place in path for place in places):
                return name
    return "other"


def top_costs(raw: str, n: int = 10) -> dict[str, Any]:
    own: dict[str, int] = {}
    areas: dict[str, int] = {}
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";")
                  if f and not f.startswith(("process ", "thread "))]
        # The reactor thread only: the idle thread pool's workers wait in
        # Queue.get, which py-spy does not always see as idle.
        if not frames or frames[0][0].startswith("Thread._bootstrap"):
            continue
        total += count
        own[frames[-1][0]] = own.get(frames[-1][0], 0) + count
        area = _area([path for _, path in frames])
        areas[area] = areas.get(area, 0) + count

    def top(table: dict[str, int], limit: int | None) -> list[tuple[str, float]]:
        ranked = sorted(table.items(), key=lambda kv: -kv[1])
        return [(k, v / total) for k, v in ranked[:limit]] if total else []

    return {"samples": total, "self": top(own, n), "areas": top(areas, None)}


async def main(reactor: Any, args: argparse.Namespace) -> None:
    os.sched_setaffinity(0, {args.load_core})
    if not shutil.which("wrk"):
        raise SystemExit("wrk not found: apt-get install -y wrk")
    directory = Path(tempfile.mkdtemp(prefix="stsd-bench-"))
    world = World.start(directory, reactor)
    servers: dict[str, Server] = {}
    result: dict[str, Any] = {}
    try:
        modes = [m for m in MODES if m in args.modes]
        if args.versus:
            # Each stsd mode next to the same mode of the other checkout (which
            # one first alternates by round): paired rounds, so the machine's
            # drift hits both alike.
            modes = [v for m in modes for v in ((m,) if m == "baseline" else (m, m + VERSUS))]
        print(f"stsd benchmark: daemon on core {args.daemon_core}; fakes and wrk on core "
              f"{args.load_core}; wrk -t{args.threads} -c{args.connections}, "
              f"{args.rounds} alternating rounds of {args.duration:g} s per mode "
              f"(+{args.warmup:g} s warm-up); work dir {directory}", flush=True)
        if "baseline" in modes:
            servers["baseline"] = await start_baseline(world, args.daemon_core, directory)
        for verification in ("tokenreview", "jwks"):
            if any(m.startswith(verification) for m in modes):
                servers[verification] = await start_stsd(
                    world, verification, args.daemon_core, args=args.daemon_args.split(),
                    tenants={"authorization": args.authorization})
                if args.versus:
                    servers[verification + VERSUS] = await start_stsd(
                        world, verification, args.daemon_core, name=f"stsd-{verification}-versus",
                        args=args.daemon_args.split(), checkout=Path(args.versus),
                        tenants={"authorization": args.authorization})
        for name, server in servers.items():
            print(f"  {name}: pid {server.pid}, CPUs {','.join(sorted(_affinity(server.pid)))}, "
                  f"RSS {_rss_mib(server.pid):.0f} MiB", flush=True)

        tokens = Tokens(world, directory)
        fixed = {v: await tokens.file(f"{v}-reused", 1) for v in ("tokenreview", "jwks")}
        # Fresh rounds get 2 x rate x duration tokens, the rate from the
        # warm-up (or the best round so far); a round that still runs out
        # (wraps around to tokens already seen) is run again with more.
        rate_seen: dict[str, float] = {}

        def server_for(mode: str) -> Server:
            base, versus, _ = mode.partition(VERSUS)
            return servers["baseline" if base == "baseline" else base.split("-")[0] + versus]

        async def token_file(mode: str, label: str, seconds: float) -> tuple[Path, bool]:
            mode = mode.removesuffix(VERSUS)
            if not mode.endswith("fresh"):
                return fixed["jwks" if mode.startswith("jwks") else "tokenreview"], False
            rate = rate_seen.get(mode, args.fresh_rate_guess)
            count = int(rate * seconds * 2) + 4 * args.connections
            return await tokens.file(f"{mode}-{label}", count), True

        for mode in modes:
            path, fresh = await token_file(mode, "warmup", args.warmup)
            warm = await measure(world, server_for(mode), mode, 0, path, fresh,
                                 replace(args, duration=args.warmup))
            rate_seen[mode] = warm.requests / args.warmup
            print(f"  warm-up {mode}: {warm.credentials_per_s:.0f}/s"
                  + ("" if warm.valid else f" ({'; '.join(warm.problems)})"), flush=True)

        rounds: list[Round] = []
        for n in range(1, args.rounds + 1):
            for mode in (modes if n % 2 else _versus_first(modes)):
                for attempt in range(1 + args.noise_retries):
                    path, fresh = await token_file(mode, f"round{n}-{attempt}", args.duration)
                    r = await measure(world, server_for(mode), mode, n, path, fresh, args)
                    rate_seen[mode] = max(rate_seen.get(mode, 0), r.requests / args.duration)
                    if fresh and r.tokens_generated > r.tokens_available:
                        continue  # ran out of fresh tokens: again, with more
                    if not r.noisy:
                        break
                    print(f"  round {n} {mode:<20} discarded: other processes used "
                          f"{r.other_daemon_core:.0%}/{r.other_load_core:.0%} of the cores; again",
                          flush=True)
                    if attempt < args.noise_retries:
                        await deferLater(reactor, args.noise_pause, lambda: None)
                rounds.append(r)
                print(f"  round {n} {mode:<20} {r.credentials_per_s:7.0f} cred/s  p50 {r.p50_ms:6.2f} ms"
                      f"  p99 {r.p99_ms:6.2f} ms  daemon {r.daemon_core_busy:4.0%}  fakes "
                      f"{r.fakes_busy:4.0%}  wrk {r.wrk_busy:4.0%}  other "
                      f"{r.other_daemon_core:.0%}/{r.other_load_core:.0%}"
                      + ("" if r.valid else f"  INVALID: {'; '.join(r.problems)}")
                      + ("  NOISY" if r.noisy else ""), flush=True)

        rows = summarize(rounds, modes)
        checks = targets(rows)
        paired = versus_pairs(rounds, modes) if args.versus else []
        if args.versus:
            # Both daemons call the same fakes, whose counters cannot tell
            # them apart: each one's background calls land in the other's rounds.
            checks = [c for c in checks if "calls per credential" not in c[0]]
        result = {
            "settings": {k: v for k, v in vars(args).items() if k != "output"},
            "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
            "tokens_minted": tokens.minted, "token_mint_seconds": round(tokens.mint_seconds, 2),
            "rounds": [asdict(r) for r in rounds],
            "summary": rows,
            "targets": [{"target": t, "met": m, "value": v} for t, m, v in checks],
        }
        if args.versus:
            result["versus"] = {"checkout": args.versus, "pairs": paired}
        for name, server in servers.items():
            result.setdefault("rss_mib_after", {})[name] = round(_rss_mib(server.pid), 1)

        if args.profile:
            mode = args.profile
            path, fresh = await token_file(mode, "profile", args.profile_seconds)
            result["profile"] = await profile(world, server_for(mode), mode, path, fresh, args, directory)

        print()
        print(f"medians over {args.rounds} rounds ({args.duration:g} s each, wrk -c{args.connections}); "
              f"x (a) = credentials/s over the baseline's; daemon/fakes/wrk = CPU use of their core; "
              f"other = CPU of each core (daemon/load) used by anything else")
        print(table(rows))
        print()
        print("calls per credential (medians):")
        for r in rows:
            if r["mode"] != "baseline":
                print(f"  {r['mode']:<20} Kubernetes {r['kube_calls_per_credential']:.4f} "
                      f"(TokenReview {r['tokenreviews_per_credential']:.4f}), MinIO "
                      f"{r['minio_calls_per_credential']:.4f} "
                      f"(AssumeRole {r['assumeroles_per_credential']:.4f})")
        noisy = sum(r.noisy for r in rounds)
        if noisy:
            print(f"\nWARNING: in {noisy} of the {len(rounds)} rounds kept, processes outside the "
                  f"benchmark used more than {args.max_other:.0%} of a core (even after "
                  f"{args.noise_retries} retries): the machine was not quiet. Medians are over "
                  "the quiet rounds where there are any; rerun for trustworthy numbers.")
        saturated = [r["mode"] for r in rows if r["bottleneck"].startswith("load core")
                     and r["mode"] != "baseline"]
        if saturated:
            print(f"\nNOTE: in {', '.join(saturated)} the load core (the fakes' Python process "
                  "verifying RS256/SigV4, plus wrk) was saturated before the daemon's core: "
                  "those credentials/s are a lower bound for stsd, set by the simulated cluster.")
        if args.versus:
            print(f"\nthis tree against {args.versus}, round by round (each ratio: this tree's "
                  "round over the other's round run next to it; medians):")
            print(versus_table(paired))
            print("(the calls-per-credential figures and targets are left out of a --versus run: "
                  "both daemons call the same fakes; run without --versus for them)")
        print("\ntargets:")
        for t, met, value in checks:
            print(f"  [{'met' if met else 'NOT met'}] {t}: {value}")
        if args.profile and "profile" in result:
            p = result["profile"]
            print(f"\nprofile of the daemon in {args.profile} (py-spy, {p.get('samples', 0)} samples)"
                  + (f" at {p['round']['credentials_per_s']:.0f} cred/s, daemon core "
                     f"{p['round']['daemon_core_busy']:.0%} busy:" if "round" in p else ":"))
            if "error" in p:
                print("  " + p["error"])
            else:
                print("  top 10 functions by own time:")
                for name, share in p["self"]:
                    print(f"    {share:6.1%}  {name}")
                print("  by area (each sample charged to the innermost frame in a known place):")
                for name, share in p["areas"]:
                    print(f"    {share:6.1%}  {name}")
        if args.output:
            Path(args.output).write_text(json.dumps(result, indent=2, default=str) + "\n")
            print(f"\nwritten: {args.output}")
    finally:
        await world.stop()
        for name, server in servers.items():
            if name == "baseline" and not server.protocol.ended.called:
                server.transport.signalProcess("TERM")
                await server.protocol.ended
        if args.keep:
            print(f"kept: {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)


def replace(args: argparse.Namespace, **changes: Any) -> argparse.Namespace:
    new = argparse.Namespace(**vars(args))
    for k, v in changes.items():
        setattr(new, k, v)
    return new


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="stsd throughput benchmark (see bench/README.md)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per mode (3)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per round (5)")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per mode (2)")
    p.add_argument("--connections", type=int, default=16, help="wrk keep-alive connections (16)")
    p.add_argument("--threads", type=int, default=1, help="wrk threads (1)")
    p.add_argument("--modes", default=",".join(MODES),
                   help=f"comma-separated subset of {','.join(MODES)}")
    p.add_argument("--daemon-args", default="",
                   help="extra arguments of `twistd stsd`, e.g. '--log-level=warn'")
    p.add_argument("--authorization", choices=("session-policy", "parent-user"),
                   default="session-policy",
                   help="tenants.authorization of the daemon (session-policy: the figures of "
                        "the README)")
    p.add_argument("--daemon-core", type=int, default=0)
    p.add_argument("--load-core", type=int, default=1)
    p.add_argument("--max-other", type=float, default=0.1,
                   help="a round in which anything else used more than this share of either "
                        "core is noisy, and run again (0.1)")
    p.add_argument("--noise-retries", type=int, default=3,
                   help="how many times a noisy round is run again (3)")
    p.add_argument("--noise-pause", type=float, default=5.0,
                   help="seconds to wait before running a noisy round again (5)")
    p.add_argument("--fresh-rate-guess", type=float, default=2000.0,
                   help="credentials/s assumed when minting the warm-up's fresh tokens")
    p.add_argument("--profile", choices=MODES[1:], default=None,
                   help="py-spy the daemon during one more round of this mode")
    p.add_argument("--profile-seconds", type=float, default=10.0,
                   help="length of the profiled round (10)")
    p.add_argument("--keep-profile", default=None,
                   help="copy py-spy's raw (collapsed stacks) output here")
    p.add_argument("--output", default=None, help="write the results as JSON here")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, configs)")
    p.add_argument("--versus", default=None, metavar="CHECKOUT",
                   help="another checkout of stsd with its own .venv (e.g. `git worktree add "
                        "/tmp/old REV`): every stsd mode also runs that checkout's daemon, in "
                        "the same rounds, and this tree's figures are printed as ratios to its")
    args = p.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(args.modes) - set(MODES)
    if unknown:
        p.error(f"unknown modes: {', '.join(sorted(unknown))}")
    return args


def run(argv: Sequence[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    react(lambda reactor: Deferred.fromCoroutine(main(reactor, args)))


if __name__ == "__main__":
    run()
