"""Per-request objective weights (CMR's setting): one set of trained models, a sweep from clicks to spend.

The same trained models serve every point: only the objective the requests carry changes, from
``{ipv: 1}`` towards ``{gmv: 1}`` in equal steps (``ipv: 1 - t, gmv: t / price scale``). Beam search,
list ranking (its incumbent, pessimistic choice and local search) and LAST read the weights from
the request; nothing is retrained. Each point reports the true expected PV, IPV, purchases and GMV of
the served lists on held-out requests: the trade-off front one model offers. The models come from
the rerank study's work directory (trained there if missing).

``grn_cmr`` is the GRN conditioned on the weights (CMR: trained once with weights drawn per batch on
the same line from clicks to spend, relist/configs/generator_cmr.yaml), trained into the same models
folder as role ``generator_cmr`` when missing; ``grn`` (trained for clicks alone, it cannot read the
weights) is the reference that shows what conditioning buys.

    python -m benchmarks objective_sweep
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from pydantic import BaseModel, ConfigDict, Field  # noqa: E402

from benchmarks.studies.rerank import ROOT, default_world_models, train_role  # noqa: E402
from relist.data.features import FeatureStore  # noqa: E402
from relist.eval.rerank import LoggedTest, RerankEvalConfig  # noqa: E402
from relist.eval.simulated import true_rewards  # noqa: E402
from relist.io.config import CONFIGS, load_config  # noqa: E402
from relist.objective import Objective  # noqa: E402
from relist.rerank.generators import Context  # noqa: E402
from relist.rerank.registry import Models, build_generators, build_ranking  # noqa: E402
from relist.sim.config import load_sim_config  # noqa: E402
from relist.sim.world import world_of_logs  # noqa: E402
from relist.train.generator import GeneratorTrainConfig, catalogue_price  # noqa: E402


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    world: str = "relist/configs/sim_default.yaml"
    lists: int = 20_000
    seed: int = 0
    points: int = Field(11, ge=2, description="weights from all clicks (t=0) to all spend (t=1)")
    requests: int = Field(500, ge=1)
    split: str = "test"
    policies: list[str] = ["beam", "list_retrieval", "grn", "grn_cmr"]
    cmr_config: str = Field("relist/configs/generator_cmr.yaml", description="how grn_cmr is trained when missing")
    plot: str = "benchmarks/results/objective_sweep.png"


def conditioned_generator(cfg: Config, data: Path, models_dir: Path) -> float | None:
    """Train the conditioned GRN into ``models_dir/generator_cmr`` unless it is there; the seconds it took."""
    shipped = load_config(ROOT / cfg.cmr_config, GeneratorTrainConfig)
    train = shipped.model_copy(update={"train": shipped.train.model_copy(update={"seed": cfg.seed})})
    return train_role(train, data, models_dir, "generator_cmr")


def run(cfg: Config, work: Path) -> dict:
    torch.set_num_threads(1)
    data, models_dir = default_world_models(work, load_sim_config(ROOT / cfg.world), cfg.lists, cfg.seed)
    trained = conditioned_generator(cfg, data, models_dir) if "grn_cmr" in cfg.policies else None
    world, store = world_of_logs(data), FeatureStore.from_dir(data)
    models, _ = Models.load(models_dir, store)
    eval_cfg = load_config(CONFIGS / "rerank_eval.yaml", RerankEvalConfig)
    logged = LoggedTest.read(data, cfg.requests, cfg.split)
    requests, n = logged.requests, eval_cfg.n
    price = catalogue_price(store)  # GMV in clicks' units: spend / mean price (as grn_cmr was trained)
    generators, missing = build_generators([p for p in cfg.policies if p != "list_retrieval"], models,
                                           eval_cfg.rerank)
    if missing:
        raise ValueError(f"{models_dir}: {'; '.join(missing)}")
    valid = LoggedTest.read(data, eval_cfg.valid_requests, "valid").requests
    if "list_retrieval" in cfg.policies:
        generators["list_retrieval"] = build_ranking(models, eval_cfg.rerank, None, (valid, n))[0]
    points = []
    for t in np.linspace(0.0, 1.0, cfg.points):
        objective = Objective.of({"ipv": float(1 - t), "gmv": float(t / price)} if t < 1 else {"gmv": 1.0 / price})
        weights = np.tile(objective.vector(), (len(requests), 1))  # per request, as a client would send them
        ctx = Context(store, eval_cfg.rerank.rules.build(), weights)
        row = {"t": float(t), "objective": objective.weights}
        for name, generator in generators.items():
            lists = generator.propose(requests, n, ctx)[:, 0]
            row[name] = {metric: float(values.mean())
                         for metric, values in true_rewards(world, requests.user_id, lists).items()}
        points.append(row)
        print(f"t={t:.1f}", {name: (round(row[name]["ipv"], 3), round(row[name]["gmv"], 2)) for name in generators},
              flush=True)
    _plot(points, list(generators), ROOT / cfg.plot)
    # what the weights buy: spend and clicks at "all spend" relative to "all clicks", per policy
    front = {name: {"gmv_ratio": points[-1][name]["gmv"] / points[0][name]["gmv"],
                    "ipv_ratio": points[-1][name]["ipv"] / points[0][name]["ipv"]} for name in generators}
    return {"points": points, "front": front, "price_scale": price, "requests": len(requests), "plot": cfg.plot,
            "generator_cmr_trained_s": trained,
            "logging": {metric: float(v.mean()) for metric, v in
                        true_rewards(world, requests.user_id, logged.shown).items()}}


def _plot(points: list[dict], names: list[str], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name in names:
        ipv = [p[name]["ipv"] for p in points]
        gmv = [p[name]["gmv"] for p in points]
        ax.plot(ipv, gmv, "o-", label=name)
        for p, x, y in zip(points, ipv, gmv, strict=True):
            ax.annotate(f"{p['t']:.1f}", (x, y), fontsize=7)
    ax.set_xlabel("true expected IPV per request")
    ax.set_ylabel("true expected GMV per request")
    ax.set_title("one trained model, per-request weights from clicks (0) to spend (1)")
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
