"""Off-policy estimates on real logs: the Open Bandit Dataset sample (ZOZOTOWN, 3 positions, ~40-70 clicks a file).

The dataset paper (Saito et al., arXiv:2008.07146) evaluates estimators by estimating, from the logs of the
uniform-random policy, the value of the Bernoulli Thompson sampling (bts) policy, whose on-policy value is
known from its own logs. As far as this sample allows, per campaign (all, men, women):

1. **Replay check** — the policy that wrote the bts logs, as its per-position action frequencies there (the
   time average of a policy that learned as it went; the sample does not carry its parameters), estimated on
   the random logs by IPS and SNIPS, against its on-policy CTR in the bts logs.
2. **A relist policy trained on the bts logs** — greedy by learned CTR: items ranked by their click rate in the
   bts logs, smoothed towards the campaign's mean by one pseudo-click (fixed, not tuned), the top 3 at
   positions 1-3 — estimated on the random logs by IPS, SNIPS, DM (the learned CTR as reward model) and DR.
3. **Greedy by the user-item affinity feature** (no training), the same way.

The sample was drawn row by row, so the 3 items of a page view are not kept together: every row is a
one-slot log (context = user features and position), its propensity the logging policy's probability of the
item at that position. Values are CTR per impression; CIs are 95% percentile bootstrap over rows.

    python -m benchmarks offpolicy_obd
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.table import Table

from benchmarks.common import repo_path
from relist.data.loaders.obd import load_obd
from relist.eval.metrics import mean_ci
from relist.eval.offpolicy import OffPolicyEvaluator, SlateLogs

CAMPAIGNS = ("all", "men", "women")
ESTIMATORS = ["ips", "snips", "dm", "dr"]
console = Console(width=150)


def impressions(path: Path) -> dict[str, np.ndarray]:
    imp = load_obd(path).extra["impressions"]
    return {"item": imp["item_id"].to_numpy(), "position": imp["position"].to_numpy().astype(np.int64),
            "click": imp["click"].to_numpy().astype(np.float64), "propensity": imp["propensity"].to_numpy(),
            "affinity": np.stack(imp["affinity"].to_numpy(zero_copy_only=False))}


def one_slot_logs(rows: dict[str, np.ndarray], n_items: int) -> SlateLogs:
    b = len(rows["item"])
    candidates = np.tile(np.arange(1, n_items + 1), (b, 1))
    return SlateLogs(np.zeros(b, np.int64), candidates, np.zeros(candidates.shape, np.float32),
                     rows["item"][:, None], rows["click"][:, None], rows["propensity"][:, None],
                     rows["propensity"][:, None])


def learned_ctr(bts: dict[str, np.ndarray], n_items: int) -> np.ndarray:
    """Per item id (index 0 unused) the click rate in the bts logs, smoothed by one pseudo-click."""
    prior = bts["click"].mean()
    shows = np.bincount(bts["item"], minlength=n_items + 1)
    clicks = np.bincount(bts["item"], weights=bts["click"], minlength=n_items + 1)
    return (clicks + 1.0) / (shows + 1.0 / prior)


def clopper_pearson(clicks: int, shown: int, level: float = 0.95) -> tuple[float, float]:
    """Exact binomial CI of a click rate (by bisection on the binomial tail): honest with 0 clicks too."""

    def tail(p: float, upto: int) -> float:  # P(X <= upto) for X ~ Binomial(shown, p)
        return sum(math.comb(shown, k) * p ** k * (1 - p) ** (shown - k) for k in range(upto + 1))

    def solve(f) -> float:
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if f(mid) else (lo, mid)
        return (lo + hi) / 2

    alpha = (1 - level) / 2
    low = 0.0 if clicks == 0 else solve(lambda p: 1 - tail(p, clicks - 1) < alpha)
    high = 1.0 if clicks == shown else solve(lambda p: tail(p, clicks) > alpha)
    return low, high


def replay_estimate(rnd: dict[str, np.ndarray], bts: dict[str, np.ndarray], n_items: int, resamples: int,
                    seed: int) -> dict:
    """IPS / SNIPS on the random logs of the bts logs' per-position action frequencies."""
    freq = np.zeros((4, n_items + 1))
    np.add.at(freq, (bts["position"], bts["item"]), 1.0)
    freq /= freq.sum(1, keepdims=True).clip(min=1)
    w = freq[rnd["position"], rnd["item"]] / rnd["propensity"]
    rng = np.random.default_rng(seed)
    b = len(w)
    counts = np.stack([np.bincount(rng.integers(0, b, b), minlength=b) for _ in range(resamples)]).astype(float)
    out = {}
    for name, numer, denom in (("ips", w * rnd["click"], np.ones(b)), ("snips", w * rnd["click"], w)):
        reps = (counts @ numer) / (counts @ denom)
        low, high = np.percentile(reps, [2.5, 97.5])
        out[name] = {"value": float(numer.sum() / denom.sum()), "ci95": (float(low), float(high)),
                     "ess": float(w.sum() ** 2 / (w ** 2).sum())}
    return out


def replay_covers(row: dict, estimator: str) -> bool:
    """Whether the estimate's 95% CI of the bts policy holds bts's own on-policy CTR: the dataset paper's check."""
    low, high = row["estimates"][estimator]["ci95"]
    return bool(low <= row["truth"]["mean"] <= high)


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: str = Field("../shared/data/obd_zozotown_sample", description="the sample (bts/ and random/ folders)")
    campaigns: list[str] = list(CAMPAIGNS)
    resamples: int = Field(1000, ge=10, description="bootstrap resamples for the CIs")
    seed: int = 0


def run(cfg: Config, work: Path) -> dict:
    data = repo_path(cfg.data)
    results = {}
    table = Table(title="Open Bandit Dataset sample: CTR per impression (%), estimated on the random logs",
                  caption="[95% bootstrap CI]; truth of the replay row: bts's own on-policy CTR")
    for column in ("campaign", "policy", "on-policy truth", *ESTIMATORS, "ESS"):
        table.add_column(column, justify="left" if column in ("campaign", "policy") else "right")
    for campaign in cfg.campaigns:
        bts, rnd = (impressions(data / policy / f"{campaign}.csv.gz") for policy in ("bts", "random"))
        n_items = rnd["affinity"].shape[1]
        ctr = learned_ctr(bts, n_items)
        logs = one_slot_logs(rnd, n_items)

        def click_model(user_ids, cand_ids, cand_scores, lists, ctr=ctr):
            return ctr[lists]

        evaluator = OffPolicyEvaluator(logs, click_model, resamples=cfg.resamples, seed=cfg.seed)
        ranked = np.argsort(-ctr[1:], kind="stable")[:3] + 1  # the top 3 items, best at position 1
        by_affinity = np.argsort(-rnd["affinity"], axis=1, kind="stable")[:, :3] + 1
        targets = {"greedy_learned_ctr": ranked[rnd["position"] - 1][:, None],
                   "greedy_affinity": by_affinity[np.arange(len(by_affinity)), rnd["position"] - 1][:, None]}
        bts_mean, bts_half = mean_ci(bts["click"])
        rnd_mean, rnd_half = mean_ci(rnd["click"])
        rows = {"bts_replay": {"truth": {"mean": bts_mean, "ci95": bts_half},
                               "estimates": replay_estimate(rnd, bts, n_items, cfg.resamples, cfg.seed)}}
        for name, target in targets.items():
            matched = (logs.shown == target)[:, 0]
            clicks = int(rnd["click"][matched].sum())
            rows[name] = {"estimates": {k: e.as_dict() for k, e in evaluator.estimate(target, ESTIMATORS).items()},
                          "matched_rows": int(matched.sum()), "matched_clicks": clicks,
                          # uniform logging: SNIPS is the matched rows' CTR, so its exact binomial CI applies
                          "snips_exact_ci95": clopper_pearson(clicks, int(matched.sum()))}
        results[campaign] = {
            "rows": {"bts": len(bts["item"]), "random": len(rnd["item"])},
            "clicks": {"bts": int(bts["click"].sum()), "random": int(rnd["click"].sum())},
            "on_policy": {"bts": {"mean": bts_mean, "ci95": bts_half}, "random": {"mean": rnd_mean, "ci95": rnd_half}},
            "learned_top3": ranked.tolist(), "policies": rows,
            "replay_snips_covers_truth": replay_covers(rows["bts_replay"], "snips")}
        for name, row in rows.items():
            truth = f"{100 * row['truth']['mean']:.2f} ±{100 * row['truth']['ci95']:.2f}" if "truth" in row else "-"
            cells = [f"{100 * row['estimates'][e]['value']:.2f} [{100 * row['estimates'][e]['ci95'][0]:.2f}, "
                     f"{100 * row['estimates'][e]['ci95'][1]:.2f}]" if e in row["estimates"] else "-"
                     for e in ESTIMATORS]
            table.add_row(campaign, name, truth, *cells, f"{row['estimates']['ips']['ess']:.0f}")
            if "snips_exact_ci95" in row:
                low, high = row["snips_exact_ci95"]
                table.add_row("", f"  {row['matched_clicks']} clicks in {row['matched_rows']} matched rows", "",
                              "", f"exact [{100 * low:.2f}, {100 * high:.2f}]", "", "", "")
        table.add_row(campaign, "uniform random (on-policy)", f"{100 * rnd_mean:.2f} ±{100 * rnd_half:.2f}",
                      *["" for _ in ESTIMATORS], "")
    console.print(table)
    return {"data": str(data), "resamples": cfg.resamples, "value": "CTR per impression",
            "protocol": "estimate on the random logs; the bts replay row is checked against bts's on-policy CTR",
            "campaigns": results}
