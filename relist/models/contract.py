"""The one contract of relist's list models (TorchEasyRec's): ``predict``, ``loss`` and, to generate, ``decode``.

A model owns the loss it is trained with, so a trainer fits any of them as
``fit(model, model.loss, ...)`` and a re-ranking policy asks any generator for its list with
``decode(batch, n, allowed_fn)``; neither needs to know which model it holds. The models are built
by name from relist.models.registry.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor, nn

from relist.data.padding import NEG_INF

State = TypeVar("State")

AllowedFn = Callable[[Tensor, Tensor, Tensor, int], Tensor]
"""Business-rule hook: (request row of each decoded row [N], prefix columns [N, t] (-1 = none),
already chosen [N, m], slot) -> candidates allowed at this slot [N, m]."""


class ListModel(nn.Module, metaclass=ABCMeta):
    """Named logits of a batch and the named loss terms of those logits (with the total as ``"loss"``).

    ``model(batch, ...)`` is ``model.predict(batch, ...)``: DDP and module hooks run through ``forward``.
    """

    def forward(self, batch: dict[str, Tensor], *args, **options) -> dict[str, Tensor]:
        return self.predict(batch, *args, **options)

    @abstractmethod
    def predict(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Named logits, e.g. {"score": [B, L]}."""

    @abstractmethod
    def loss(self, out: dict[str, Tensor], batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Named scalar terms of ``out = predict(batch)`` against the batch's labels; ``"loss"`` is minimised."""


class ListGenerator(ListModel):
    """A list model that also writes lists: candidate columns slot by slot, under a per-slot hook."""

    prefix_free: bool = False
    """True when a candidate's logit does not depend on the items already chosen (item scorers): the greedy
    list is then a fill by ``predict(batch)["score"]``, which re-ranking runs without a slot loop in torch."""

    @abstractmethod
    def decode(self, batch: dict[str, Tensor], n: int, allowed_fn: AllowedFn | None = None) -> Tensor:
        """Greedy lists: columns [B, n] of ``batch``'s candidates (-1 once a request runs out), each among
        the real, not yet chosen candidates that ``allowed_fn`` (business rules) allows at its slot."""


def greedy_slots(mask: Tensor, n: int, step: Callable[[State, Tensor | None], tuple[Tensor, State]],
                 state: State, allowed_fn: AllowedFn | None = None) -> Tensor:
    """The slot loop of every greedy decoder: at each slot the allowed column of highest logit (ties: the
    earlier column), where ``step(state, previous pick or None) -> (logits [B, L], state)``; see
    :meth:`ListGenerator.decode` for what is returned and allowed."""
    rows = torch.arange(len(mask), device=mask.device)
    chosen = torch.zeros_like(mask)
    previous, columns = None, []
    for slot in range(n):
        allowed = mask & ~chosen
        if allowed_fn is not None:
            prefix = torch.stack(columns, 1) if columns else rows.new_zeros(len(rows), 0)
            allowed = allowed & allowed_fn(rows, prefix, chosen, slot)
        logits, state = step(state, previous)
        pick = logits.masked_fill(~allowed, NEG_INF).argmax(1)
        live = allowed.any(1)
        chosen = chosen.scatter(1, pick[:, None], live[:, None]) | chosen
        columns.append(torch.where(live, pick, torch.full_like(pick, -1)))
        previous = pick
    return torch.stack(columns, 1)
