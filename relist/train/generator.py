"""Training the GRN by policy gradient against a frozen evaluator ensemble.

Each request gets K sampled lists. Slot t of a list earns a reward from the evaluator (a
ListScorer), never from the simulator, in the units of the configured objective:

* ``self``: the item's own share of the list's value (its click probability there times its
  predicted exposure, for IPV);
* ``advantage``: self reward + differential reward, the change the item causes in the other
  items' shares. Together that is value(list) - value(list without the item), where "without"
  removes the item and lets the items after it move up one slot, the freed last slot left empty.

Every member of the ensemble gives its own reward; a slot is paid the members' mean minus
``beta`` standard deviations, so the generator is not paid for what only some members believe —
the lists unlike the logged ones where the evaluator is unsure. A behaviour term keeps it near
lists the logs or a safe policy vouch for: with ``imitation > 0`` the loss also raises the
log-probability of the request's reference list, weighted by ``imitation``: greedy by upstream
score (the logging policy's own choice), greedy by the fine-ranking teacher's CTR, or beam search over
the teacher's click, scroll and purchase probabilities under the batch's objective (``imitate``).
The baseline of a slot is the mean reward of that slot over the request's K samples.

A GRN conditioned on the objective (``model.conditioned``; CMR, "Controllable Multi-Objective
Re-ranking") is trained with the objective drawn per batch (:class:`ObjectiveDraws`): the drawn
weights are both the model's input and what the reward values, so one model learns every mix. A
draw depends only on (seed, epoch, step, rank), as exact resume needs. Rewards are rescaled per
batch so that a typical list is worth as much under the drawn weights as under ``objective``:
every draw then pulls with the same strength, and ``imitation`` keeps its meaning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from relist.data.features import FeatureStore, catalogue_price
from relist.data.logs import logged_requests, split_path, upstream_score_sample
from relist.data.padding import PAD_ID
from relist.data.requests import Requests
from relist.data.stream import ParquetStream
from relist.io.config import ConfigError
from relist.io.train_config import TrainConfig
from relist.models.generator import GRN, SPEC_FILE, GeneratorSpec, GRNConfig, chosen_items
from relist.models.inputs import list_inputs
from relist.models.ranking.scoring import probabilities
from relist.models.vocab import Vocab
from relist.objective import OBJECTIVES, Name, Objective
from relist.rerank.baselines import GreedyCTR
from relist.rerank.beam import Beam
from relist.rerank.generators import Context, Generator
from relist.rerank.grn import rules_hook
from relist.rerank.list_scorer import ListScorer, teacher_prior
from relist.rerank.policy import GreedyUpstreamScore
from relist.rerank.rules import BusinessRules, RulesConfig
from relist.train.distributed import save_on_rank0
from relist.train.model_folder import builds_model_folder
from relist.train.trainer import FitResult, fit, to_device

CONFIG_FILE = "generator_train.yaml"
Reward = Literal["advantage", "self"]
REQUEST_COLUMNS = ("request_id", "user_id", "candidates", "cand_scores")


class ObjectiveDraws(BaseModel):
    """How a conditioned GRN's training draws each batch's objective weights.

    ``line``: t ~ Uniform[0, 1] on the line from ``start`` (t = 0) to ``end`` (t = 1), weights
    ``(1 - t) start + t end``; ``dirichlet``: shares ~ Dirichlet(``alpha``) over ``over``. With
    ``price_scaled`` a gmv weight is divided by the catalogue's mean price (spend in clicks' units,
    as ``python -m benchmarks objective_sweep`` sends it: ``{gmv: 1}`` then means 1 / price).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["line", "dirichlet"] = "line"
    start: Objective = Field(Objective.of("ipv"), description="line: the weights at t = 0")
    end: Objective = Field(Objective.of("gmv"), description="line: the weights at t = 1")
    over: list[Name] = Field(["ipv", "gmv"], min_length=2, description="dirichlet: the objectives mixed")
    alpha: float = Field(1.0, gt=0, description="dirichlet: concentration (1: uniform over the simplex)")
    price_scaled: bool = Field(True, description="divide gmv weights by the catalogue's mean price")
    valid_points: int = Field(3, ge=1, description="line: fixed t's in [0, 1] whose mean value picks the "
                                                  "checkpoint (dirichlet: each objective alone and the centre)")

    def draw(self, seed: int, epoch: int, step: int, rank: int = 0, price: float = 1.0) -> np.ndarray:
        """The weights [4] of one batch: a pure function of (seed, epoch, step, rank)."""
        rng = np.random.default_rng([seed, epoch, step, rank])
        if self.kind == "line":
            return self._line(rng.uniform(), price)
        shares = rng.dirichlet(np.full(len(self.over), self.alpha))
        return self._priced(self._on(self.over, shares), price)

    def valid_weights(self, price: float = 1.0) -> np.ndarray:
        """The fixed weight points [P, 4] validation values the greedy lists under."""
        if self.kind == "line":
            ts = np.linspace(0.0, 1.0, self.valid_points) if self.valid_points > 1 else np.array([0.5])
            return np.stack([self._line(t, price) for t in ts])
        k = len(self.over)
        points = [*np.eye(k), np.full(k, 1.0 / k)]
        return np.stack([self._priced(self._on(self.over, p), price) for p in points])

    def _line(self, t: float, price: float) -> np.ndarray:
        return self._priced((1 - t) * self.start.vector() + t * self.end.vector(), price)

    @staticmethod
    def _on(names: list[str], shares: np.ndarray) -> np.ndarray:
        weights = np.zeros(len(OBJECTIVES))
        weights[[OBJECTIVES.index(name) for name in names]] = shares
        return weights

    def _priced(self, weights: np.ndarray, price: float) -> np.ndarray:
        if self.price_scaled:
            weights = weights.copy()
            weights[OBJECTIVES.index("gmv")] /= price
        return weights


class GeneratorTrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: GRNConfig = GRNConfig()
    train: TrainConfig = TrainConfig(batch_size=64, monitor="value", monitor_mode="max")
    reward: Reward = Field("advantage", description="advantage: self + differential reward; self: ablation")
    objective: Objective = Field(Objective(), description="what the reward values")
    beta: float = Field(1.0, ge=0, description="pessimism: a slot's reward is the members' mean - beta x std")
    imitation: float = Field(0.1, ge=0, description="weight of the reference list's log-likelihood (behaviour "
                                                   "term); 0: pure policy gradient")
    imitate: Literal["greedy_upstream_score", "greedy_ctr", "beam"] = Field(
        "greedy_upstream_score", description="the reference: the logging policy's own choice, greedy by the "
                                             "teacher's CTR, or beam search over the teacher's scores under the "
                                             "batch's objective (the last two need the ranker the evaluator reads)")
    samples: int = Field(8, ge=2, description="lists sampled per request (their mean is the baseline)")
    temperature: float = Field(1.0, gt=0, description="sampling temperature during training")
    rules: RulesConfig = RulesConfig()
    valid_requests: int = Field(
        2000, ge=1, description="valid requests whose greedy lists' pessimistic value picks the checkpoint"
    )
    draws: ObjectiveDraws = Field(ObjectiveDraws(), description="model.conditioned: how each batch's objective "
                                                                "weights are drawn")


class SampledGRN(GRN):
    """The GRN as the trainer calls it: ``predict(batch)`` samples K lists per request under the rules, pays
    each pick its pessimistic reward from the frozen evaluator, and scores the batch's ``reference`` lists
    (teacher-forced) when it has them; ``loss`` adds the behaviour term to the GRN's REINFORCE. Given
    decoding options it decodes as a plain GRN (validation's greedy lists).

    A subclass rather than a wrapper, so checkpoints load straight into a plain GRN.
    """

    def __init__(self, vocab: Vocab, cfg: GeneratorTrainConfig, scorer: ListScorer):
        super().__init__(vocab, cfg.model)
        self.samples, self.temperature, self.rules = cfg.samples, cfg.temperature, cfg.rules.build()
        self.imitation = cfg.imitation
        self.pay = pick_rewards(scorer, cfg)  # a function, not a module: the evaluator is not saved with the GRN

    def predict(self, batch: dict[str, Tensor], *args, **options) -> dict[str, Tensor]:
        if args or options:
            return super().predict(batch, *args, **options)
        hook = rules_hook(self.rules, batch)
        out = super().predict(batch, samples=self.samples, temperature=self.temperature, allowed_fn=hook)
        with torch.no_grad():
            out["step_rewards"], out["reward_spread"] = self.pay(out["choice"], batch)
        if "reference" in batch:
            forced = super().predict(batch, batch["reference"].shape[-1], samples=1, allowed_fn=hook,
                                     forced=batch["reference"])
            out["reference_step_logp"] = forced["step_logp"][:, 0]
        return out

    def loss(self, out: dict[str, Tensor], batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The GRN's REINFORCE plus ``imitation`` x the reference lists' negative log-likelihood."""
        terms = super().loss(out, batch) | {"spread": out["reward_spread"]}
        if "reference_step_logp" in out:
            step = out["reference_step_logp"]
            allowed = step > -1e6  # a reference slot the rules (as decoded) refuse is not imitated
            imitation = -(step * allowed).sum(-1).mean()
            terms["loss"] = terms["loss"] + self.imitation * imitation
            terms["imitation_nll"] = imitation
        return terms


def requests_of(batch: dict[str, Tensor]) -> Requests:
    """The requests a training batch was made from (the scorer reads them)."""
    candidates = batch["candidates"].cpu().numpy()
    return Requests(batch["request_id"].cpu().numpy(), batch["user_id"].cpu().numpy(), candidates,
                    batch["cand_scores"].cpu().numpy(), candidates != PAD_ID)


def without_each(lists: Tensor) -> Tensor:
    """[N, n] -> [N, n, n]: row t is the list with slot t removed, later items moved up, PAD_ID last."""
    n = lists.shape[1]
    keep = torch.arange(n).expand(n, n)
    index = torch.stack([torch.cat([keep[t, :t], keep[t, t + 1 :], torch.tensor([n])]) for t in range(n)])
    padded = torch.cat([lists, torch.zeros_like(lists[:, :1])], 1)
    return padded[:, index.to(lists.device)]


def step_rewards(scorer: ListScorer, requests: Requests, lists: Tensor, reward: Reward,
                 objective: Objective | Tensor = Objective(), rows: np.ndarray | None = None) -> Tensor:
    """Every member's reward of every slot of lists [N, n] of ``requests[rows]`` (default: one list per
    request): [E, N, n], 0 at empty slots. ``objective``: one for all lists, or weights [N, 4] per list."""
    n = lists.shape[1]
    if isinstance(objective, Objective):
        weights = rest_weights = torch.as_tensor(objective.vector(), dtype=torch.float32)
    else:
        weights = objective.to(torch.float32)[:, None, :]  # [N, 1, 4] against terms [E, N, n, 4]
        rest_weights = weights.repeat_interleave(n, 0)
    rows = np.arange(len(lists)) if rows is None else rows
    own = (scorer.terms(requests, lists, rows) * weights).sum(-1)  # [E, N, n]
    if reward == "self":
        return own
    rest = scorer.terms(requests, without_each(lists).reshape(-1, n), np.repeat(rows, n))
    rest = (rest * rest_weights).sum((-1, -2))
    total = own.sum(-1, keepdim=True)
    return (total - rest.view(-1, len(lists), n)) * (lists != PAD_ID)


def pick_rewards(scorer: ListScorer, cfg: GeneratorTrainConfig):
    """What each pick of sampled columns [B, K, n] earns: the evaluator members' mean per-slot reward minus
    ``beta`` x their spread ([B, K, n]), and the mean spread of a list (logged)."""

    def pay(choice: Tensor, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        b, k, n = choice.shape
        lists = chosen_items(batch["candidates"], choice).view(b * k, n)
        objective = cfg.objective if "objective" not in batch else batch["objective"].cpu().repeat_interleave(k, 0)
        members = step_rewards(scorer, requests_of(batch), lists.cpu(), cfg.reward, objective,
                               np.repeat(np.arange(b), k)).to(lists.device)
        if "reward_scale" in batch:  # drawn objectives: rewards in the units of cfg.objective
            members = members * batch["reward_scale"].repeat_interleave(k, 0)[None, :, None]
        spread = members.std(0, correction=1) if len(members) > 1 else torch.zeros_like(members[0])
        return (members.mean(0) - cfg.beta * spread).view(b, k, n), spread.sum(-1).mean()

    return pay


def request_inputs(store: FeatureStore, requests: Requests, rules: BusinessRules, n: int,
                   reference: Generator | None, objective: Objective | np.ndarray = Objective()) -> dict[str, Tensor]:
    """The GRN's inputs of requests plus what the loss reads: ids, raw upstream scores, reference columns
    (proposed under ``objective``: one for all requests, or weights [B, 4] per request)."""
    batch = list_inputs(store, requests)
    batch |= {name: torch.tensor(getattr(requests, name)) for name in ("request_id", "user_id", "cand_scores")}
    if reference is not None:
        lists = reference.propose(requests, n, Context(store, rules, objective))
        batch["reference"] = torch.as_tensor(requests.columns_of(lists))
    return batch


def reference_generator(cfg: GeneratorTrainConfig, scorer: ListScorer,
                        ranker_dir: str | Path | None = None) -> Generator | None:
    """What the behaviour term imitates (None without one). Greedy by CTR and beam read the fine-ranking
    teacher: the one the evaluator starts from, or the one in ``ranker_dir``."""
    if cfg.imitation == 0:
        return None
    if cfg.imitate == "greedy_upstream_score":
        return GreedyUpstreamScore()
    prior = scorer.prior
    if prior is None and ranker_dir is not None:
        from relist.models.ranking.saved import load_ranking_model

        prior = teacher_prior(load_ranking_model(ranker_dir))
    if prior is None:
        raise ConfigError(f"imitate: {cfg.imitate} needs the fine-ranking teacher (give its directory, --ranker), "
                          "or set imitate: greedy_upstream_score")
    if cfg.imitate == "beam":  # with the slot terms the teacher learned, as the beam generator searches
        ranker = getattr(prior, "ranker", None)
        terms = ranker.context_terms() if hasattr(ranker, "context_terms") else None
        return Beam(lambda requests, store: probabilities(prior(requests, store), requests.mask), context=terms)
    return GreedyCTR(lambda requests, store: {"ctr": prior(requests, store)["ctr"]})


def typical_values(scorer: ListScorer, requests: Requests, shown: np.ndarray) -> tuple[float, ...]:
    """A typical list's value of each objective (pv, ipv, buys, gmv): the evaluator's mean over the logged lists
    (what a conditioned GRN reads weights relative to: GRNConfig.objective_scale)."""
    totals = scorer.terms(requests, torch.as_tensor(shown)).sum(-2).mean((0, 1))
    return tuple(max(float(x), 1e-9) for x in totals)


def objective_inputs(weights: np.ndarray, b: int, cfg: GeneratorTrainConfig) -> dict[str, Tensor]:
    """A conditioned batch's drawn objective [B, 4] and its reward rescaling [B] (a typical list worth as much as
    under ``cfg.objective``)."""
    scale = np.asarray(cfg.model.objective_scale or (1.0,) * len(OBJECTIVES))
    factor = float(cfg.objective.vector() @ scale) / float(weights @ scale)
    return {"objective": torch.tensor(np.tile(weights, (b, 1)), dtype=torch.float32),
            "reward_scale": torch.full((b,), factor, dtype=torch.float32)}


def request_batches(data_dir: Path, store: FeatureStore, cfg: GeneratorTrainConfig, reference: Generator | None):
    rules = cfg.rules.build()
    price = catalogue_price(store)

    def batches(epoch: int, rank: int, world_size: int):
        stream = ParquetStream(split_path(data_dir, "train"), REQUEST_COLUMNS, cfg.train.batch_size, rank,
                               world_size, seed=epoch)
        for step, raw in enumerate(stream):
            requests = Requests.from_stream(raw)
            if not cfg.model.conditioned:
                yield request_inputs(store, requests, rules, cfg.model.list_len, reference, cfg.objective)
            else:  # the reference is proposed under the batch's drawn weights too
                weights = cfg.draws.draw(cfg.train.seed, epoch, step, rank, price)
                batch = request_inputs(store, requests, rules, cfg.model.list_len, reference,
                                       np.tile(weights, (len(requests), 1)))
                yield batch | objective_inputs(weights, len(requests), cfg)

    return batches


def greedy_value(scorer: ListScorer, requests: Requests, store: FeatureStore, cfg: GeneratorTrainConfig):
    """Validation: the pessimistic value of the greedy lists (simulator truth never picks a checkpoint).

    A conditioned GRN is valued at each of the draws' fixed weight points (``value_p<i>``, in the units of
    ``cfg.objective`` like its rewards); ``value`` is their mean."""
    rules = cfg.rules.build()
    batch = request_inputs(store, requests, rules, cfg.model.list_len, None)

    def pessimistic_value(model: GRN, inputs: dict[str, Tensor], objective) -> tuple[float, float]:
        on_device = to_device(inputs, next(model.parameters()).device)
        columns = model.decode(on_device, cfg.model.list_len, rules_hook(rules, on_device))
        lists = chosen_items(inputs["candidates"], columns.cpu()[:, None])[:, 0]
        values = scorer.values(requests, lists, objective)
        spread = values.std(0, correction=1) if len(values) > 1 else torch.zeros_like(values[0])
        return (values.mean(0) - cfg.beta * spread).mean().item(), values.mean().item()

    if not cfg.model.conditioned:
        def validate(model: GRN) -> dict[str, float]:
            value, lr = pessimistic_value(model, batch, cfg.objective)
            return {"value": value, "lr": lr}

        return validate

    points = [objective_inputs(w, len(requests), cfg) for w in cfg.draws.valid_weights(catalogue_price(store))]

    def validate_points(model: GRN) -> dict[str, float]:
        metrics = {}
        for i, point in enumerate(points):
            value, lr = pessimistic_value(model, batch | {"objective": point["objective"]},
                                          point["objective"].numpy().astype(np.float64))
            factor = point["reward_scale"][0].item()
            metrics[f"value_p{i}"], metrics[f"lr_p{i}"] = value * factor, lr * factor
        return {"value": float(np.mean([metrics[f"value_p{i}"] for i in range(len(points))])),
                "lr": float(np.mean([metrics[f"lr_p{i}"] for i in range(len(points))]))} | metrics

    return validate_points


@builds_model_folder
def train_generator(
    cfg: GeneratorTrainConfig,
    data_dir: str | Path,
    evaluator_dir: str | Path,
    out_dir: str | Path,
    resume: bool = False,
    ranker_dir: str | Path | None = None,
) -> FitResult:
    """Fit a GRN on ``data_dir``'s train requests against the evaluator in ``evaluator_dir`` (which reads the
    teacher in ``ranker_dir`` when it was trained on top of one)."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    store = FeatureStore.from_dir(data_dir)
    scorer = ListScorer.load(evaluator_dir, store, ranker_dir)
    vocab = Vocab.of(store, upstream_score_sample(data_dir))
    requests, shown = logged_requests(data_dir, "valid", cfg.valid_requests)
    if cfg.model.conditioned and catalogue_price(store) <= 0:
        raise ConfigError(f"{data_dir}: these logs carry no item prices, so a GRN conditioned on the objective has "
                          "no spend to trade clicks for; train the plain GRN (relist/configs/generator.yaml)")
    if cfg.model.conditioned and cfg.model.objective_scale is None:  # recorded in the spec the model is read with
        scale = typical_values(scorer, requests, shown)
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"objective_scale": scale})})
    torch.manual_seed(cfg.train.seed)
    model = SampledGRN(vocab, cfg, scorer)
    batches = request_batches(data_dir, store, cfg, reference_generator(cfg, scorer, ranker_dir))
    result = fit(model, model.loss, batches,
                 greedy_value(scorer, requests, store, cfg), cfg.train, out_dir, resume)
    save_on_rank0(out_dir, {CONFIG_FILE: cfg, SPEC_FILE: GeneratorSpec(vocab=vocab, model=cfg.model)},
                  cfg.train.device)
    return result
