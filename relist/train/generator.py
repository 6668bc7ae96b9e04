"""Training the GRN by policy gradient against a frozen evaluator.

Each request gets K sampled lists. Slot t of a list earns a reward from the
evaluator (a ListScorer), never from the simulator:

* ``self``: the item's own share of the list reward (its click probability there, times
  its predicted exposure when the evaluator's LR is exposure-weighted);
* ``advantage``: self reward + differential reward, the change the item causes in the
  other items' shares. Together that is LR(list) - LR(list without the item), where
  "without" removes the item and lets the items after it move up one slot (what the
  user would have seen had it not been generated), the freed last slot left empty.

The baseline of a slot is the mean reward of that slot over the request's K samples,
and REINFORCE weighs each slot's log-probability by its reward minus the baseline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from relist.data.features import FeatureStore
from relist.data.logs import logged_requests, split_path
from relist.data.stream import ParquetStream
from relist.models.generator import GRN, GeneratorSpec, GRNConfig, candidate_features, chosen_items, save_spec
from relist.models.saved import builds_model_folder
from relist.models.vocab import Vocab
from relist.rerank.grn_policy import rules_hook
from relist.rerank.list_scorer import ListScorer
from relist.rerank.rules import RulesConfig
from relist.train.config import TrainConfig, save_config
from relist.train.distributed import is_main
from relist.train.trainer import FitResult, fit, to_device

CONFIG_FILE = "generator_train.yaml"
Reward = Literal["advantage", "self"]
REQUEST_COLUMNS = ("user_id", "candidates", "cand_scores")


class GeneratorTrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: GRNConfig = GRNConfig()
    train: TrainConfig = TrainConfig(batch_size=64, monitor="lr", monitor_mode="max")
    reward: Reward = Field("advantage", description="advantage: self + differential reward; self: ablation")
    samples: int = Field(8, ge=2, description="lists sampled per request (their mean is the baseline)")
    temperature: float = Field(1.0, gt=0, description="sampling temperature during training")
    rules: RulesConfig | None = RulesConfig()
    valid_requests: int = Field(
        2000, ge=1, description="valid requests whose greedy-list LR picks the checkpoint"
    )


class SampledGRN(GRN):
    """The GRN as the trainer calls it: ``forward(batch)`` samples K lists under the rules.

    A subclass rather than a wrapper, so checkpoints load straight into a plain GRN.
    """

    def __init__(
        self, vocab: Vocab, cfg: GRNConfig, samples: int, temperature: float, rules: RulesConfig | None
    ):
        super().__init__(vocab, cfg)
        self.samples, self.temperature = samples, temperature
        self.rules = None if rules is None else rules.build()

    def forward(self, batch: dict[str, Tensor], **kwargs) -> dict[str, Tensor]:
        hook = rules_hook(self.rules, batch) if self.rules is not None else None
        settings = {"samples": self.samples, "temperature": self.temperature, "allowed_fn": hook} | kwargs
        return super().forward(batch, **settings)


def without_each(lists: Tensor) -> Tensor:
    """[N, n] -> [N, n, n]: row t is the list with slot t removed, later items moved up, PAD_ID last."""
    n = lists.shape[1]
    keep = torch.arange(n).expand(n, n)
    index = torch.stack([torch.cat([keep[t, :t], keep[t, t + 1 :], torch.tensor([n])]) for t in range(n)])
    padded = torch.cat([lists, torch.zeros_like(lists[:, :1])], 1)
    return padded[:, index.to(lists.device)]


def step_rewards(scorer: ListScorer, user_ids: Tensor, lists: Tensor, reward: Reward) -> Tensor:
    """Reward of every slot of lists [N, n] (0 at empty slots)."""
    own = scorer.contributions(user_ids, lists)
    if reward == "self":
        return own
    n = lists.shape[1]
    total = own.sum(1, keepdim=True)
    rest = scorer.list_reward(user_ids.repeat_interleave(n), without_each(lists).reshape(-1, n)).view(-1, n)
    return (total - rest) * (lists != 0)


def policy_gradient_loss(scorer: ListScorer, reward: Reward):
    """REINFORCE with a per-slot mean-of-K baseline; the loss closes over the frozen evaluator."""

    def loss_fn(outputs: dict[str, Tensor], batch: dict[str, Tensor]) -> dict[str, Tensor]:
        b, k, n = outputs["choice"].shape
        lists = chosen_items(batch["candidates"], outputs["choice"]).view(b * k, n)
        users = batch["user_id"].repeat_interleave(k)
        rewards = step_rewards(scorer, users, lists, reward).view(b, k, n)
        advantage = rewards - rewards.mean(1, keepdim=True)
        loss = -(advantage * outputs["step_logp"]).sum(-1).mean()
        return {
            "loss": loss,
            "sample_lr": scorer.list_reward(users, lists).mean(),
            "reward": rewards.sum(-1).mean(),
        }

    return loss_fn


def request_batches(data_dir: Path, store: FeatureStore, batch_size: int):
    def batches(epoch: int, rank: int, world_size: int):
        stream = ParquetStream(
            split_path(data_dir, "train"), REQUEST_COLUMNS, batch_size, rank, world_size, seed=epoch
        )
        for raw in stream:
            batch = candidate_features(store, raw["user_id"], raw["candidates"], raw["cand_scores"])
            yield batch | {"user_id": torch.tensor(raw["user_id"])}

    return batches


def greedy_lr(scorer: ListScorer, batch: dict[str, Tensor], rules: RulesConfig | None):
    """Validation: mean evaluator LR of the greedy lists (simulator truth never picks a checkpoint)."""
    built = None if rules is None else rules.build()

    def validate(model: GRN) -> dict[str, float]:
        on_device = to_device(batch, next(model.parameters()).device)
        hook = rules_hook(built, on_device) if built is not None else None
        out = model(on_device, samples=1, greedy=True, allowed_fn=hook)
        lists = chosen_items(batch["candidates"], out["choice"].cpu())[:, 0]
        return {"lr": scorer.list_reward(batch["user_id"], lists).mean().item()}

    return validate


@builds_model_folder
def train_generator(
    cfg: GeneratorTrainConfig,
    data_dir: str | Path,
    evaluator_dir: str | Path,
    out_dir: str | Path,
    resume: bool = False,
) -> FitResult:
    """Fit a GRN on ``data_dir``'s train requests against the evaluator in ``evaluator_dir``."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    store = FeatureStore.from_dir(data_dir)
    scorer = ListScorer.load(evaluator_dir, store)
    vocab = Vocab.of(store)
    torch.manual_seed(cfg.train.seed)
    model = SampledGRN(vocab, cfg.model, cfg.samples, cfg.temperature, cfg.rules)
    requests, _ = logged_requests(data_dir, "valid", cfg.valid_requests)
    valid = candidate_features(store, requests.user_id, requests.candidates, requests.cand_scores)
    valid["user_id"] = torch.tensor(requests.user_id)
    result = fit(
        model,
        policy_gradient_loss(scorer, cfg.reward),
        request_batches(data_dir, store, cfg.train.batch_size),
        greedy_lr(scorer, valid, cfg.rules),
        cfg.train,
        out_dir,
        resume,
    )
    if is_main():
        save_config(cfg, out_dir / CONFIG_FILE)
        save_spec(GeneratorSpec(vocab=vocab, model=cfg.model), out_dir)
    return result
