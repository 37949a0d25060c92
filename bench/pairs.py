#!/usr/bin/env python3
"""The alternating pairs of bench/gateway-load.sh, summed up with an exact confidence interval.

A pair is two short runs measured back to back (weir, then the nginx setup, or the other way
round). Its ratio is weir's requests/s over nginx's. The goal is judged on the median of the
ratios; this tells whether that median is above 1.0x, below it, or not distinguishable from it
on this machine.

Why an interval: one pair on a shared 2-core machine moves by 5-15%, so the median of 20
pairs moves by a few percent from run to run. The interval is the distribution-free one for a
median (order statistics, from the binomial distribution with p = 1/2): it assumes only that the
pairs are independent, not that the ratios are normal, and it needs no random resampling, so
the same pairs always give the same interval.

Usage:
  pairs.py summarize TITLE SECONDS   read `weir_rps weir_idle nginx_rps nginx_idle` lines on
                                     stdin (one per pair) and print the summary
  pairs.py pool FILE...              pool the pairs printed by earlier runs of the script
                                     ("pairs, sorted:" lines, in the order they appear: the
                                     first of each file is the goal's)
"""

import math
import statistics
import sys

# The interval's nominal coverage.
LEVEL = 0.95


def median_interval(ratios):
    """The order-statistics interval for the median of `ratios`, and its exact coverage.

    With n sorted values, [x(k), x(n-k+1)] (1-based) covers the population's median with
    probability 1 - 2 P(B <= k-1), B ~ Binomial(n, 1/2). k is the largest rank whose coverage
    is still at least LEVEL. Below 6 values no such k exists; the whole range is returned with
    its own coverage.
    """
    x = sorted(ratios)
    n = len(x)
    if n == 0:
        raise ValueError("no pairs")
    cdf = []
    total = 0.0
    for i in range(n + 1):
        total += math.comb(n, i) / 2**n
        cdf.append(total)
    k = 1
    while k + 1 <= (n + 1) // 2 and 1 - 2 * cdf[k] >= LEVEL:
        k += 1
    coverage = 1 - 2 * cdf[k - 1] if k > 1 else 1 - 2 / 2**n
    return x[k - 1], x[n - k], coverage


def verdict(low, high):
    """What the interval says of the goal (at least 1.0x)."""
    if low >= 1.0:
        return "above 1.0x"
    if high < 1.0:
        return "below 1.0x"
    return "not distinguishable from 1.0x"


def describe(ratios):
    """Median, quartiles, count at 1.0x or more, and the interval with its verdict."""
    r = sorted(ratios)
    q = statistics.quantiles(r, n=4) if len(r) > 1 else [r[0]] * 3
    low, high, coverage = median_interval(r)
    return (
        f"median {statistics.median(r):.3f}x, quartiles {q[0]:.3f}-{q[2]:.3f}, "
        f"{sum(v >= 1 for v in r)} of {len(r)} pairs at 1.0x or more; "
        f"{coverage:.1%} interval of the median {low:.3f}-{high:.3f}: {verdict(low, high)}"
    )


def summarize(title, seconds):
    rows = [[float(v) for v in line.split()] for line in sys.stdin if line.strip()]
    ratios = [a / b for a, _, b, _ in rows]
    print(f"{title}, {len(rows)} alternating pairs of {seconds} s: {describe(ratios)}")
    print("  pairs, sorted: " + " ".join(f"{v:.3f}" for v in sorted(ratios)))
    weir_idle = statistics.median(row[1] for row in rows)
    nginx_idle = statistics.median(row[3] for row in rows)
    print(
        f"  machine idle in the pairs (medians): under weir {weir_idle:.1f}%, "
        f"under nginx {nginx_idle:.1f}%"
    )


def pool(files):
    sets = {}
    for path in files:
        with open(path, encoding="utf-8") as f:
            seen = 0
            for line in f:
                if "pairs, sorted:" in line:
                    ratios = [float(v) for v in line.split(":", 1)[1].split()]
                    sets.setdefault(seen, []).extend(ratios)
                    seen += 1
    if not sets:
        sys.exit("no 'pairs, sorted:' lines in " + " ".join(files))
    names = {0: "weir / nginx limit_req (the goal)", 1: "weir / nginx sending weir's eight fields"}
    for i, ratios in sorted(sets.items()):
        print(f"{names.get(i, f'set {i + 1}')}, {len(files)} run{'s' if len(files) != 1 else ''} pooled: {describe(ratios)}")


def main(argv):
    if len(argv) == 4 and argv[1] == "summarize":
        summarize(argv[2], argv[3])
    elif len(argv) >= 3 and argv[1] == "pool":
        pool(argv[2:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
