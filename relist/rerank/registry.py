"""Every generator by name, built from the trained models of a model directory or version.

Trained models have one set of role names everywhere — the demo's and the benchmarks' model
folders, the evaluation's ``--models`` directory, an exported version and the server all use
them: ``ranker`` (fine-ranking teacher), ``coarse`` (DSSM student), ``evaluator`` (DCWN
ensemble), ``generator`` (GRN), ``generator_cmr`` (the GRN conditioned on the objective weights),
``prm``, ``dlcm``, ``seq2slate``. A generator whose models are
missing is left out and reported. Adding a generator: its class in a module of its own, and one
line in ``GENERATORS``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from relist.data.features import FeatureStore
from relist.data.requests import Requests
from relist.models.ranking.context import ContextTerms
from relist.objective import Objective
from relist.rerank.baselines import Baseline, GreedyCTR
from relist.rerank.beam import Beam, BeamConfig, upstream_scores
from relist.rerank.generators import Context, Generator
from relist.rerank.grn import GRNGreedy, GRNSamples
from relist.rerank.last import LAST, LASTConfig
from relist.rerank.list_ranking import AUTO, FLOOR, ListRanking, ListRankingConfig
from relist.rerank.list_scorer import ListScorer, UpstreamValue, teacher_logits
from relist.rerank.policy import GreedyUpstreamScore, RandomOrder, Upstream
from relist.rerank.rules import RulesConfig

ROLES = ("ranker", "coarse", "evaluator", "generator", "generator_cmr", "prm", "dlcm", "seq2slate")


class GRNSamplesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    samples: int = Field(8, ge=1, description="lists sampled per request")
    temperature: float = Field(1.0, gt=0)
    seed: int = Field(0, ge=0)


class RerankConfig(BaseModel):
    """How lists are made and chosen: the same settings offline (``relist eval rerank``) and when served."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: RulesConfig = RulesConfig()
    objective: Objective = Field(Objective(), description="what a list is worth, unless a request says otherwise")
    beam: BeamConfig = BeamConfig()
    grn_samples: GRNSamplesConfig = GRNSamplesConfig()
    last: LASTConfig = LASTConfig()
    ranking: ListRankingConfig = ListRankingConfig()


@dataclass(frozen=True)
class Models:
    """Trained models by role (None where missing), reading features from ``store``."""

    store: FeatureStore
    ranker: object | None = None  # fine-ranking teacher with ctr and next heads
    coarse: object | None = None  # relist.models.ranking.scoring.CoarseScorer
    evaluator: ListScorer | None = None
    generator: object | None = None  # relist.models.generator.GRN
    generator_cmr: object | None = None  # the GRN conditioned on the objective (GRNConfig.conditioned)
    prm: object | None = None
    dlcm: object | None = None
    seq2slate: object | None = None

    @classmethod
    def load(cls, models_dir: str | Path, store: FeatureStore,
             roles: Iterable[str] = ROLES) -> tuple[Models, list[str]]:
        """The models under ``models_dir/<role>`` and what is missing there."""
        from relist.io.model_folder import incomplete_reason, is_complete_model

        loaded, missing = {}, []
        for role in roles:
            path = Path(models_dir) / role
            if is_complete_model(path):  # a folder still training, or left half-written, is passed over
                loaded[role] = load_role(role, path, store, Path(models_dir) / "ranker")
            else:
                missing.append(f"{role}: {incomplete_reason(path)}")
        return cls(store, **loaded), missing

    def point_scores(self, requests: Requests, store: FeatureStore) -> dict[str, np.ndarray]:
        """The teacher's probabilities (its logits are shared with the evaluator's prior: relist.rerank.shared)."""
        from relist.models.ranking.scoring import probabilities

        return probabilities(teacher_logits(self.ranker, store, requests), requests.mask)

    def slot_terms(self, cfg: BeamConfig) -> ContextTerms | None:
        """The teacher's slot terms beam search adds back (None: it learned none, or the config leaves them out)."""
        terms = getattr(self.ranker, "context_terms", None)
        return terms() if terms is not None and cfg.slot_context else None

    def value_model(self, p_next: float = 0.85):
        """What values lists: the evaluator, or the upstream scores where the version has none."""
        return self.evaluator if self.evaluator is not None else UpstreamValue(p_next)


def load_role(role: str, path: Path, store: FeatureStore, ranker_dir: Path | None = None) -> object:
    """One trained model directory as the object its role is used as (weights only through safetensors).

    An evaluator that starts from the teacher's logits reads them from ``ranker_dir``.
    """
    if role == "evaluator":
        return ListScorer.load(path, store, ranker_dir if ranker_dir is not None and ranker_dir.is_dir() else None)
    if role in ("generator", "generator_cmr"):
        from relist.models.generator import load_generator

        model = load_generator(path)[0]
        conditioned = role == "generator_cmr"
        if model.cfg.conditioned != conditioned:
            raise ValueError(f"{path}: role '{role}' needs a GRN {'' if conditioned else 'not '}conditioned on the "
                             f"objective (model.conditioned: {str(conditioned).lower()}; "
                             f"relist/configs/{role}.yaml trains one)")
        return model
    if role in ("ranker", "coarse"):
        from relist.models.ranking.saved import load_ranking_model

        model = load_ranking_model(path)
        if role == "ranker":
            return model
        from relist.models.ranking.scoring import CoarseScorer

        return CoarseScorer(model, store)
    if role in ("prm", "dlcm", "seq2slate"):
        from relist.models.baselines.spec import load_baseline

        return load_baseline(path)[0]
    raise ValueError(f"unknown model role '{role}' (known: {', '.join(ROLES)})")


Builder = Callable[[Models, RerankConfig], Generator | None]

GENERATORS: dict[str, Builder] = {
    FLOOR: lambda m, c: Upstream(),
    "greedy_upstream_score": lambda m, c: GreedyUpstreamScore(),
    "random": lambda m, c: RandomOrder(),
    "beam_upstream": lambda m, c: Beam(upstream_scores(c.beam.p_next), c.beam.k),
    "greedy_ctr": lambda m, c: GreedyCTR(m.point_scores) if m.ranker is not None else None,
    "beam": lambda m, c: Beam(m.point_scores, c.beam.k, m.slot_terms(c.beam)) if m.ranker is not None else None,
    "prm": lambda m, c: Baseline(m.prm) if m.prm is not None else None,
    "dlcm": lambda m, c: Baseline(m.dlcm) if m.dlcm is not None else None,
    "seq2slate": lambda m, c: Baseline(m.seq2slate) if m.seq2slate is not None else None,
    "grn": lambda m, c: GRNGreedy(m.generator) if m.generator is not None else None,
    "grn_cmr": lambda m, c: GRNGreedy(m.generator_cmr) if m.generator_cmr is not None else None,
    "grn_samples": lambda m, c: (GRNSamples(m.generator, c.grn_samples.samples, c.grn_samples.temperature,
                                            c.grn_samples.seed)
                                 if m.generator is not None and m.evaluator is not None else None),
    "last": lambda m, c: (LAST(m.generator, m.evaluator, c.last)
                          if m.generator is not None and m.evaluator is not None else None),
}


def build_generators(names: Iterable[str], models: Models, cfg: RerankConfig) -> tuple[dict[str, Generator],
                                                                                        list[str]]:
    """The named generators the models allow, and a line for each left out."""
    built, missing = {}, []
    for name in names:
        if name not in GENERATORS:
            raise ValueError(f"unknown generator '{name}' (known: {', '.join(GENERATORS)})")
        generator = GENERATORS[name](models, cfg)
        if generator is None:
            missing.append(f"{name}: its models are missing")
        else:
            built[name] = generator
    return built, missing


def choose_incumbent(generators: dict[str, Generator], names: Iterable[str], scorer, requests: Requests, n: int,
                     ctx: Context, beta: float) -> tuple[str, dict[str, float]]:
    """The generator whose lists the evaluator rates best on (validation) requests, pessimistically.

    Each candidate's lists are compared, per request, with the first candidate's (paired, so the
    members' shared errors cancel). An incumbent is one choice for every request, so what decides is
    a lower bound on its *mean* gain (``mean_gain_bound``), not the mean of per-request bounds: a
    member's noise on one request averages out over requests and must not make every change look
    unsafe. Returns the name and every candidate's bound.
    """
    names = [name for name in names if name in generators]
    if not names:
        raise ValueError("no incumbent candidate among the built generators")
    lists = np.concatenate([generators[name].propose(requests, n, ctx)[:, :1] for name in names], 1)
    values = np.asarray(scorer.on_store(ctx.store).values(requests, lists, ctx.objective), dtype=np.float64)
    gains = {name: mean_gain_bound(values[:, :, k] - values[:, :, 0], beta) for k, name in enumerate(names)}
    return max(gains, key=gains.get), gains


def mean_gain_bound(gains: np.ndarray, beta: float) -> float:
    """[E members, B requests] per-request gains -> their mean minus ``beta`` standard errors, where the
    error counts both how far the members disagree on the mean gain and how much it varies over the
    requests (a lower bound on the gain over the population the requests were drawn from)."""
    per_member = gains.mean(1)
    per_request = gains.mean(0)
    members = per_member.var(ddof=1) if len(per_member) > 1 else 0.0
    sampling = per_request.var(ddof=1) / len(per_request) if len(per_request) > 1 else 0.0
    return float(per_member.mean() - beta * np.sqrt(members + sampling))


def build_ranking(models: Models, cfg: RerankConfig, generators: Iterable[str] | None = None,
                  validation: tuple[Requests, int] | None = None) -> tuple[ListRanking, list[str], dict]:
    """List ranking over the named generators (default: the config's), with its incumbent resolved.

    ``cfg.ranking.incumbent == 'auto'`` is chosen on ``validation`` requests (with their list length);
    without them, 'auto' means no incumbent. Returns the ranking, what was left out, and the choice.
    """
    names = list(cfg.ranking.generators if generators is None else generators)
    choices = [name for name in cfg.ranking.incumbent_choices if name not in names]
    built, missing = build_generators(names, models, cfg)
    scorer = models.value_model(cfg.beam.p_next)
    incumbent, choice = cfg.ranking.incumbent, {}
    if incumbent == AUTO:
        incumbent = None
        if validation is not None:
            candidates, _ = build_generators(choices, models, cfg)
            pool = built | candidates
            requests, n = validation
            ctx = Context(models.store, cfg.rules.build(), cfg.objective)
            incumbent, gains = choose_incumbent(pool, cfg.ranking.incumbent_choices, scorer, requests, n, ctx,
                                                cfg.ranking.beta)
            choice = {"incumbent": incumbent, "gains_on_validation": gains, "requests": len(requests)}
            built |= {incumbent: pool[incumbent]}
    elif incumbent is not None and incumbent not in built:
        more, absent = build_generators([incumbent], models, cfg)
        built |= more
        missing += absent
    if validation is not None and cfg.ranking.min_share > 0:
        built, choice["served_share_on_validation"] = often_served(
            ListRanking(built, scorer, cfg.ranking, incumbent), validation, cfg, models.store)
        missing += [f"{name}: served on fewer than {cfg.ranking.min_share:.0%} of validation requests"
                    for name in choice["served_share_on_validation"] if name not in built]
    return ListRanking(built, scorer, cfg.ranking, incumbent), missing, choice


def often_served(ranking: ListRanking, validation: tuple[Requests, int], cfg: RerankConfig,
                 store: FeatureStore) -> tuple[dict[str, Generator], dict[str, float]]:
    """The generators whose list ``ranking`` serves on at least ``cfg.ranking.min_share`` of the validation
    requests (the incumbent always), and every generator's share."""
    requests, n = validation
    ranked = ranking.rank(requests, n, Context(store, cfg.rules.build(), cfg.objective))
    served = np.asarray([name.split("+")[0] for name in ranked.source])
    shares = {name: float((served == name).mean()) for name in ranking.generators}
    keep = {name: generator for name, generator in ranking.generators.items()
            if name == ranking.incumbent or shares[name] >= cfg.ranking.min_share}
    return keep, shares
