"""What a traffic rule costs: dnn 1-row REST at c=64 against one tfgate server with no rule
and with a 50/50 split over two versions, side by side.

    .venv/bin/python -m bench.traffic_split [--repeats 5] [--flip-pairs 60] [--out bench/results]

One tfgate server (batching on, bench/batching_parameters.pbtxt) serves dnn versions 1 and
2 (the same export twice; model_version_policy all). Each repeat measures six modes back to
back, rotating which goes first (MODES): no rule; a one-arm rule (draw and count, all on one
version); the two client-side splits TF Serving users do today over version URLs (per
request, and per client); and the rule's 50/50 split without and with a routing key per
client. Each rule row is judged against the rule-free row that sends the same traffic
(AGAINST); rules are set through the admin API. Then bench/traffic_flip.py switches each
comparison of FLIP_COMPARISONS (a rule, or the clients' own keyed split over version URLs)
on and off under one continuous load (--flip-pairs). Writes
bench/results/traffic_split.json, traffic_flip.json and bench/traffic_section.md, which
bench/docs.py includes in docs/benchmarks.md. Traffic goes to 127.0.0.1 only; the server is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from app.core.request_ids import new_request_id
from app.traffic import assign
from app.traffic.router import TrafficRouter
from app.traffic.rules import parse_rule
from bench.loadgen import HttpTarget, LevelOptions, run_level
from bench.probes import ServerProbe
from bench.servers import RunningServer, tfgate_spec
from bench.stats import Window, percentile_ns
from bench.traffic_flip import AA_CONTROL, SETTLE_SECONDS, Comparison, Phase, flip, rank_sum_p
from bench.traffic_flip import ratios as ratios_of
from bench.traffic_flip import render as render_flip
from bench.workloads import Workload

ROOT = pathlib.Path(__file__).resolve().parent.parent
SECTION = pathlib.Path(__file__).resolve().parent / "traffic_section.md"
MODEL = "dnn"
CONCURRENCY = 64
TOKEN = "bench-token"
SPLIT_RULE = {
    "id": "bench",
    "arms": [{"name": "v1", "version": 1, "weight": 50}, {"name": "v2", "version": 2,
                                                          "weight": 50}],
}
# The rule's own cost apart from the split's: every request still drawn and counted, all
# on one version, so batches fill as without a rule.
ONE_ARM_RULE = {"id": "bench-one", "arms": [{"name": "v2", "version": 2, "weight": 1}]}
FLIP_PHASE_SECONDS = 1.0


@dataclasses.dataclass(frozen=True)
class Mode:
    rule: dict | None  # the traffic rule in force (None: none)
    # how the clients address the model: "latest" (the model URL), "urls per request" (each
    # request picks /versions/1 or /versions/2 at random), "urls per client" (connection i
    # always posts to the version the rule would give routing key "client-<i>", so the two
    # sticky splits send exactly the same traffic to each version)
    clients: str = "latest"
    routing_keys: bool = False  # each connection sends its own X-Tfgate-Routing-Key


NO_RULE = "no rule"
ONE_ARM = "rule, one arm (100%)"
CLIENTS_PER_REQUEST = "clients split 50/50 per request (version URLs)"
SPLIT = "50/50 split (no routing key)"
CLIENTS_PER_CLIENT = "clients split 50/50 per client (version URLs)"
SPLIT_KEYED = "50/50 split (a routing key per client)"
MODES: dict[str, Mode] = {
    NO_RULE: Mode(None),
    ONE_ARM: Mode(ONE_ARM_RULE),
    # What TF Serving users do today when they randomise the URL per request: the same two
    # half-fed batch queues as the server-side split without routing keys.
    CLIENTS_PER_REQUEST: Mode(None, clients="urls per request"),
    SPLIT: Mode(SPLIT_RULE),
    # ... and when each user keeps one version (a sticky client-side split): like the
    # server-side split with a routing key per user.
    CLIENTS_PER_CLIENT: Mode(None, clients="urls per client"),
    SPLIT_KEYED: Mode(SPLIT_RULE, routing_keys=True),
}
# Each server-side row and the row it is judged against: what the rule adds is the difference.
AGAINST = {ONE_ARM: NO_RULE, SPLIT: CLIENTS_PER_REQUEST, SPLIT_KEYED: CLIENTS_PER_CLIENT}


def start_server(work: pathlib.Path) -> RunningServer:
    """tfgate with dnn versions 1 and 2 both served, and the admin API enabled."""
    models = work / "models"
    (work / "tokens").write_text(TOKEN + "\n")
    toml = work / "tfgate.toml"
    toml.write_text(f'[admin]\ntokens_file = "{work / "tokens"}"\n')
    spec = tfgate_spec(models, work, ROOT / "bench" / "batching_parameters.pbtxt",
                       [f"--config={toml}"])
    # both versions AVAILABLE: the rule's arms must name served versions
    (work / "models.config").write_text(
        f'model_config_list {{ config {{ name: "{MODEL}" base_path: "{models / MODEL}" '
        'model_platform: "tensorflow" model_version_policy { all {} } } }\n'
    )
    return RunningServer(spec, work)


def wait_for_versions(server: RunningServer, versions: set[str], timeout_seconds: float = 240.0
                      ) -> None:
    """Until every one of `versions` of the model is AVAILABLE."""
    url = f"http://127.0.0.1:{server.spec.rest_port}/v1/models/{MODEL}"
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        with urllib.request.urlopen(url, timeout=30) as response:
            status = json.loads(response.read())["model_version_status"]
        if versions <= {v["version"] for v in status if v["state"] == "AVAILABLE"}:
            return
        time.sleep(0.5)
    raise RuntimeError(f"versions {sorted(versions)} of {MODEL} did not become available")


def admin(server: RunningServer, method: str, rule: dict | None = None) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.spec.rest_port}/v1/admin/models/{MODEL}/traffic",
        method=method,
        data=None if rule is None else json.dumps(rule).encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def set_rule(server: RunningServer, rule: dict | None) -> None:
    """The model's rule becomes `rule` (None: no rule)."""
    admin(server, "DELETE")  # 404 when there is none: fine
    if rule is not None and admin(server, "PUT", rule) != 200:
        raise RuntimeError(f"the admin API refused the rule {rule['id']!r}")


def summarize(windows: list[Window], snapshots: list[dict[str, float]]) -> dict[str, float]:
    """Throughput, latency and the gateway's CPU per request over the measured windows (the
    CPU figure does not move with how the load generator and the server share the cores)."""
    latencies = [v for w in windows for v in w.latencies_ns]
    seconds = sum(w.seconds for w in windows)
    first, last = snapshots[0], snapshots[-1]
    cpu_seconds_used = last["gateway_cpu_s"] - first["gateway_cpu_s"]
    server_cpu_seconds = last["server_cpu_s"] - first["server_cpu_s"]
    batches = last["batch_rows_count"] - first["batch_rows_count"]
    return {
        "throughput": len(latencies) / seconds if seconds else 0.0,
        "gateway_cpu_us": cpu_seconds_used / len(latencies) * 1e6 if latencies else 0.0,
        # gateway + workers
        "server_cpu_us": server_cpu_seconds / len(latencies) * 1e6 if latencies else 0.0,
        "batch_size_mean": (
            (last["batch_rows_sum"] - first["batch_rows_sum"]) / batches if batches else 0.0
        ),
        "p50_ms": percentile_ns(latencies, 50) / 1e6,
        "p99_ms": percentile_ns(latencies, 99) / 1e6,
        "errors": sum(sum(w.errors.values()) for w in windows),
    }


VERSION_PATHS = tuple(f"/v1/models/{MODEL}/versions/{v}:predict" for v in (1, 2))


def keyed_version_paths() -> tuple[str, ...]:
    """Connection i -> the version URL its routing key "client-<i>" hashes to under
    SPLIT_RULE: clients splitting per user exactly as the keyed rule does."""
    weights = [float(arm["weight"]) for arm in SPLIT_RULE["arms"]]  # type: ignore[index]
    return tuple(
        VERSION_PATHS[assign.arm_for_key(str(SPLIT_RULE["id"]), f"client-{i}", weights)]
        for i in range(CONCURRENCY)
    )


async def measure(server: RunningServer, repeats: int) -> list[dict[str, object]]:
    body = Workload(MODEL).rest_body()
    paths = {
        "latest": (), "urls per request": VERSION_PATHS, "urls per client": keyed_version_paths()
    }

    def target_of(mode: Mode) -> HttpTarget:
        return HttpTarget(
            "127.0.0.1", server.spec.rest_port, server.spec.path(MODEL), body,
            alternate_paths=paths[mode.clients],
            alternate_per_request=mode.clients == "urls per request",
            per_connection_header="X-Tfgate-Routing-Key" if mode.routing_keys else "",
        )
    # the warmup outlasts adaptive batching's memory of the previous mode's batch sizes
    level = LevelOptions(concurrency=CONCURRENCY, warmup_seconds=SETTLE_SECONDS,
                         window_seconds=2.0, min_windows=3, max_windows=4)
    rows: list[dict[str, object]] = []
    names = list(MODES)
    probe = ServerProbe(server.pid, metrics_port=server.spec.rest_port)

    for repeat in range(repeats):
        order = names[repeat % len(names):] + names[:repeat % len(names)]  # rotate the order
        for mode in order:
            set_rule(server, MODES[mode].rule)
            windows, snapshots, stable = await run_level(
                target_of(MODES[mode]), level, probe=probe
            )
            rows.append({"mode": mode, "repeat": repeat, "stable": stable,
                         **summarize(windows, snapshots)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def arm_shares(server: RunningServer) -> dict[str, int]:
    """Requests per arm of the split as the server counted them (its last measurement)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.spec.rest_port}/v1/admin/models/{MODEL}/traffic",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            described = json.loads(response.read())
    except urllib.error.HTTPError:
        return {}
    return {a["name"]: a["stats"]["requests"] for a in described["arms"]}


def router_micros(routing_key: str | None, calls: int = 100_000) -> float:
    """In-process: microseconds per request of what a rule adds to the request path (arm
    choice + counting, with a request id remembered), best of 5 passes: noise-robust where
    the load test on a shared machine is not."""
    router = TrafficRouter()
    router.set_rule(MODEL, parse_rule(SPLIT_RULE))
    request_id, counter = new_request_id()  # remembered by its counter, as REST's own ids
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(calls):
            live, arm = router.choose(MODEL, routing_key)  # type: ignore[misc]
            router.record(live, arm, True, 0.001, request_id, counter)
            counter += 1
        best = min(best, (time.perf_counter() - started) / calls)
    return best * 1e6


def median(rows: list[dict[str, object]], mode: str, field: str) -> float:
    return statistics.median(float(r[field]) for r in rows if r["mode"] == mode)  # type: ignore[arg-type]


def ratios(
    rows: list[dict[str, object]], mode: str, against: str = "no rule", field: str = "throughput"
) -> list[float]:
    """Per repeat, mode/`against` of `field`, the two measured back to back."""
    per_repeat = []
    for repeat in sorted({int(r["repeat"]) for r in rows}):  # type: ignore[call-overload]
        pair = {r["mode"]: float(r[field]) for r in rows if r["repeat"] == repeat}  # type: ignore[arg-type]
        if pair.get(against):
            per_repeat.append(pair[mode] / pair[against])
    return per_repeat


# Under one continuous load (bench/traffic_flip.py), against no rule: the method's noise, the
# rule's own work on one version, the keyed split, and the same split done by the clients.
FLIP_COMPARISONS = {
    AA_CONTROL: Comparison(),
    ONE_ARM: Comparison(ONE_ARM_RULE),
    SPLIT_KEYED: Comparison(SPLIT_RULE),
    CLIENTS_PER_CLIENT: Comparison(connection_paths=keyed_version_paths()),
}


def flip_against_clients(flipped: dict[str, list[tuple[Phase, Phase]]]) -> str:
    """The keyed split's flip ratios tested against the clients' own split's: what the
    server-side split costs beyond serving the same two versions to the same users."""
    if SPLIT_KEYED not in flipped or CLIENTS_PER_CLIENT not in flipped:
        return ""
    cells = []
    for field, label in (("throughput", "throughput"), ("gateway_cpu_us", "gateway CPU")):
        rule = ratios_of(flipped[SPLIT_KEYED], field)
        clients = ratios_of(flipped[CLIENTS_PER_CLIENT], field)
        cells.append(
            f"{label} {statistics.median(rule):.3f}x against {statistics.median(clients):.3f}x"
            f" (rank-sum p = {rank_sum_p(clients, rule):.2f})"
        )
    return (
        "The keyed split against the clients' own split (same users, same versions, no rule),"
        " both against no rule under the same load: " + "; ".join(cells) + "."
    )


def ratio(rows: list[dict[str, object]], mode: str, against: str = "no rule") -> float:
    """Median over repeats of mode/`against` throughput measured back to back."""
    return statistics.median(ratios(rows, mode, against))


def render(
    rows: list[dict[str, object]],
    repeats: int,
    shares: dict[str, int],
    load: float,
    micros: tuple[float, float],
    flipped: dict[str, list[tuple[Phase, Phase]]],
) -> str:
    lines = [
        "## Traffic split cost: dnn 1-row REST, c=64, no rule vs a 50/50 split",
        "",
        f"Command: `.venv/bin/python -m bench.traffic_split --repeats {repeats}`; one tfgate",
        "server serving dnn versions 1 and 2 (batching on, one CPU worker); each repeat",
        "measures the modes back to back, rotating which goes first; medians of",
        f"{repeats} repeats. Load average when the run started: {load:.1f} on",
        f"{os.cpu_count()} CPUs (other processes share this machine; ratios inside the",
        "per-repeat range are noise). Each server-side row is judged against the row that",
        "sends the same traffic to the same versions without a rule: the difference is what",
        "the rule itself costs.",
        "",
        "| mode | req/s | / no rule | judged against | / that row (range) |"
        " gateway CPU us/req | CPU / that row | server CPU us/req | mean batch | p50 ms |"
        " p99 ms | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode in MODES:
        errors = sum(int(r["errors"]) for r in rows if r["mode"] == mode)  # type: ignore[call-overload]
        against = AGAINST.get(mode)
        if against is not None:
            spread = ratios(rows, mode, against)
            judged = (
                f"{against} | {statistics.median(spread):.3f}x "
                f"({min(spread):.3f}-{max(spread):.3f}) | "
            )
            cpu_ratio = statistics.median(ratios(rows, mode, against, "gateway_cpu_us"))
            cpu_cell = f"{cpu_ratio:.3f}x"
        else:
            judged, cpu_cell = "- | - | ", "-"
        lines.append(
            f"| {mode} | {median(rows, mode, 'throughput'):,.0f} | {ratio(rows, mode):.3f}x | "
            f"{judged}{median(rows, mode, 'gateway_cpu_us'):.0f} | {cpu_cell} | "
            f"{median(rows, mode, 'server_cpu_us'):.0f} | "
            f"{median(rows, mode, 'batch_size_mean'):.1f} | {median(rows, mode, 'p50_ms'):.2f} | "
            f"{median(rows, mode, 'p99_ms'):.2f} | {errors} |"
        )
    total = sum(shares.values())
    share_text = ", ".join(
        f"{name} {count / total:.1%}" for name, count in sorted(shares.items())
    ) if total else "not read"
    batch_latest = median(rows, NO_RULE, "batch_size_mean")
    batch_spread = median(rows, CLIENTS_PER_REQUEST, "batch_size_mean")
    lines += [
        "",
        f"Arm shares the server counted over a final 1 s split run: {share_text}.",
        "",
        "How to read it: one worker runs one batch at a time, so the size of a batch is what",
        "queued for that version while the previous batch ran. When every client keeps to one",
        "version (a client-side split per client, or a rule with a routing key per user, as",
        "an A/B test of users has), each version's queue refills with the clients its last",
        "batch answered, and batches stay as large as without a split. When each request picks",
        "its version afresh (a client that randomises the URL per request, or a rule without",
        "routing keys), the clients a batch answers come back spread over both queues, and",
        f"the mean batch falls from {batch_latest:.1f} to {batch_spread:.1f} rows whether the",
        "clients or the rule do the spreading; smaller batches cost the gateway more per",
        "request. That part belongs to splitting requests over two servables on one worker.",
        "What the rule itself costs is each rule row against its rule-free twin, the same",
        "traffic to the same versions: "
        + "; ".join(
            f"{mode} {statistics.median(ratios(rows, mode, against)):.3f}x throughput, "
            f"{statistics.median(ratios(rows, mode, against, 'gateway_cpu_us')):.3f}x gateway CPU"
            for mode, against in AGAINST.items()
        )
        + ".",
        "",
        "In-process, what a rule adds per request (arm choice + counting, best of 5 x 100k):",
        f"{micros[0]:.2f} us without a routing key, {micros[1]:.2f} us with one.",
        "",
        *render_flip(flipped, FLIP_PHASE_SECONDS),
        "",
        flip_against_clients(flipped),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.traffic_split", description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--flip-pairs", type=int, default=60,
                        help="pairs per comparison of the continuous-load run (>= 6)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tfgate-traffic-") as tmp:
        work = pathlib.Path(tmp)
        base = work / "models" / MODEL
        subprocess.run(
            [sys.executable, "-m", "workers.example_models", MODEL, str(base)],
            check=True, cwd=ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
            stdout=subprocess.DEVNULL,
        )
        shutil.copytree(base / "1", base / "2")
        load = os.getloadavg()[0]
        micros = (router_micros(None), router_micros("user-42"))
        server = start_server(work)
        try:
            server.wait_ready(MODEL, Workload(MODEL).rest_body())
            wait_for_versions(server, {"1", "2"})
            rows = asyncio.run(measure(server, args.repeats))
            flipped = asyncio.run(flip(
                server.spec.rest_port, server.pid, server.spec.path(MODEL),
                FLIP_COMPARISONS,
                lambda rule: set_rule(server, rule),
                pairs=max(6, args.flip_pairs), phase_seconds=FLIP_PHASE_SECONDS,
            ))
            # the arms' counts over one short split run with fresh counters
            set_rule(server, SPLIT_RULE)
            asyncio.run(run_level(
                HttpTarget("127.0.0.1", server.spec.rest_port, server.spec.path(MODEL),
                           Workload(MODEL).rest_body()),
                LevelOptions(concurrency=CONCURRENCY, warmup_seconds=0.0, window_seconds=1.0,
                             min_windows=1, max_windows=1),
            ))
            shares = arm_shares(server)
        finally:
            server.stop()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "traffic_split.json").write_text(json.dumps(rows, indent=1))
    (out / "traffic_flip.json").write_text(json.dumps(
        {name: [[dataclasses.asdict(a), dataclasses.asdict(b)] for a, b in pairs]
         for name, pairs in flipped.items()}, indent=1))
    SECTION.write_text(render(rows, args.repeats, shares, load, micros, flipped))
    print(SECTION.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
