"""traffic/stats.py against reference values: published tables (Student's t quantiles,
Wikipedia's Welch example, Wilson's interval) and two-sided t tail probabilities computed
once with mpmath by integrating the t density (30 digits), independently of the
incomplete-beta route stats.py takes."""

from __future__ import annotations

import math
import statistics

import pytest

from app.traffic import stats


@pytest.mark.parametrize(
    ("df", "expected"),
    [(1, 12.7062), (2, 4.3027), (5, 2.5706), (10, 2.2281), (30, 2.0423), (120, 1.9799)],
)
def test_t_quantile_matches_the_published_table(df: int, expected: float) -> None:
    assert stats.student_t_quantile(0.975, df) == pytest.approx(expected, abs=5e-5)


@pytest.mark.parametrize(
    ("t", "df", "reference"),
    [
        (2.0, 10, 0.0733880347707404),
        (1.0, 3.5, 0.381337253563446),
        (-3.2, 57.3, 0.00224143260702813),
        (0.5, 1, 0.704832764699133),
        (2.5, 24.9, 0.0193730364076365),
    ],
)
def test_t_two_sided_tail_matches_integration(t: float, df: float, reference: float) -> None:
    assert stats.student_t_sf_two_sided(t, df) == pytest.approx(reference, rel=1e-9)


def test_normal_cdf() -> None:
    assert stats.normal_cdf(0.0) == 0.5
    assert stats.normal_cdf(stats.Z_95) == pytest.approx(0.975, abs=1e-12)
    assert stats.normal_cdf(-1.0) == pytest.approx(0.158655253931457, rel=1e-12)


def test_two_proportion_z_test_reference() -> None:
    # 200/1000 vs 250/1000: pooled 0.225; z = 0.05 / sqrt(.225 * .775 * 2/1000)
    z, p = stats.two_proportion_z_test(200, 1000, 250, 1000)  # type: ignore[misc]
    assert z == pytest.approx(2.677397763, rel=1e-8)
    assert p == pytest.approx(0.0074196, abs=1e-6)
    # b worse than a: z negative, p the same
    z2, p2 = stats.two_proportion_z_test(250, 1000, 200, 1000)  # type: ignore[misc]
    assert z2 == pytest.approx(-z) and p2 == pytest.approx(p)


@pytest.mark.parametrize(
    "args",
    [(0, 0, 5, 10), (5, 10, 0, 0), (0, 10, 0, 10), (10, 10, 20, 20)],
)
def test_two_proportion_z_test_undefined(args: tuple[int, int, int, int]) -> None:
    assert stats.two_proportion_z_test(*args) is None


def test_welch_matches_the_wikipedia_example() -> None:
    a = [27.5, 21.0, 19.0, 23.6, 17.0, 17.9, 16.9, 20.1, 21.9, 22.6, 23.1, 19.6, 19.0, 21.7,
         21.4]
    b = [27.1, 22.0, 20.8, 23.4, 23.4, 23.5, 25.8, 22.0, 24.8, 20.2, 21.9, 22.1, 22.9, 20.5,
         24.4]
    t, df, p = stats.welch_t_test(  # type: ignore[misc]
        statistics.mean(a), statistics.variance(a), len(a),
        statistics.mean(b), statistics.variance(b), len(b),
    )
    # Wikipedia, "Welch's t-test", example 1: t = 2.46 (b over a), df = 24.99, p = 0.021
    assert t == pytest.approx(2.4554, abs=1e-4)
    assert df == pytest.approx(24.9885, abs=1e-4)
    assert p == pytest.approx(0.0213780014629, rel=1e-8)  # mpmath integration at that t, df


@pytest.mark.parametrize(
    "args",
    [(1.0, 0.0, 1, 2.0, 1.0, 10), (1.0, 1.0, 10, 2.0, 1.0, 1), (1.0, 0.0, 5, 1.0, 0.0, 5)],
)
def test_welch_undefined(args: tuple[float, float, int, float, float, int]) -> None:
    assert stats.welch_t_test(*args) is None


def test_wilson_interval_reference() -> None:
    low, high = stats.wilson_interval(20, 100)
    assert low == pytest.approx(0.13337, abs=1e-5)
    assert high == pytest.approx(0.28883, abs=1e-5)
    assert stats.wilson_interval(0, 10)[0] == 0.0
    assert stats.wilson_interval(10, 10)[1] == pytest.approx(1.0)
    assert stats.wilson_interval(0, 0) == (0.0, 1.0)


def test_mean_interval() -> None:
    low, high = stats.mean_interval(10.0, 4.0, 16)  # type: ignore[misc]
    half = 2.131449546 * math.sqrt(4.0 / 16)  # t(0.975, 15) from the table
    assert low == pytest.approx(10.0 - half, abs=1e-6)
    assert high == pytest.approx(10.0 + half, abs=1e-6)
    assert stats.mean_interval(1.0, 0.0, 1) is None


@pytest.mark.parametrize(
    ("values", "fraction", "expected"),
    [([], 0.5, None), ([1.0], 0.99, 1.0), ([1.0, 2.0, 3.0, 4.0], 0.5, 2.0),
     ([float(i) for i in range(1, 101)], 0.99, 99.0)],
)
def test_percentile(values: list[float], fraction: float, expected: float | None) -> None:
    assert stats.percentile(values, fraction) == expected
