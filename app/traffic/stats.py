"""Per-arm statistics: confidence intervals and the tests against the baseline.

Off the request path (computed when the admin API describes a rule). scipy is not a
dependency: the normal CDF comes from math.erfc, Student's t CDF from the regularized
incomplete beta function (Lentz's continued fraction), and t quantiles by bisection on the
CDF. tests/unit/traffic/test_stats.py checks them against reference values.
"""

from __future__ import annotations

import math

Z_95 = 1.959963984540054  # the normal distribution's 97.5% quantile: two-sided 95%


def normal_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b) (modified Lentz), converging for x < (a+1)/(a+b+2)."""
    tiny = 1e-300
    c = 1.0
    d = 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 400):
        m2 = 2 * m
        numerator = m * (b - m) * x / ((a + m2 - 1.0) * (a + m2))
        d = 1.0 + numerator * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + numerator / c
        c = c if abs(c) > tiny else tiny
        result *= d * c
        numerator = -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1.0))
        d = 1.0 + numerator * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + numerator / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        result *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return result


def regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularized incomplete beta function, for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
        + a * math.log(x) + b * math.log1p(-x)
    )
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_continued_fraction(a, b, x) / a
    return 1.0 - front * _beta_continued_fraction(b, a, 1.0 - x) / b


def student_t_sf_two_sided(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with `df` degrees of freedom (df may be fractional,
    as Welch's is)."""
    if math.isinf(df):
        return math.erfc(abs(t) / math.sqrt(2.0))
    return regularized_beta(df / 2.0, 0.5, df / (df + t * t))


def student_t_cdf(t: float, df: float) -> float:
    tail = student_t_sf_two_sided(t, df) / 2.0
    return 1.0 - tail if t >= 0 else tail


def student_t_quantile(p: float, df: float) -> float:
    """The t with student_t_cdf(t, df) == p, for 0.5 <= p < 1 (bisection to 1e-12)."""
    low, high = 0.0, 1.0
    while student_t_cdf(high, df) < p:
        high *= 2.0
        if high > 1e12:
            return high
    for _ in range(200):
        middle = (low + high) / 2.0
        if student_t_cdf(middle, df) < p:
            low = middle
        else:
            high = middle
        if high - low < 1e-12:
            break
    return (low + high) / 2.0


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson's score interval for a proportion (sane at 0 and at 1, unlike the Wald one)."""
    if trials <= 0:
        return (0.0, 1.0)
    p = successes / trials
    denominator = 1.0 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def two_proportion_z_test(
    successes_a: int, trials_a: int, successes_b: int, trials_b: int
) -> tuple[float, float] | None:
    """(z, two-sided p) of the pooled two-proportion z-test of b against a; None when it is
    undefined (an empty arm, or every trial a success or every one a failure)."""
    if trials_a <= 0 or trials_b <= 0:
        return None
    pooled = (successes_a + successes_b) / (trials_a + trials_b)
    variance = pooled * (1 - pooled) * (1 / trials_a + 1 / trials_b)
    if variance <= 0:
        return None
    z = (successes_b / trials_b - successes_a / trials_a) / math.sqrt(variance)
    return z, math.erfc(abs(z) / math.sqrt(2.0))


def welch_t_test(
    mean_a: float, variance_a: float, n_a: int, mean_b: float, variance_b: float, n_b: int
) -> tuple[float, float, float] | None:
    """(t, degrees of freedom, two-sided p) of Welch's t-test of b against a (sample
    variances); None with fewer than two observations on a side or no variance at all."""
    if n_a < 2 or n_b < 2:
        return None
    se_a, se_b = variance_a / n_a, variance_b / n_b
    if se_a + se_b <= 0:
        return None
    t = (mean_b - mean_a) / math.sqrt(se_a + se_b)
    df = (se_a + se_b) ** 2 / (
        (se_a * se_a / (n_a - 1) if se_a else 0.0) + (se_b * se_b / (n_b - 1) if se_b else 0.0)
    )
    return t, df, student_t_sf_two_sided(t, df)


def mean_interval(mean: float, variance: float, n: int) -> tuple[float, float] | None:
    """The 95% t interval of a mean from `n` observations with sample variance `variance`."""
    if n < 2:
        return None
    half = student_t_quantile(0.975, n - 1) * math.sqrt(variance / n)
    return (mean - half, mean + half)


def percentile(sorted_values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile of already sorted values; None when there are none."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]
