"""bench/traffic_split.py: the clients' own split sends each user where the keyed rule would,
and the keyed split is tested against it."""

from __future__ import annotations

from app.traffic.router import TrafficRouter
from app.traffic.rules import parse_rule
from bench.traffic_flip import Phase
from bench.traffic_split import (
    CLIENTS_PER_CLIENT,
    CONCURRENCY,
    FLIP_COMPARISONS,
    MODEL,
    SPLIT_KEYED,
    SPLIT_RULE,
    flip_against_clients,
    keyed_version_paths,
)


def test_clients_post_to_the_version_the_keyed_rule_gives_their_routing_key() -> None:
    router = TrafficRouter()
    router.set_rule(MODEL, parse_rule(SPLIT_RULE))
    paths = keyed_version_paths()
    assert len(paths) == CONCURRENCY
    for index, path in enumerate(paths):
        live, arm = router.choose(MODEL, f"client-{index}")  # type: ignore[misc]
        assert path == f"/v1/models/{MODEL}/versions/{live.specs[arm].version}:predict"
    assert len(set(paths)) == 2  # both versions get users
    assert FLIP_COMPARISONS[CLIENTS_PER_CLIENT].connection_paths == paths
    assert FLIP_COMPARISONS[CLIENTS_PER_CLIENT].rule is None


def test_the_keyed_split_is_tested_against_the_clients_own_split() -> None:
    base = Phase(1000.0, 100.0, 120.0)
    clients = [(base, Phase(1000.0 + d, 100.0 + d / 10, 120.0)) for d in (-6, -3, 0, 2, 4, 7)]
    rule = [(base, Phase(950.0 + d, 100.0 + d / 10, 120.0)) for d in (-6, -3, 0, 2, 4, 7)]
    text = flip_against_clients({SPLIT_KEYED: rule, CLIENTS_PER_CLIENT: clients})
    # every rule phase slower (U = 0, p = 0.0039); the CPU ratios are the same (p = 1)
    assert "throughput 0.951x against 1.001x (rank-sum p = 0.00)" in text
    assert "gateway CPU 1.001x against 1.001x (rank-sum p = 1.00)" in text
    assert flip_against_clients({SPLIT_KEYED: rule}) == ""
