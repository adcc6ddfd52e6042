"""Reward-model over-optimisation: gold and proxy score against sqrt(KL) to the reference policy.

Goodhart's law, measured as in Gao et al. 2022 ("Scaling Laws for Reward Model Overoptimization"):
as a policy is optimised against a learned proxy reward, the proxy keeps rising while the hidden
gold score rises, peaks and falls. Both are plotted against ``d = sqrt(KL(policy || reference))``
for two optimisers of the same proxy:

- best-of-n sampling from the SFT policy, with the analytic KL of ``bon_kl`` and the scores of
  ``best_of_n_scores``, fitted with ``R(d) = d (a - b d)``;
- PPO checkpoints along a run (the caller measures mean sequence KL, gold and proxy), fitted with
  ``R(d) = d (a - b log d)``.

Scores are relative to the SFT policy (``R(0) = 0``). Everything here is pure numpy except
``report``, which also writes ``<prefix>.json`` and ``<prefix>.png`` (matplotlib, Agg canvas,
imported lazily so that importing this module stays cheap).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

KL_NOTE = ("best-of-n KL is the analytic KL_bon(n) = log n - (n - 1)/n nats (Stiennon et al. 2020; "
           "Gao et al. 2022): an upper bound on KL(best-of-n || SFT), exact for a continuous proxy "
           "without ties. RL KL is the measured mean sequence KL of the checkpoint to the reference "
           "policy (negative estimates are clipped to 0 before the square root).")
BON_FORMULA = "R(d) = d * (a - b * d), d = sqrt(KL)"
RL_FORMULA = "R(d) = d * (a - b * ln(d)), d = sqrt(KL)"


# ------------------------------------------------------------------------------------- best-of-n

def bon_kl(n: int) -> float:
    """KL(best-of-n || base) = log n - (n - 1)/n nats, the analytic value used by Gao et al.

    It is exact when the proxy has no ties (the best-of-n density is n F^(n-1) f) and an upper
    bound otherwise, so best-of-n points are never placed at less KL than they spend.
    """
    if int(n) != n or n < 1:
        raise ValueError(f"best-of-n needs an integer n >= 1, got {n!r}")
    return math.log(n) - (n - 1) / n


def max_of_subset_weights(num_samples: int, n: int) -> np.ndarray:
    """P(the sample ranked i-th lowest of N is the maximum of a uniform random n-subset).

    That is C(i-1, n-1) / C(N, n) for i = 1..N (the other n-1 members must all rank below i).
    Exact integer binomials, then one correctly rounded division each.
    """
    if not 1 <= n <= num_samples:
        raise ValueError(f"best-of-n needs 1 <= n <= N = {num_samples} samples per prompt, got n = {n}")
    total = math.comb(num_samples, n)
    return np.array([math.comb(i - 1, n - 1) / total for i in range(1, num_samples + 1)])


def best_of_n_scores(proxy: np.ndarray, gold: np.ndarray, ns: Sequence[int]) -> list[dict]:
    """Expected gold and proxy score of best-of-n (by proxy) for each n, averaged over prompts.

    ``proxy`` and ``gold`` are (num_prompts, N) scores of N >= max(ns) SFT samples per prompt.
    Rather than drawing one n-subset (a noisy, jagged curve), this is the unbiased order-statistics
    estimator of Nakano et al. 2021 / Gao et al. 2022: the expectation over all C(N, n) subsets
    drawn without replacement, computed from the proxy ranks with ``max_of_subset_weights``.
    Proxy ties are broken uniformly at random: tied samples share their gold mean, which is exact.

    Returns one ``{"n", "kl", "sqrt_kl", "gold", "proxy"}`` per n (``kl`` from ``bon_kl``).
    """
    proxy, gold = np.asarray(proxy, dtype=np.float64), np.asarray(gold, dtype=np.float64)
    if proxy.ndim != 2 or proxy.shape != gold.shape:
        raise ValueError(f"proxy and gold must both be (num_prompts, N) arrays, got shapes "
                         f"{proxy.shape} and {gold.shape}")
    if proxy.size == 0 or not (np.isfinite(proxy).all() and np.isfinite(gold).all()):
        raise ValueError("proxy and gold scores must be non-empty and finite")
    order = np.argsort(proxy, axis=1, kind="stable")
    p_sorted = np.take_along_axis(proxy, order, axis=1)
    g_sorted = np.take_along_axis(gold, order, axis=1)
    g_sorted = np.stack([_mean_over_ties(p, g) for p, g in zip(p_sorted, g_sorted)])
    points = []
    for n in ns:
        w = max_of_subset_weights(proxy.shape[1], int(n))
        kl = bon_kl(int(n))
        points.append({"n": int(n), "kl": kl, "sqrt_kl": math.sqrt(kl),
                       "gold": float((g_sorted @ w).mean()), "proxy": float((p_sorted @ w).mean())})
    return points


def _mean_over_ties(p_sorted: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Replace each gold score by the mean gold of the samples sharing its (sorted) proxy value."""
    _, start, counts = np.unique(p_sorted, return_index=True, return_counts=True)
    if len(counts) == len(g):
        return g
    return np.repeat(np.add.reduceat(g, start) / counts, counts)


# ------------------------------------------------------------------------------------------- fits

def fit_bon(d: Sequence[float], r: Sequence[float]) -> tuple[float, float]:
    """Least-squares (a, b) of Gao et al.'s best-of-n form R(d) = d (a - b d) = a d - b d^2.

    Linear in (a, b), so exact least squares; points at d = 0 carry no information (R(0) = 0 by
    construction) and are dropped. NaN, NaN when fewer than two distinct d > 0 remain.
    """
    return _fit(d, r, lambda x: x * x)


def fit_rl(d: Sequence[float], r: Sequence[float]) -> tuple[float, float]:
    """Least-squares (a, b) of Gao et al.'s RL form R(d) = d (a - b log d) = a d - b d log d.

    Same rules as ``fit_bon``. Note d = 1 gives d log d = 0, so two points with one at d = 1 still fit.
    """
    return _fit(d, r, lambda x: x * np.log(x))


def _fit(d: Sequence[float], r: Sequence[float], second) -> tuple[float, float]:
    d, r = np.asarray(d, dtype=np.float64).ravel(), np.asarray(r, dtype=np.float64).ravel()
    if d.shape != r.shape:
        raise ValueError(f"d and r must have the same length, got {d.size} and {r.size}")
    keep = np.isfinite(d) & np.isfinite(r) & (d > 0)
    d, r = d[keep], r[keep]
    x = np.stack([d, -second(d)], axis=1)
    if len(d) < 2 or np.linalg.matrix_rank(x) < 2:
        return math.nan, math.nan
    (a, b), *_ = np.linalg.lstsq(x, r, rcond=None)
    return float(a), float(b)


def bon_curve(d: np.ndarray, a: float, b: float) -> np.ndarray:
    return d * (a - b * d)


def rl_curve(d: np.ndarray, a: float, b: float) -> np.ndarray:
    d = np.asarray(d, dtype=np.float64)
    log_d = np.log(np.where(d > 0, d, 1.0))            # d log d -> 0 as d -> 0
    return d * (a - b * log_d)


def bon_peak(a: float, b: float) -> tuple[float, float]:
    """(d*, R(d*)) of the fitted best-of-n curve: d* = a / (2b), R* = a^2 / (4b); NaN unless b > 0 < a."""
    if not (b > 0 and a > 0):
        return math.nan, math.nan
    return a / (2 * b), a * a / (4 * b)


def rl_peak(a: float, b: float) -> tuple[float, float]:
    """(d*, R(d*)) of the fitted RL curve: R'(d) = a - b (log d + 1) = 0 at d* = exp(a/b - 1), where
    R* = b d*. NaN unless b > 0 (else the curve never turns down)."""
    if not b > 0:
        return math.nan, math.nan
    exponent = a / b - 1
    if exponent > 700:                                  # peak far beyond any KL a run could reach
        return math.inf, math.inf
    peak = math.exp(exponent)
    return peak, b * peak


# ------------------------------------------------------------------------------- over-optimisation

def overoptimization_stats(rl_points: Sequence[dict], tol: float = 0.1) -> dict[str, Any]:
    """The numbers behind ``over_optimized``; see there for the rule. None values with < 3 points."""
    pts = sorted(rl_points, key=lambda p: p["step"])
    k = len(pts)
    stats: dict[str, Any] = {"tol": tol, "num_points": k, "tail_start_step": None,
                             "proxy_gain_last_third": None, "gold_gain_last_third": None,
                             "gold_peak": None, "gold_peak_step": None, "gold_end": None,
                             "gold_drop_from_peak": None, "proxy_gain_since_gold_peak": None,
                             "over_optimized": False}
    if k < 3:
        return stats
    start = min((2 * k) // 3, k - 2)                    # last third, at least two points
    gold = [float(p["gold"]) for p in pts]
    proxy = [float(p["proxy"]) for p in pts]
    peak = int(np.argmax(gold))
    stats.update(tail_start_step=pts[start]["step"],
                 proxy_gain_last_third=proxy[-1] - proxy[start],
                 gold_gain_last_third=gold[-1] - gold[start],
                 gold_peak=gold[peak], gold_peak_step=pts[peak]["step"], gold_end=gold[-1],
                 gold_drop_from_peak=gold[peak] - gold[-1], proxy_gain_since_gold_peak=proxy[-1] - proxy[peak])
    proxy_up = stats["proxy_gain_last_third"] > tol
    gold_not_up = stats["gold_drop_from_peak"] >= tol or stats["gold_gain_last_third"] <= 0
    fell_while_proxy_rose = stats["proxy_gain_since_gold_peak"] > tol and stats["gold_drop_from_peak"] >= tol
    stats["over_optimized"] = bool((proxy_up and gold_not_up) or fell_while_proxy_rose)
    return stats


def over_optimized(rl_points: Sequence[dict], tol: float = 0.1) -> bool:
    """Did the proxy keep rising while the gold score stalled or fell? The Goodhart signature.

    Rule, on the checkpoints sorted by step (each ``{"step", "gold", "proxy"}``), with the last
    third of the run starting at index min(floor(2k/3), k-2) of k points:

        (proxy gain over the last third > tol
         and (gold at the end <= max gold over the run - tol     # fell from its peak
              or gold gain over the last third <= 0))            # stalled
        or (proxy gain since the gold peak > tol                 # the proxy kept climbing after
            and gold at the end <= gold peak - tol)              # gold peaked, and gold fell

    ``tol`` is in score units (gold and proxy share one scale: the proxy is a Bradley-Terry fit to
    labels drawn from the gold score). Fewer than 3 checkpoints: False (no evidence). Differences
    only, so raw or SFT-centred scores give the same answer.
    """
    return overoptimization_stats(rl_points, tol)["over_optimized"]


# ----------------------------------------------------------------------------------------- report

def report(rl_points: Sequence[dict], bon_points: Sequence[dict], path_prefix: str | Path,
           tol: float = 0.1) -> dict[str, Any]:
    """Centre, fit, summarise; write ``<prefix>.json`` and ``<prefix>.png``; return the JSON dict.

    ``rl_points``: ``[{"step", "kl", "gold", "proxy"}]`` for PPO checkpoints (kl = mean sequence KL
    to the reference in nats, gold/proxy raw means). ``bon_points``: from ``best_of_n_scores``.

    Centring (so that R(0) = 0, as the fitted forms assume): the best-of-n curve subtracts its own
    n = 1 point (the SFT mean over all samples); the RL curve subtracts its own step-0 checkpoint
    (the SFT policy, KL = 0). Each curve uses its own baseline so that sampling noise between the
    two evaluations does not shift one curve off the origin. If one curve lacks its baseline point,
    the other curve's baseline is used; the JSON records which (``baseline.*.source``).
    Non-finite numbers are written as null, so the file is standard JSON.
    """
    rl_pts = sorted(rl_points, key=lambda p: p["step"])
    bon_pts = sorted(bon_points, key=lambda p: p["n"])
    rl_base = next(({"source": "rl step 0", "gold": p["gold"], "proxy": p["proxy"]}
                    for p in rl_pts if p["step"] == 0), None)
    bon_base = next(({"source": "best-of-n n=1", "gold": p["gold"], "proxy": p["proxy"]}
                     for p in bon_pts if p["n"] == 1), None)
    rl_base, bon_base = rl_base or bon_base, bon_base or rl_base
    if (rl_pts or bon_pts) and rl_base is None:
        raise ValueError("report needs an SFT baseline: an RL point with step 0 or a best-of-n point "
                         "with n = 1")

    def centred(p: dict, base: dict, **extra) -> dict:
        kl = max(float(p["kl"]), 0.0)
        return {**extra, "kl": float(p["kl"]), "sqrt_kl": math.sqrt(kl),
                "gold": float(p["gold"]) - float(base["gold"]),
                "proxy": float(p["proxy"]) - float(base["proxy"]),
                "gold_raw": float(p["gold"]), "proxy_raw": float(p["proxy"])}

    rl = [centred(p, rl_base, step=p["step"]) for p in rl_pts]
    bon = [centred(p, bon_base, n=p["n"]) for p in bon_pts]

    def fits(points: list[dict], fit, peak, formula: str) -> dict:
        d = [p["sqrt_kl"] for p in points]
        out = {}
        for key in ("gold", "proxy"):
            a, b = fit(d, [p[key] for p in points])
            d_star, r_star = peak(a, b)
            out[key] = {"a": a, "b": b, "formula": formula, "peak_sqrt_kl": d_star, "peak_kl": d_star ** 2,
                        "peak_score": r_star, "peak_within_data": bool(d and d_star <= max(d))}
        return out

    rl_fits = fits(rl, fit_rl, rl_peak, RL_FORMULA)
    bon_fits = fits(bon, fit_bon, bon_peak, BON_FORMULA)
    stats = overoptimization_stats(rl_pts, tol)
    rl_peak_d = rl_fits["gold"]["peak_sqrt_kl"]
    summary = {
        "over_optimized": stats["over_optimized"],
        "over_optimization_rule": "(proxy gain over the last third of the run > tol and (final gold <= "
                                  "peak gold - tol or gold gain over the last third <= 0)) or (proxy gain "
                                  "since the gold peak > tol and final gold <= peak gold - tol)",
        **{k: v for k, v in stats.items() if k != "over_optimized"},
        "rl_gold_fit_peak_sqrt_kl": rl_peak_d,
        "rl_gold_fit_peak": rl_fits["gold"]["peak_score"],
        "rl_past_gold_fit_peak": bool(rl and math.isfinite(rl_peak_d) and rl[-1]["sqrt_kl"] > rl_peak_d),
        "bon_gold_fit_peak_sqrt_kl": bon_fits["gold"]["peak_sqrt_kl"],
        "bon_gold_fit_peak": bon_fits["gold"]["peak_score"],
        "rl_final": ({k: rl[-1][k] for k in ("step", "sqrt_kl", "gold", "proxy")} |
                     {"proxy_minus_gold": rl[-1]["proxy"] - rl[-1]["gold"]}) if rl else None,
        "rl_best_gold": max(({"step": p["step"], "sqrt_kl": p["sqrt_kl"], "gold": p["gold"]} for p in rl),
                            key=lambda p: p["gold"], default=None),
        "bon_best_gold": max(({"n": p["n"], "sqrt_kl": p["sqrt_kl"], "gold": p["gold"]} for p in bon),
                             key=lambda p: p["gold"], default=None),
    }
    result = {
        "x": "sqrt(KL(policy || reference)) in nats^0.5",
        "y": "mean score minus the SFT baseline (gold and proxy on their own scales)",
        "kl_note": KL_NOTE,
        "baseline": {"rl": rl_base, "best_of_n": bon_base},
        "rl": {"points": rl, "fits": rl_fits},
        "best_of_n": {"points": bon, "fits": bon_fits},
        "summary": summary,
        "files": {"json": Path(f"{path_prefix}.json").name, "png": Path(f"{path_prefix}.png").name},
    }
    result = _json_safe(result)
    json_path = Path(f"{path_prefix}.json")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    _plot(rl, bon, rl_fits, bon_fits, summary, Path(f"{path_prefix}.png"))
    return result


def _json_safe(x: Any) -> Any:
    """Plain Python types, with NaN / +-inf as None: ``json.dumps(..., allow_nan=False)`` accepts it."""
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x


# ------------------------------------------------------------------------------------------- plot

BON_COLOR, RL_COLOR = "#1f77b4", "#d62728"


def _plot(rl: list[dict], bon: list[dict], rl_fits: dict, bon_fits: dict, summary: dict, path: Path) -> None:
    """Two panels sharing the y axis: best-of-n (left), PPO (right); gold solid, proxy dashed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.8), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax_bon, ax_rl = fig.subplots(1, 2, sharey=True)
    panels = ((ax_bon, bon, bon_fits, bon_curve, BON_COLOR, 8, "n",
               "Best-of-n from the SFT policy\n(KL = log n - (n-1)/n, analytic upper bound)"),
              (ax_rl, rl, rl_fits, rl_curve, RL_COLOR, 4, "step",
               "PPO checkpoints\n(measured mean sequence KL)"))
    for ax, points, fits, curve, color, most_labels, label_key, title in panels:
        ax.axhline(0, color="0.6", lw=0.8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(r"$\sqrt{\mathrm{KL}(\pi \,\|\, \pi_{\mathrm{ref}})}$  (nats$^{1/2}$)")
        ax.grid(alpha=0.3)
        if not points:
            ax.text(0.5, 0.5, "no points", transform=ax.transAxes, ha="center", color="0.5")
            continue
        d = np.array([p["sqrt_kl"] for p in points])
        grid = np.linspace(0, d.max() * 1.05 if d.max() > 0 else 1.0, 200)
        for key, style, marker in (("gold", "-", "o"), ("proxy", "--", "s")):
            y = [p[key] for p in points]
            ax.plot(d, y, linestyle="none", marker=marker, color=color,
                    mfc=color if key == "gold" else "white", ms=5, label=f"{key} (measured)")
            a, b = fits[key]["a"], fits[key]["b"]
            if math.isfinite(a) and math.isfinite(b):
                ax.plot(grid, curve(grid, a, b), style, color=color, lw=1.8,
                        label=f"{key} fit: a={a:.3g}, b={b:.3g}")
        peak = fits["gold"]["peak_sqrt_kl"]
        if math.isfinite(peak) and peak <= grid[-1]:
            ax.axvline(peak, color=color, ls=":", lw=1.2, label=f"gold fit peak, d*={peak:.2f}")
        for p in _label_subset(points, most_labels):
            ax.annotate(f"{label_key}={p[label_key]}", (p["sqrt_kl"], p["gold"]), xytext=(3, -13),
                        textcoords="offset points", ha="left" if p["sqrt_kl"] == 0 else "center",
                        fontsize=7, color="0.3")
        ax.legend(fontsize=8, loc="best")
    ax_bon.set_ylabel("score relative to SFT")
    verdict = ("proxy rose while gold stalled/fell" if summary["over_optimized"]
               else "no over-optimisation detected")
    fig.suptitle(f"Reward-model over-optimisation, gold (solid) vs proxy (dashed), Gao et al. 2022 fits: "
                 f"{verdict}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def _label_subset(points: list[dict], most: int = 8) -> list[dict]:
    """At most ``most`` evenly spread points to label, so labels stay readable on long runs."""
    if len(points) <= most:
        return points
    return [points[i] for i in np.unique(np.linspace(0, len(points) - 1, most).round().astype(int))]
