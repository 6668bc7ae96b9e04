"""How every re-ranker values whole lists: the evaluator ensemble's heads turned into an objective.

Each member of the evaluator gives per-position click, scroll and purchase probabilities; the
chance that a position is seen is the product of the scroll probabilities before it (when the
spec says the list reward is exposure-weighted, which is the default: the click head predicts
clicks of seen positions). relist.objective turns those into the value of any objective, per
member. The members' mean is the evaluator's estimate, their spread how far it can be trusted:
:func:`pessimistic` (mean - beta x std) is what chooses and rewards lists wherever a list unlike
the logged ones could otherwise win on the evaluator's errors. Inputs are numpy or torch; outputs
follow the type of ``lists``. No gradients.

The network can run compiled (relist.rerank.compiled: ``compiled`` takes the input batch and returns
the same logits), and the teacher's logits that every call reads as its prior are computed once per
list-ranking call (relist.rerank.shared), however many times the lists of a request are scored.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from relist.data.features import FeatureStore
from relist.data.requests import Requests
from relist.models.evaluator import Evaluator, exposure, load_evaluator
from relist.models.inputs import list_inputs
from relist.models.ranking.context import ContextTerms
from relist.models.ranking.samples import slot_context
from relist.objective import Objective, terms, value
from relist.rerank import shared

Array = np.ndarray | Tensor
IPV = Objective()
PriorFn = Callable[[Requests, FeatureStore], dict[str, np.ndarray]]
"""The fine-ranking teacher's logits of every candidate ("ctr", "next", optionally "buy"; [B, m] each)."""
PRIOR_OF = {"click": "ctr", "next": "next", "buy": "buy"}


def list_priors(prior: PriorFn, store: FeatureStore, requests: Requests, lists: np.ndarray,
                rows: np.ndarray) -> dict[str, Tensor]:
    """The teacher's logits of the items of lists [R, n] of ``requests[rows]``, as the evaluator's
    ``prior_*`` inputs (0 at padding, and for a head the teacher lacks). A teacher with slot terms
    (relist.models.ranking.context; ``prior.slots``) gives each item its logit *in its slot of this list*:
    its own plus the terms of its position, the category above it and the earlier items of its category,
    so the evaluator starts from the teacher's estimate of the very list it scores."""
    logits = prior(requests, store)
    columns = requests[rows].columns_of(lists)
    at = np.maximum(columns, 0)
    slots = getattr(prior, "slots", None)
    if slots is not None:
        cates = store.item_features(np.where(columns >= 0, lists, 0))["cate"].numpy()
        prev, repeats = slot_context(cates)
    out = {}
    for head, name in PRIOR_OF.items():
        values = logits.get(name)
        if values is None:
            gathered = np.zeros(columns.shape)
        else:
            gathered = np.take_along_axis(values[rows], at, 1)
            if slots is not None and name in slots.pair:
                gathered = gathered + slots.logit(name, np.arange(lists.shape[1]), prev, cates, repeats)
            gathered = np.where(columns >= 0, gathered, 0.0)
        out[f"prior_{head}"] = torch.as_tensor(gathered, dtype=torch.float32)
    return out


def teacher_logits(ranker, store: FeatureStore, requests: Requests) -> dict[str, np.ndarray]:
    """The fine-ranking teacher's logits of every candidate, computed once per list-ranking call (the
    evaluator's prior and the point scores of greedy_ctr and beam read the same ones)."""
    from relist.models.ranking.scoring import point_logits

    return shared.once("teacher.logits", ranker, requests, store, lambda: point_logits(ranker, store, requests))


class TeacherPrior:
    """The prior an evaluator trained with ``ranker`` reads: the teacher's logits of every candidate, and the
    slot terms it learned (None without them) that :func:`list_priors` adds per list."""

    def __init__(self, ranker, in_slot: bool = True):
        self.ranker = ranker
        terms = getattr(ranker, "context_terms", None) if in_slot else None
        self.slots: ContextTerms | None = terms() if terms is not None else None

    def __call__(self, requests: Requests, store: FeatureStore) -> dict[str, np.ndarray]:
        return teacher_logits(self.ranker, store, requests)


def teacher_prior(ranker, in_slot: bool = True) -> TeacherPrior:
    """The prior an evaluator trained with ``ranker`` reads (``in_slot``: DCWNConfig.prior_in_slot)."""
    return TeacherPrior(ranker, in_slot)


class ListScorer:
    """A frozen evaluator ensemble plus the feature store that turns ids into its inputs."""

    name = "evaluator"

    def __init__(self, model: Evaluator, store: FeatureStore, exposure_weighted: bool = True,
                 batch_size: int = 4096, prior: PriorFn | None = None,
                 compiled: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None = None):
        if model.cfg.prior and prior is None:
            raise ValueError("this evaluator starts from the fine-ranking teacher's logits: give its prior "
                             "(the ranker model it was trained with)")
        self.model, self.store, self.prior, self.compiled = model.eval(), store, prior, compiled
        self.exposure_weighted, self.batch_size = exposure_weighted, batch_size
        for p in self.model.parameters():
            p.requires_grad_(False)

    @classmethod
    def load(cls, model_dir: str | Path, store: FeatureStore, ranker_dir: str | Path | None = None) -> ListScorer:
        """From a ``relist train evaluator`` directory; an evaluator with a prior needs the ranker it was
        trained with (``ranker_dir``, checked by its weights' checksum)."""
        from relist.models.ranking.saved import load_ranking_model, weights_digest

        model, spec = load_evaluator(model_dir)
        prior = None
        if spec.model.prior:
            if ranker_dir is None:
                raise ValueError(f"{model_dir}: this evaluator reads the fine-ranking teacher's logits; "
                                 "it needs the ranker it was trained with")
            if spec.prior_weights != weights_digest(ranker_dir):
                raise ValueError(f"{model_dir}: trained with another ranker than {ranker_dir} "
                                 "(weights differ); retrain the evaluator or use its ranker")
            prior = teacher_prior(load_ranking_model(ranker_dir), spec.model.prior_in_slot)

        return cls(model, store, spec.exposure_weighted, prior=prior)

    @property
    def members(self) -> int:
        return len(self.model.members)

    def on_store(self, store: FeatureStore) -> ListScorer:
        """The same evaluator reading another store (e.g. a view with a request's user overrides)."""
        return self if store is self.store else self.replaced(store=store)

    def replaced(self, **changes) -> ListScorer:
        """The same evaluator with other settings (``store``, ``prior``, ``compiled``, ``batch_size``)."""
        settings = dict(model=self.model, store=self.store, exposure_weighted=self.exposure_weighted,
                        batch_size=self.batch_size, prior=self.prior, compiled=self.compiled)
        return ListScorer(**(settings | changes))

    def terms(self, requests: Requests, lists: Array, rows: np.ndarray | None = None) -> Array:
        """Per member and position the objective terms of lists [R, n] of ``requests[rows]`` (default: one
        list per request): [E, R, n, 4]."""
        rows = np.arange(len(requests)) if rows is None else np.asarray(rows)
        return self._chunked(requests, lists, rows)

    def values(self, requests: Requests, lists: Array, objective: Objective | np.ndarray = IPV) -> Array:
        """Per member the value of each list: lists [B, n] -> [E, B], or [B, K, n] -> [E, B, K].

        ``objective`` is one Objective or per-request weights [B, 4].
        """
        proposals = lists if lists.ndim == 3 else lists[:, None]
        b, k, n = proposals.shape
        flat, rows = proposals.reshape(b * k, n), np.repeat(np.arange(b), k)
        first, copies = distinct_lists(flat, rows)  # generators often agree: a list is scored once per request
        if len(first) == len(flat):
            per_position = self.terms(requests, flat, rows)
        else:
            per_position = self.terms(requests, flat[first], rows[first])[:, copies]
        per_position = per_position.reshape(per_position.shape[0], b, k, n, 4)
        weights = _weights(objective, b)
        out = value(per_position, weights if isinstance(per_position, np.ndarray) else torch.as_tensor(weights))
        return out if lists.ndim == 3 else out[..., 0]

    def list_reward(self, requests: Requests, lists: Array, objective: Objective | np.ndarray = IPV) -> Array:
        """The members' mean value of each list ([B, n] -> [B], [B, K, n] -> [B, K]): the evaluator's LR."""
        return self.values(requests, lists, objective).mean(0)

    def _chunked(self, requests: Requests, lists: Array, rows: np.ndarray) -> Array:
        out = []
        for start in range(0, len(lists), self.batch_size):
            part = rows[start:start + self.batch_size]
            used, local = np.unique(part, return_inverse=True)  # each request's history encoded once
            out.append(self._score(requests[used], lists[start:start + self.batch_size], local))
        if isinstance(lists, np.ndarray):
            return np.concatenate(out, 1) if out else np.zeros((self.members, 0, lists.shape[1], 4))
        return torch.cat(out, 1) if out else torch.zeros(self.members, 0, lists.shape[1], 4)

    @torch.no_grad()
    def _score(self, requests: Requests, lists: Array, rows: np.ndarray) -> Array:
        device = next(self.model.parameters()).device
        ids = lists if isinstance(lists, Tensor) else torch.tensor(np.ascontiguousarray(lists), dtype=torch.long)
        batch = list_inputs(self.store, requests, ids.to(device), rows)
        if self.prior is not None:
            batch |= {name: value.to(device) for name, value in
                      list_priors(self.prior, self.store, requests, ids.cpu().numpy(), rows).items()}
        logits = (self.model if self.compiled is None else self.compiled)(batch)
        real = batch["mask"].to(logits["click"].dtype)
        seen = exposure(logits["next"]) * real if self.exposure_weighted else real.expand_as(logits["click"])
        out = terms(seen, torch.sigmoid(logits["click"]), torch.sigmoid(logits["buy"]), batch["raw_price"])
        out = out.to(ids.device)
        return out.numpy() if isinstance(lists, np.ndarray) else out


def distinct_lists(lists: Array, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lists [R, n] of requests ``rows`` [R] -> (one index per distinct (request, list) pair [U], and for each
    list the position of its pair among those [R]): ``lists[first][copies]`` is ``lists``."""
    ids = lists.cpu().numpy() if isinstance(lists, Tensor) else np.asarray(lists)
    _, first, copies = np.unique(np.concatenate([rows[:, None], ids], 1), axis=0, return_index=True,
                                 return_inverse=True)
    return first, copies.reshape(-1)


def _weights(objective: Objective | np.ndarray, b: int) -> np.ndarray:
    """Objective weights shaped to broadcast against per-member totals [E, B, K, 4]: [4] or [B, 1, 4]."""
    if isinstance(objective, Objective):
        return objective.vector()
    weights = np.asarray(objective, dtype=np.float64)
    if weights.shape != (b, 4):
        raise ValueError(f"per-request objective weights must be [{b}, 4], got {list(weights.shape)}")
    return weights[:, None, :]


def pessimistic(values: Array, beta: float) -> Array:
    """Mean minus ``beta`` standard deviations over the members (axis 0); the mean when there is one."""
    if values.shape[0] < 2 or beta == 0:
        return values.mean(0)
    std = values.std(0, ddof=1) if isinstance(values, np.ndarray) else values.std(0, correction=1)
    return values.mean(0) - beta * std


class UpstreamValue:
    """List values without a learned evaluator: the upstream scores read as click probabilities and a
    constant chance to keep scrolling (one 'member', so no spread)."""

    name = "upstream_scores"

    def __init__(self, p_next: float = 0.85):
        self.p_next = p_next

    def on_store(self, store: FeatureStore) -> UpstreamValue:
        return self

    def values(self, requests: Requests, lists: np.ndarray, objective: Objective | np.ndarray = IPV) -> np.ndarray:
        proposals = lists if lists.ndim == 3 else lists[:, None]
        score, _ = requests.upstream_of(proposals)
        p_click = np.clip(np.nan_to_num(score, nan=0.0), 0.0, 1.0)
        seen = (proposals != 0) * self.p_next ** np.arange(proposals.shape[-1])
        out = value(terms(seen, p_click)[None], _weights(objective, len(proposals)))
        return out if lists.ndim == 3 else out[..., 0]
