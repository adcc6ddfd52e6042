"""Over-optimisation report: analytic best-of-n KL, the order-statistics estimator against brute force,
the Gao et al. fits, the Goodhart rule and the files report() writes."""
import itertools
import json
import math

import numpy as np
import pytest
from PIL import Image

from rlhf.text.overoptimization import (best_of_n_scores, bon_kl, bon_peak, fit_bon, fit_rl,
                                        max_of_subset_weights, over_optimized, overoptimization_stats,
                                        report, rl_curve, rl_peak)


def brute_force_best_of_n(proxy, gold, n):
    """Mean over prompts of the expectation over every n-subset; proxy ties broken uniformly."""
    per_prompt_gold, per_prompt_proxy = [], []
    for p, g in zip(proxy, gold):
        gs, ps = [], []
        for subset in itertools.combinations(range(len(p)), n):
            best = max(p[i] for i in subset)
            winners = [i for i in subset if p[i] == best]
            gs.append(np.mean([g[i] for i in winners]))
            ps.append(best)
        per_prompt_gold.append(np.mean(gs))
        per_prompt_proxy.append(np.mean(ps))
    return float(np.mean(per_prompt_gold)), float(np.mean(per_prompt_proxy))


def test_bon_kl_analytic_values():
    assert bon_kl(1) == 0.0
    assert bon_kl(2) == pytest.approx(math.log(2) - 0.5, abs=1e-15)
    assert bon_kl(64) == pytest.approx(math.log(64) - 63 / 64, abs=1e-15)
    assert all(bon_kl(2 ** k) < bon_kl(2 ** (k + 1)) < math.log(2 ** (k + 1)) for k in range(8))
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="n >= 1"):
            bon_kl(bad)


def test_max_of_subset_weights_are_a_distribution_over_ranks():
    for n_total in (1, 6, 64):
        for n in range(1, n_total + 1):
            w = max_of_subset_weights(n_total, n)
            assert w.sum() == pytest.approx(1.0, abs=1e-12)
            assert (w[: n - 1] == 0).all() and (w[n - 1:] > 0).all()
    with pytest.raises(ValueError, match="1 <= n <= N"):
        max_of_subset_weights(4, 5)


def test_order_statistics_estimator_equals_brute_force_enumeration():
    rng = np.random.default_rng(0)
    proxy, gold = rng.normal(size=(3, 6)), rng.normal(size=(3, 6))
    points = best_of_n_scores(proxy, gold, range(1, 7))
    assert [p["n"] for p in points] == [1, 2, 3, 4, 5, 6]
    for p in points:
        g, q = brute_force_best_of_n(proxy, gold, p["n"])
        assert p["gold"] == pytest.approx(g, abs=1e-12)
        assert p["proxy"] == pytest.approx(q, abs=1e-12)
        assert p["kl"] == bon_kl(p["n"]) and p["sqrt_kl"] == pytest.approx(math.sqrt(bon_kl(p["n"])))
    # n = 1 is the plain mean; n = N is the score of each prompt's proxy argmax
    assert points[0]["gold"] == pytest.approx(gold.mean())
    assert points[0]["proxy"] == pytest.approx(proxy.mean())
    best = proxy.argmax(axis=1)
    assert points[-1]["gold"] == pytest.approx(gold[np.arange(3), best].mean())
    assert points[-1]["proxy"] == pytest.approx(proxy.max(axis=1).mean())


def test_proxy_ties_are_broken_uniformly():
    rng = np.random.default_rng(1)
    proxy = rng.integers(0, 3, size=(4, 6)).astype(float)      # many ties
    gold = rng.normal(size=(4, 6))
    for p in best_of_n_scores(proxy, gold, range(1, 7)):
        g, q = brute_force_best_of_n(proxy, gold, p["n"])
        assert (p["gold"], p["proxy"]) == pytest.approx((g, q), abs=1e-12)


def test_best_of_n_scores_rejects_bad_input():
    with pytest.raises(ValueError, match="1 <= n <= N"):
        best_of_n_scores(np.zeros((2, 4)), np.zeros((2, 4)), [1, 8])
    with pytest.raises(ValueError, match="shapes"):
        best_of_n_scores(np.zeros((2, 4)), np.zeros((2, 5)), [1])
    with pytest.raises(ValueError, match="finite"):
        best_of_n_scores(np.full((2, 4), np.nan), np.zeros((2, 4)), [1])


def test_fits_recover_noiseless_parameters():
    d = np.sqrt([bon_kl(2 ** k) for k in range(7)])             # includes d = 0 (n = 1)
    a, b = fit_bon(d, d * (1.3 - 0.4 * d))
    assert (a, b) == pytest.approx((1.3, 0.4), abs=1e-6)
    d = np.linspace(0, 4, 12)
    a, b = fit_rl(d, rl_curve(d, 0.9, 0.6))
    assert (a, b) == pytest.approx((0.9, 0.6), abs=1e-6)
    a, b = fit_rl(d, rl_curve(d, 1.1, -0.2))                    # no peak: b < 0 is allowed
    assert (a, b) == pytest.approx((1.1, -0.2), abs=1e-6)


def test_fits_with_too_few_points_are_nan():
    for fit in (fit_bon, fit_rl):
        assert all(math.isnan(x) for x in fit([], []))
        assert all(math.isnan(x) for x in fit([0.0, 0.5], [0.0, 1.0]))       # one usable point
        assert all(math.isnan(x) for x in fit([0.5, 0.5], [1.0, 1.1]))       # one distinct d
        assert all(math.isnan(x) for x in fit([0.0, np.nan, 0.7], [0.0, 1.0, 1.0]))


def test_peaks():
    assert bon_peak(1.0, 0.25) == pytest.approx((2.0, 1.0))
    d_star, r_star = rl_peak(1.0, 0.5)
    assert d_star == pytest.approx(math.e) and r_star == pytest.approx(rl_curve(np.array(d_star), 1.0, 0.5))
    grid = np.linspace(0.01, 10, 5000)
    assert d_star == pytest.approx(grid[np.argmax(rl_curve(grid, 1.0, 0.5))], abs=1e-2)
    assert all(math.isnan(x) for x in bon_peak(1.0, -0.1) + rl_peak(1.0, 0.0))


def synthetic_run(gold_ab, proxy_ab, steps=10):
    points = []
    for i in range(steps):
        d = 0.4 * i
        points.append({"step": i * 1000, "kl": d * d, "gold": 2.0 + float(rl_curve(np.array(d), *gold_ab)),
                       "proxy": -1.0 + float(rl_curve(np.array(d), *proxy_ab))})
    return points


def test_over_optimized_rule():
    goodhart = synthetic_run(gold_ab=(1.0, 0.8), proxy_ab=(1.2, 0.05))       # gold peaks at d = e^0.25 ~ 1.28
    healthy = synthetic_run(gold_ab=(0.8, 0.0), proxy_ab=(1.0, 0.0))
    assert over_optimized(goodhart) and over_optimized(goodhart[::-1])         # order by step, not by list
    assert not over_optimized(healthy)
    stalled = [{**p, "gold": 1.0 + min(p["step"], 4000) * 1e-4} for p in healthy]
    assert over_optimized(stalled)
    proxy_flat = [{**p, "proxy": 0.0} for p in goodhart]
    assert not over_optimized(proxy_flat)                                      # nothing was optimised
    assert not over_optimized(goodhart[:2])                                    # too few points
    stats = overoptimization_stats(goodhart)
    assert stats["proxy_gain_last_third"] > 0 > stats["gold_gain_last_third"]
    assert stats["gold_peak_step"] == 3000 and stats["tail_start_step"] == 6000


def test_report_writes_valid_json_and_png(tmp_path):
    rng = np.random.default_rng(2)
    gold = rng.normal(size=(20, 16))
    proxy = gold + rng.normal(size=(20, 16))
    bon = best_of_n_scores(proxy, gold, [1, 2, 4, 8, 16])
    rl = synthetic_run(gold_ab=(1.0, 0.8), proxy_ab=(1.2, 0.05))
    prefix = tmp_path / "eval" / "overoptimization"
    out = report(rl, bon, prefix)

    text = (tmp_path / "eval" / "overoptimization.json").read_text()
    data = json.loads(text)
    assert data == out
    json.dumps(data, allow_nan=False)                                          # standard JSON only
    assert "NaN" not in text and "Infinity" not in text
    assert {"x", "y", "kl_note", "baseline", "rl", "best_of_n", "summary"} <= data.keys()
    assert "log n - (n - 1)/n" in data["kl_note"] and "upper bound" in data["kl_note"]
    for method in ("rl", "best_of_n"):
        assert {"gold", "proxy"} == data[method]["fits"].keys()
        assert {"a", "b", "formula", "peak_sqrt_kl"} <= data[method]["fits"]["gold"].keys()
    assert data["baseline"]["rl"]["source"] == "rl step 0"
    assert data["baseline"]["best_of_n"]["source"] == "best-of-n n=1"
    # centred on SFT: both curves start at 0
    assert data["rl"]["points"][0]["gold"] == 0 and data["best_of_n"]["points"][0]["proxy"] == 0
    assert data["best_of_n"]["points"][0]["gold_raw"] == pytest.approx(gold.mean())
    assert data["rl"]["fits"]["gold"]["a"] == pytest.approx(1.0, abs=1e-6)
    assert data["rl"]["fits"]["gold"]["b"] == pytest.approx(0.8, abs=1e-6)
    summary = data["summary"]
    assert summary["over_optimized"] is True and summary["rl_past_gold_fit_peak"] is True
    assert summary["rl_gold_fit_peak_sqrt_kl"] == pytest.approx(math.exp(1.0 / 0.8 - 1))
    bon_proxy = [p["proxy"] for p in data["best_of_n"]["points"]]
    assert bon_proxy == sorted(bon_proxy)                                       # E[max of n] grows with n

    with Image.open(tmp_path / "eval" / "overoptimization.png") as img:
        img.verify()
    with Image.open(tmp_path / "eval" / "overoptimization.png") as img:
        assert img.format == "PNG" and img.size[0] > 200 and img.size[1] > 200


def test_report_handles_missing_points_with_nulls(tmp_path):
    """No RL checkpoints yet: the RL fit is null, the baseline comes from best-of-n, the file is valid."""
    bon = best_of_n_scores(np.arange(8.0).reshape(2, 4), np.ones((2, 4)), [1, 2, 4])
    data = report([], bon, tmp_path / "oo")
    json.dumps(data, allow_nan=False)
    assert data["rl"]["fits"]["gold"]["a"] is None and data["summary"]["over_optimized"] is False
    rl = [{"step": 100, "kl": 0.5, "gold": 1.5, "proxy": 2.0}]
    data = report(rl, bon, tmp_path / "oo2")
    assert data["baseline"]["rl"]["source"] == "best-of-n n=1"
    assert data["rl"]["points"][0]["gold"] == pytest.approx(0.5)
    assert (tmp_path / "oo2.png").stat().st_size > 0
    with pytest.raises(ValueError, match="baseline"):
        report(rl, [], tmp_path / "oo3")


def test_over_optimized_when_gold_falls_after_its_peak_while_the_proxy_saturates_higher():
    """The KL-free run's shape: gold peaks early and falls; the proxy climbs past its value there, then plateaus."""
    gold = [0.0, 1.8, 1.2, -0.2, -1.0, -1.5, -2.4, -1.9, -0.5, -0.4, -0.4]
    proxy = [0.0, 1.2, 1.5, 1.67, 1.68, 1.69, 1.70, 1.69, 1.72, 1.72, 1.68]
    pts = [{"step": 6 * i, "gold": g, "proxy": p} for i, (g, p) in enumerate(zip(gold, proxy))]
    assert over_optimized(pts)
    both_up = [{"step": i, "gold": 0.1 * i, "proxy": 0.1 * i} for i in range(11)]
    assert not over_optimized(both_up)
