"""Per-request objective weights (CMR's setting): one set of trained models swept from clicks to spend.

Only the objective the requests carry changes, from ``{ipv: 1}`` towards ``{gmv: 1}`` in equal steps
(``ipv: 1 - t, gmv: t / mean price``, so both terms count in clicks' units); nothing is retrained.
Beam search, list ranking and LAST read the weights from the request, and the GRN conditioned on them
(``grn_cmr``) reads them as an input. Each point is the true expected PV, IPV, purchases and GMV of
every generator's lists: the trade-off front the same models offer (simulated logs only).
"""

from __future__ import annotations

import numpy as np

from relist.data.features import FeatureStore, catalogue_price
from relist.data.requests import Requests
from relist.eval.simulated import true_rewards
from relist.objective import Objective
from relist.rerank.generators import Context, Generator
from relist.rerank.rules import BusinessRules
from relist.sim.world import World


def sweep_objective(t: float, price: float) -> Objective:
    """The point ``t`` of the line from all clicks (0) to all spend (1), spend in clicks' units."""
    return Objective.of({"ipv": float(1 - t), "gmv": float(t / price)} if t < 1 else {"gmv": 1.0 / price})


def objective_sweep(world: World, store: FeatureStore, generators: dict[str, Generator], requests: Requests,
                    n: int, rules: BusinessRules, points: int = 11) -> dict:
    """Each generator's true PV/IPV/buys/GMV at ``points`` weights from clicks to spend (``points``), and what
    moving from one end to the other buys (``front``: GMV and IPV at t = 1 over t = 0)."""
    price = catalogue_price(store)
    rows = []
    for t in np.linspace(0.0, 1.0, points):
        objective = sweep_objective(float(t), price)
        ctx = Context(store, rules, np.tile(objective.vector(), (len(requests), 1)))  # per request, as sent
        row = {"t": float(t), "objective": objective.weights}
        for name, generator in generators.items():
            lists = generator.propose(requests, n, ctx)[:, 0]
            row[name] = {metric: float(values.mean())
                         for metric, values in true_rewards(world, requests.user_id, lists).items()}
        rows.append(row)
    front = {name: {"gmv_ratio": rows[-1][name]["gmv"] / rows[0][name]["gmv"],
                    "ipv_ratio": rows[-1][name]["ipv"] / rows[0][name]["ipv"]} for name in generators}
    return {"points": rows, "front": front, "price_scale": price, "requests": len(requests)}
