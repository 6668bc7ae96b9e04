"""`relist eval offpolicy`: every re-ranking policy's value estimated from logs alone, with CIs.

The estimators are relist.eval.offpolicy; this module runs them on a log directory with propensities
for the policies the trained models allow, adds the simulator's true value when the logs are simulated,
and summarises how well each estimator did (bias, CI coverage over policies, Kendall's tau of the
policy ranking). Which estimator to believe on logs without a simulator is what the validity study
(``python -m benchmarks offpolicy_validity``) decided: :data:`TRUSTED`, for the reason in :data:`TRUST_REASON`.

The two functions that touch the re-ranking code — :func:`policy_lists` and :func:`evaluator_click_model`
— are the only places that know how policies and the evaluator are built.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.table import Table

from relist.data.logs import read_lists, split_path
from relist.data.requests import Requests
from relist.data.schema import SchemaError, has_propensities, validate
from relist.eval.metrics import mean_ci
from relist.eval.offpolicy import ESTIMATORS, REWARDS, OffPolicyEvaluator, RankGram, RewardModel, SlateLogs

TRUSTED = "dr"
TRUST_REASON = (
    "doubly robust (the evaluator plus per-slot independent weights) had the smallest error of the weighted "
    "estimators on 3 of 4 simulated worlds and, on the alternative world, a 95% CI covering 94% of 16 policies "
    "with Kendall's tau 0.82 (benchmarks/results/offpolicy_validity.json). It does NOT reach that on the default "
    "world (coverage 38%, tau 0.38): there strong category fatigue makes a slot's reward depend on the items "
    "before it, which its weights ignore and the evaluator does not model well enough to correct, so it "
    "underestimates rule-keeping policies by 12-44%. Whole-list and prefix estimators (ips, rips) have effective "
    "sample sizes of 0-15 for policies unlike the logging policy. Distrust estimates flagged for low ESS and "
    "cross-check with sniips, which needs no model")
LOGGING = "logging"


class OffPolicyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    split: str = Field("test", description="which split of the logs is evaluated")
    requests: int | None = Field(20_000, ge=2, description="the first requests of the split (None: all)")
    reward: str = Field("ipv", description=f"per-slot reward whose sum is estimated: one of {REWARDS}")
    estimators: tuple[str, ...] = Field(tuple(ESTIMATORS), description="estimators to run (when possible)")
    resamples: int = Field(500, ge=10, description="bootstrap resamples of the logged requests")
    seed: int = Field(0, ge=0, description="seed of the bootstrap")
    min_ess: float = Field(100.0, ge=0, description="below this effective sample size an estimate is flagged")


def logs_have_propensities(data_dir: str | Path, split: str = "test") -> bool:
    """Whether a log directory's split declares the propensity family (reads the schema only)."""
    import pyarrow.dataset as ds

    return has_propensities(ds.dataset(split_path(data_dir, split), format="parquet").schema)


def read_slate_logs(data_dir: str | Path, cfg: OffPolicyConfig) -> tuple[SlateLogs, Requests]:
    """The split's requests and what the estimators read; logs without propensities are refused."""
    table = read_lists(data_dir, cfg.split, cfg.requests)
    path = split_path(data_dir, cfg.split)
    if not has_propensities(table):
        raise SchemaError(path, None, "propensity", "these logs carry no propensities, so no off-policy estimate "
                          "is possible; only model-based scores (evaluator LR, NDCG on logged clicks) are")
    validate(table, "lists", path, propensities=True)
    return SlateLogs.from_table(table, cfg.reward), Requests.from_table(table)


def simulator_gram(data_dir: str | Path) -> RankGram | None:
    """The pseudo-inverse estimator's Γ for simulated logs (their logging policy is in sim_config.yaml).

    The main policy's Γ is exact; a random bucket's part is taken as a uniformly random list without the
    category rule (an approximation: the rule makes same-category neighbours impossible).
    """
    from relist.sim.propensity import greedy_pairwise, greedy_ranks, uniform_pairwise
    from relist.sim.world import is_simulated

    if not is_simulated(data_dir):
        return None
    from relist.sim.config import load_sim_config

    logging = load_sim_config(Path(data_dir) / "sim_config.yaml").logging
    eps, share = logging.exploration, logging.random_bucket.share

    def gram(m: int, n: int) -> np.ndarray:
        main = greedy_pairwise(m, n, eps)
        return main if share == 0 else (1 - share) * main + share * uniform_pairwise(m, n)

    return RankGram(gram, lambda logs: greedy_ranks(logs.cand_scores, logs.mask))


def evaluator_click_model(scorer) -> RewardModel:
    """relist's evaluator as a reward model: per position, the members' mean P(click | seen) × P(seen)."""

    def click_model(user_ids, cand_ids, cand_scores, lists) -> np.ndarray:
        requests = Requests.from_arrays(np.arange(len(lists)), user_ids, cand_ids, cand_scores)
        return np.asarray(scorer.terms(requests, np.asarray(lists))[..., 1].mean(0))

    return click_model


def load_click_model(data_dir: str | Path, models_dir: str | Path) -> RewardModel | None:
    """The trained evaluator under ``models_dir/evaluator`` as a reward model (None when there is none)."""
    from relist.data.features import FeatureStore
    from relist.rerank.registry import Models

    models, _ = Models.load(models_dir, FeatureStore.from_dir(data_dir), ("ranker", "evaluator"))
    return evaluator_click_model(models.evaluator) if models.evaluator is not None else None


def policy_lists(data_dir: str | Path, models_dir: str | Path, requests: Requests, shown: np.ndarray,
                 rerank_config: str | Path | None = None, skip: tuple[str, ...] = ()
                 ) -> tuple[dict[str, np.ndarray], list[str]]:
    """Each policy's lists [B, n] on the logged requests (but those named in ``skip``), and what was skipped."""
    from relist.data.features import FeatureStore
    from relist.eval.rerank import LoggedTest, RerankEvalConfig, build_policies, serve
    from relist.io.config import CONFIGS, load_config
    from relist.rerank.registry import Models

    cfg = load_config(rerank_config or CONFIGS / "rerank_eval.yaml", RerankEvalConfig)
    cfg = cfg.model_copy(update={"n": shown.shape[1], "requests": len(requests)})
    models, missing = Models.load(models_dir, FeatureStore.from_dir(data_dir))
    policies, skipped, _ = build_policies(cfg, data_dir, models)
    skipped = missing + skipped + [f"{name}: not asked for" for name in policies if name in skip]
    policies = {name: policy for name, policy in policies.items() if name not in skip}
    served = serve(policies, LoggedTest(requests, shown, np.zeros_like(shown)), models, cfg)
    return {name: lists for name, lists in served.lists.items() if name != LOGGING}, skipped


def estimate_policies(evaluator: OffPolicyEvaluator, lists: dict[str, np.ndarray],
                      estimators: tuple[str, ...], min_ess: float = 100.0,
                      truth: dict[str, np.ndarray] | None = None) -> dict:
    """Per policy: every estimate (value, CI, ESS, vs logging) and, when known, the true value."""
    rows = {}
    for name, target in lists.items():
        row = {"estimates": {k: e.as_dict() | {"low_ess": e.ess < min_ess}
                             for k, e in evaluator.estimate(target, list(estimators)).items()}}
        if truth is not None:
            mean, half = mean_ci(truth[name])
            row["truth"] = {"mean": mean, "ci95": half}
        rows[name] = row
    return rows


def kendall_tau(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's tau-b of two score vectors (ties count as neither concordant nor discordant)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    i, j = np.triu_indices(len(x), 1)
    dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    denom = np.sqrt((dx != 0).sum() * (dy != 0).sum())
    return float((dx * dy).sum() / denom) if denom > 0 else float("nan")


def validity(rows: dict) -> dict:
    """Per estimator, over the policies with a true value: bias, CI coverage, Kendall's tau, ESS."""
    names = [name for name, row in rows.items() if "truth" in row]
    estimators = sorted({k for name in names for k in rows[name]["estimates"]}, key=list(ESTIMATORS).index)
    out = {}
    for est in estimators:
        have = [name for name in names if est in rows[name]["estimates"]]
        truth = np.array([rows[name]["truth"]["mean"] for name in have])
        cells = [rows[name]["estimates"][est] for name in have]
        value = np.array([c["value"] for c in cells])
        low, high = np.array([c["ci95"] for c in cells]).T
        error = value - truth
        covered = (low <= truth) & (truth <= high)
        trusted = np.array([not c["low_ess"] for c in cells])
        out[est] = {
            "policies": len(have), "bias": float(error.mean()), "mean_abs_error": float(np.abs(error).mean()),
            "mean_abs_rel_error": float(np.mean(np.abs(error) / truth)), "rmse": float(np.sqrt(np.mean(error ** 2))),
            "coverage": float(np.mean(covered)),
            "policies_not_flagged": int(trusted.sum()),  # effective sample size >= min_ess
            "coverage_not_flagged": float(np.mean(covered[trusted])) if trusted.any() else float("nan"),
            "kendall_tau": kendall_tau(value, truth),
            "mean_rel_ci_width": float(np.mean((high - low) / truth)),
            "median_ess": float(np.median([c["ess"] for c in cells])),
            "mean_matched": float(np.mean([c["matched"] for c in cells])),
        }
    return out


def evaluate_offpolicy(cfg: OffPolicyConfig, data_dir: str | Path, models_dir: str | Path,
                       rerank_config: str | Path | None = None) -> dict:
    """Every policy the models in ``models_dir`` allow, estimated from the logs of ``data_dir``.

    Simulated logs are judged by the simulator's true reward too (and the estimators by it).
    """
    from relist.eval.simulated import true_rewards
    from relist.sim.world import is_simulated, world_of_logs

    logs, requests = read_slate_logs(data_dir, cfg)
    lists, skipped = policy_lists(data_dir, models_dir, requests, logs.shown, rerank_config)
    click_model = load_click_model(data_dir, models_dir) if cfg.reward == "ipv" else None  # it predicts clicks
    evaluator = OffPolicyEvaluator(logs, click_model, simulator_gram(data_dir), cfg.resamples, cfg.seed)
    for name in cfg.estimators:
        if (reason := evaluator.missing(name)) is not None:
            skipped.append(f"estimator {name}: {reason}")
    truth = None
    world = world_of_logs(data_dir) if is_simulated(data_dir) else None
    if world is not None and cfg.reward in ("ipv", "pv", "buys"):
        truth = {name: true_rewards(world, requests.user_id, target)[cfg.reward] for name, target in lists.items()}
    rows = estimate_policies(evaluator, lists, cfg.estimators, cfg.min_ess, truth)
    logged_mean, logged_half = mean_ci(logs.list_reward)
    report = {
        "data": str(data_dir), "models": str(models_dir), "config": cfg.model_dump(mode="json"),
        "requests": len(logs), "list_len": int(logs.shown.shape[1]), "reward": cfg.reward,
        "trusted": TRUSTED, "trust_reason": TRUST_REASON, "truth": truth is not None,
        "logging": {"mean": logged_mean, "ci95": logged_half}, "policies": rows, "skipped": skipped,
    }
    if truth is not None:
        report["validity"] = validity(rows)
    return report


def headline(report: dict) -> dict[str, dict]:
    """Per policy the trusted estimator's estimate (what a team without a simulator should read)."""
    return {name: row["estimates"][report["trusted"]] for name, row in report["policies"].items()
            if report["trusted"] in row["estimates"]}


def print_offpolicy_report(report: dict, console: Console | None = None) -> None:
    console = console or Console()
    trusted = report["trusted"]
    table = Table(title=f"Off-policy estimate of {report['reward'].upper()} per request, from logs alone "
                        f"({report['requests']} logged requests)",
                  caption=f"headline: {trusted} (mean, 95% CI, change vs logging); ! = effective sample size "
                          f"below {report['config']['min_ess']:.0f}")
    table.add_column("policy")
    if report["truth"]:
        table.add_column("true value", justify="right")
    table.add_column(f"{trusted} estimate", justify="right")
    table.add_column("vs logging", justify="right")
    table.add_column("ESS", justify="right")
    logging = report["logging"]
    table.add_row(LOGGING, *([f"{logging['mean']:.3f}"] if report["truth"] else []),
                  f"{logging['mean']:.3f} ±{logging['ci95']:.3f} (on-policy)", "", "")
    for name, row in report["policies"].items():
        cell = row["estimates"].get(trusted)
        truth = [f"{row['truth']['mean']:.3f}"] if report["truth"] else []
        if cell is None:
            table.add_row(name, *truth, "-", "-", "-")
            continue
        lo, hi = cell["vs_logging_ci95"]
        table.add_row(name, *truth, f"{cell['value']:.3f} [{cell['ci95'][0]:.3f}, {cell['ci95'][1]:.3f}]",
                      f"{100 * cell['vs_logging']:+.1f}% [{100 * lo:+.0f}, {100 * hi:+.0f}]",
                      f"{cell['ess']:.0f}{' !' if cell['low_ess'] else ''}")
    console.print(table)
    if "validity" in report:
        print_validity(report["validity"], "Estimator validity on these logs (vs the simulator's truth)", console)
    console.print(f"trusted estimator: {trusted} — {report['trust_reason']}")
    for line in report.get("skipped", []):
        console.print(f"[yellow]skipped[/yellow] {line}")


def print_validity(summary: dict, title: str, console: Console | None = None) -> None:
    table = Table(title=title, caption="coverage: share of policies whose true value is inside the 95% CI; "
                                       "tau: Kendall's tau of the estimated vs the true policy ranking")
    for column in ("estimator", "bias", "|rel. error|", "coverage", "tau", "rel. CI width", "median ESS",
                   "coverage, ESS ok"):
        table.add_column(column, justify="left" if column == "estimator" else "right")
    for name, s in summary.items():
        table.add_row(name, f"{s['bias']:+.3f}", f"{100 * s['mean_abs_rel_error']:.1f}%",
                      f"{100 * s['coverage']:.0f}%", f"{s['kendall_tau']:+.2f}", f"{100 * s['mean_rel_ci_width']:.0f}%",
                      f"{s['median_ess']:.0f}",
                      f"{100 * s['coverage_not_flagged']:.0f}% of {s['policies_not_flagged']}"
                      if s["policies_not_flagged"] else "-")
    (console or Console()).print(table)
