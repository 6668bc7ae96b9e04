"""Compiled models: the GRN's encoder, the evaluator ensemble and the fine-ranking teacher as ONNX graphs run by
ONNX Runtime, the GRN's slot loop as a numba kernel — the same lists as the eager modules, without
per-operation Python.

Serving one request is dominated by dispatch overhead, not arithmetic: a 10-slot GRN decode under the
business rules is about 500 small torch operations. The slot loop also traces into one graph with the rules
inside it (relist.rerank.grn.branch_free_rules_hook: every relaxation level computed, the first that
leaves a candidate taken, boolean algebra only), the slots unrolled. Four ways of running that graph
were measured on one request (m=50, n=10, greedy and 9 rows; loaded 2-core machine, same run):
ONNX Runtime 5-6x faster than eager, torch.compile about as fast as ONNX Runtime but 5 minutes to
compile (and again for every new version), TorchScript 2.4x. Even in ONNX Runtime the unrolled graph's ~2k
small nodes cost milliseconds, so the server runs the slot loop as one kernel instead
(relist.rerank.grn_decoder: any rules, any number of slots; ``rerank_latency.json`` has both), and the
exported decoder graph is the edge form (``compiled_models(..., decoder_graph=True)`` runs it). The graphs
are written once by ``relist export --onnx`` (seconds) and the server loads them with the version
(relist.serve.registry), as an edge device would (the manifest says what each graph reads). The teacher's
slot tables (relist.models.ranking.context) are no graph: they ship beside them as ``slot_terms.npz``.

Exactness: greedy decoding and sampling (Gumbel noise drawn from the request's seed by the caller,
as the eager path draws it) pick the same candidates as the eager modules; log-probabilities and
evaluator values agree to float rounding. A call the decoder graph cannot take (other rules than it was
exported with, more slots than it unrolls) runs in the kernel. A GRN conditioned on the objective (role
``generator_cmr``, generator ``grn_cmr``) has no encoder graph: its encoder runs eagerly, its slot loop in the
kernel (:class:`KernelGRN`).

The graphs use the TorchScript-based exporter (4 s for the decoder; the dynamo-based one took 55 s
on the same machine for a graph of the same speed). It cannot trace ``nn.GRUCell``'s fused kernel
under dynamic shapes, so the decoder graph spells the cell out (:class:`_GRUCellOps`, same formula).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from relist.models.generator import GRN, Encoded
from relist.models.ranking.context import ContextTerms
from relist.rerank.grn import RULE_INPUTS, GRNRunner, as_runner, branch_free_rules_hook, request_batch
from relist.rerank.grn_decoder import DecoderWeights, decode_rows, logp_gradients
from relist.rerank.rules import BusinessRules

MANIFEST = "onnx.json"
OPSET = 17
FORMAT = 1
GRAPHS = {"generator_encoder": "generator_encoder.onnx", "generator_decoder": "generator_decoder.onnx",
          "evaluator": "evaluator.onnx", "ranker": "ranker.onnx"}
SLOT_TERMS = "slot_terms.npz"  # the teacher's slot tables (relist.models.ranking.context), when it has them
DECODER_INPUTS = ("candidates", "state", *[f"rule_{name}" for name in RULE_INPUTS], "noise", "temperature")
DECODER_OUTPUTS = ("choice", "step_logp", "allowed")


class OnnxGraph:
    """One ONNX graph in an ONNX Runtime session: torch tensors by input name in, torch tensors out.

    One intra-op thread by default: per-request tensors are too small to split, and concurrency comes
    from batching requests and from worker processes (relist.serve); threads never spin while idle.
    """

    def __init__(self, path: str | Path | bytes, threads: int = 1):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        source = path if isinstance(path, bytes) else str(path)
        self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]  # inputs the graph does not read are pruned
        self.outputs = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, Tensor]) -> dict[str, Tensor]:
        arrays = {name: np.ascontiguousarray(feeds[name].detach().cpu().numpy()) for name in self.inputs}
        return {name: torch.from_numpy(value) for name, value in
                zip(self.outputs, self.session.run(None, arrays), strict=True)}


class OnnxModule:
    """A module over a batch dict (evaluator, teacher) run from its graph: ``module(batch) -> {name: tensor}``."""

    def __init__(self, graph: OnnxGraph, outputs: list[str], context_terms: ContextTerms | None = None):
        self.graph, self.names, self._context_terms = graph, outputs, context_terms

    def eval(self) -> OnnxModule:
        return self

    def context_terms(self) -> ContextTerms | None:
        """The teacher's slot terms (tables, not a graph: beam search and the evaluator's prior add them)."""
        return self._context_terms

    def __call__(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        out = self.graph.run(batch)
        return {name: out[name] for name in self.names}


class KernelGRN(GRNRunner):
    """The GRN's runner with its slot loop and LAST's gradient in the numba kernels (relist.rerank.grn_decoder: any
    rules, any number of slots) and its encoder eager: a GRN whose encoder has no graph (one conditioned on the
    objective, ``grn_cmr``) still decodes without per-slot Python."""

    compiled = True

    def __init__(self, model: GRN):
        super().__init__(model)
        self.weights = DecoderWeights.of(model)

    def decode(self, enc: Encoded, rule_inputs: dict[str, Tensor], n: int, rules: BusinessRules | None,
               noise: Tensor | None = None, temperature: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
        return decode_rows(self.weights, enc, rule_inputs, n, rules, noise, temperature)

    def logp_gradients(self, enc: Encoded, choice: Tensor, allowed: Tensor,
                       temperature: float = 1.0) -> tuple[Tensor, Tensor]:
        return logp_gradients(self.weights, enc, choice, allowed, temperature)


class CompiledGRN(KernelGRN):
    """The GRN's runner on its encoder graph and the slot-loop kernel, or, given ``decoder``, on the exported
    decoder graph as an edge device runs it (the kernel where that graph does not apply: other rules than it was
    exported with, more slots than it unrolls)."""

    def __init__(self, model: GRN, encoder: OnnxGraph, decoder: OnnxGraph | None = None,
                 rules: BusinessRules | None = None, slots: int = 0):
        super().__init__(model)
        self.encoder, self.decoder, self.rules, self.slots = encoder, decoder, rules, slots

    def encode(self, batch: dict[str, Tensor]) -> Encoded:
        out = self.encoder.run(batch)
        return Encoded(out["candidates"], out["state"], batch["mask"])

    def decode(self, enc: Encoded, rule_inputs: dict[str, Tensor], n: int, rules: BusinessRules | None,
               noise: Tensor | None = None, temperature: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
        if self.decoder is None or rules != self.rules or n > self.slots:
            return super().decode(enc, rule_inputs, n, rules, noise, temperature)
        rows, m = enc.mask.shape
        full = torch.zeros(rows, self.slots, m)
        if noise is not None:
            full[:, :n] = noise  # slots past n decode greedily and are dropped: a slot never reads later ones
        feeds = {"candidates": enc.candidates, "state": enc.state, "noise": full,
                 "temperature": torch.tensor(float(temperature))}
        feeds |= {f"rule_{name}": value for name, value in rule_inputs.items()}
        out = self.decoder.run(feeds)
        return out["choice"][:, :n], out["step_logp"][:, :n], out["allowed"][:, :n]


class _GRUCellOps(nn.Module):
    """``nn.GRUCell``'s formula in plain operations on the cell's own weights (what the exporter can trace)."""

    def __init__(self, cell: nn.GRUCell):
        super().__init__()
        self.cell = cell

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        cell, size = self.cell, self.cell.hidden_size
        gi = nn.functional.linear(x, cell.weight_ih, cell.bias_ih)
        gh = nn.functional.linear(h, cell.weight_hh, cell.bias_hh)
        r = torch.sigmoid(gi[:, :size] + gh[:, :size])
        z = torch.sigmoid(gi[:, size:2 * size] + gh[:, size:2 * size])
        candidate = torch.tanh(gi[:, 2 * size:] + r * gh[:, 2 * size:])
        return (1 - z) * candidate + z * h


class _AttentionOps(nn.Module):
    """``nn.MultiheadAttention`` (batch first, one embedding size, no extra key/value bias) in plain operations
    on its own weights: its library form fixes the sequence length when traced."""

    def __init__(self, attention: nn.MultiheadAttention):
        super().__init__()
        if not attention.batch_first or not attention._qkv_same_embed_dim or attention.bias_k is not None:
            raise ValueError("only batch-first self-attention of one embedding size is exported")
        self.attention = attention

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                need_weights: bool = False) -> tuple[Tensor, None]:
        a = self.attention
        size, heads = a.embed_dim, a.num_heads
        weight, bias = a.in_proj_weight, a.in_proj_bias

        def project(x: Tensor, part: int) -> Tensor:
            rows = slice(part * size, (part + 1) * size)
            out = nn.functional.linear(x, weight[rows], None if bias is None else bias[rows])
            return out.unflatten(-1, (heads, size // heads)).transpose(1, 2)  # [B, heads, L, d]

        q, k, v = project(query, 0), project(key, 1), project(value, 2)
        scores = q @ k.transpose(-2, -1) / (size // heads) ** 0.5
        if key_padding_mask is not None:
            scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        out = (torch.softmax(scores, -1) @ v).transpose(1, 2).flatten(2)
        return a.out_proj(out), None


def exportable(module: nn.Module) -> nn.Module:
    """A copy of ``module`` sharing its weights, with every GRU cell and attention layer spelled out in
    operations the exporter traces with dynamic shapes (same formulas)."""
    swaps = {nn.GRUCell: _GRUCellOps, nn.MultiheadAttention: _AttentionOps}
    if type(module) in swaps:
        return swaps[type(module)](module)
    clone = copy.copy(module)
    clone._modules = {name: None if child is None else exportable(child) for name, child in module._modules.items()}
    return clone


class _DecoderGraph(nn.Module):
    """The slot loop over decoded rows under fixed rules, as a function of tensors only."""

    def __init__(self, model: GRN, rules: BusinessRules, slots: int):
        super().__init__()
        self.model, self.rules, self.slots = exportable(model), rules, slots

    def forward(self, candidates, state, cate, shop, ids, mask, noise, temperature):
        rows = torch.cumsum(torch.ones_like(state[:, 0], dtype=torch.long), 0) - 1  # the identity, shape-free
        hook = branch_free_rules_hook(self.rules, {"cate": cate, "shop": shop, "candidates": ids, "mask": mask})
        return self.model.decode_rows(Encoded(candidates, state, mask), self.slots, rows, hook, noise, temperature,
                                 with_allowed=True)


class _DictGraph(nn.Module):
    """A module over a batch dict as a function of positional tensors (what the exporter takes); ``outputs``
    name what it returns, picked from its output dict or, for the GRN's encoder, its ``Encoded``."""

    def __init__(self, module: nn.Module, keys: list[str], outputs: list[str], encoder: bool = False):
        super().__init__()
        self.module, self.keys, self.outputs, self.encoder = module, keys, outputs, encoder

    def forward(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        return _outputs(self.module, dict(zip(self.keys, tensors, strict=True)), self.outputs, self.encoder)


def _outputs(module: nn.Module, batch: dict[str, Tensor], names: list[str], encoder: bool) -> tuple[Tensor, ...]:
    if encoder:
        enc = module.encode(batch)
        return enc.candidates, enc.state
    out = module(batch)
    return tuple(out[name] for name in names)


class _Recording(dict):
    """A batch that remembers which keys were read: the graph's inputs are exactly those."""

    def __init__(self, batch: dict[str, Tensor]):
        super().__init__(batch)
        self.read: list[str] = []

    def __getitem__(self, key):
        if key not in self.read:
            self.read.append(key)
        return super().__getitem__(key)


def _export(module: nn.Module, args: tuple[Tensor, ...], names: list[str], outputs: list[str], path: Path) -> dict:
    """Write ``module`` as an ONNX graph with every axis of every input and output dynamic."""
    axes = {name: {axis: f"{name}_{axis}" for axis in range(tensor.dim())} for name, tensor in zip(names, args,
                                                                                                    strict=True)}
    fastpath = torch.backends.mha.get_fastpath_enabled()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation and tracer notes
        torch.backends.mha.set_fastpath_enabled(False)  # its fused attention kernel has no ONNX form
        try:
            out = module(*args)
            axes |= {name: {axis: f"{name}_{axis}" for axis in range(t.dim())} for name, t in zip(outputs, out,
                                                                                                 strict=True)}
            torch.onnx.export(module, args, str(path), dynamo=False, input_names=names, output_names=outputs,
                              dynamic_axes=axes, opset_version=OPSET, do_constant_folding=True)
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)
    return {"file": path.name, "inputs": list(names), "outputs": list(outputs)}


def _export_dict_module(module: nn.Module, batch: dict[str, Tensor], outputs: list[str], path: Path,
                        encoder: bool = False) -> dict:
    """Export a module over a batch dict; its inputs are the keys it reads (recorded on ``batch``)."""
    recording = _Recording(batch)
    with torch.no_grad():
        _outputs(module, recording, outputs, encoder)
    keys = list(recording.read)
    graph = _DictGraph(exportable(module), keys, outputs, encoder)
    return _export(graph, tuple(batch[k] for k in keys), keys, outputs, path)


def example_requests(store, candidates: int = 7, requests: int = 3):
    """Small synthetic requests to trace with (odd sizes, so no size can pass for a constant)."""
    from relist.data.requests import Requests

    ids = (np.arange(requests * candidates) % store.n_items + 1).reshape(requests, candidates)
    scores = np.linspace(0.9, 0.1, requests * candidates, dtype=np.float32).reshape(requests, candidates)
    return Requests.from_arrays(np.arange(requests), np.arange(requests) % store.n_users + 1, ids, scores)


def export_onnx(models, rules: BusinessRules, out_dir: str | Path, slots: int | None = None) -> Path:
    """Write the version's GRN (encoder and decoder under ``rules``), evaluator ensemble and teacher (where the
    models exist) as ONNX graphs into ``out_dir`` with a manifest; returns the manifest's path.

    ``models`` is a :class:`relist.rerank.registry.Models`; the decoder unrolls ``slots`` slots (default:
    the GRN's list length, at least 10).
    """
    from relist.models.inputs import list_inputs
    from relist.models.ranking.scoring import request_inputs
    from relist.rerank.generators import Context
    from relist.rerank.list_scorer import list_priors

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    requests = example_requests(models.store)
    ctx = Context(models.store, rules)
    graphs: dict[str, dict] = {}
    manifest = {"format": FORMAT, "opset": OPSET, "torch": torch.__version__,
                "rules": dataclasses.asdict(rules) | {"pinned": {str(k): v for k, v in rules.pinned.items()}}}
    if models.generator is not None:
        grn = models.generator.eval()
        slots = slots or max(grn.cfg.list_len, 10)
        batch = request_batch(requests, ctx)
        graphs["generator_encoder"] = _export_dict_module(grn, batch, ["candidates", "state"],
                                                          out / GRAPHS["generator_encoder"], encoder=True)
        with torch.no_grad():
            enc = grn.encode(batch)
        m = enc.mask.shape[1]
        args = (enc.candidates, enc.state, *[batch[name] for name in RULE_INPUTS],
                torch.rand(len(requests), slots, m), torch.tensor(1.0))
        graphs["generator_decoder"] = _export(_DecoderGraph(grn, rules, slots), args, list(DECODER_INPUTS),
                                              list(DECODER_OUTPUTS), out / GRAPHS["generator_decoder"])
        manifest["slots"] = slots
    if models.ranker is not None:
        teacher = models.ranker.eval()
        graphs["ranker"] = _export_dict_module(teacher, request_inputs(models.store, requests),
                                               sorted(teacher(request_inputs(models.store, requests[:1]))),
                                               out / GRAPHS["ranker"])
        terms = teacher.context_terms() if hasattr(teacher, "context_terms") else None
        if terms is not None:  # tables, not a graph: beam search and the evaluator's prior add them per list
            terms.save(out / SLOT_TERMS)
            manifest["slot_terms"] = {"file": SLOT_TERMS, "tasks": sorted(terms.pair)}
    scorer = models.evaluator
    if scorer is not None and hasattr(scorer, "model"):
        lists = requests.candidates[:, :5]
        batch = list_inputs(models.store, requests, lists)
        if scorer.prior is not None:
            batch |= list_priors(scorer.prior, models.store, requests, lists, np.arange(len(requests)))
        graphs["evaluator"] = _export_dict_module(scorer.model.eval(), batch, ["click", "next", "buy"],
                                                  out / GRAPHS["evaluator"])
        manifest["members"] = scorer.members
        manifest["exposure_weighted"] = scorer.exposure_weighted
    manifest["graphs"] = graphs
    path = out / MANIFEST
    path.write_text(json.dumps(manifest, indent=2))
    return path


def compiled_models(models, onnx_dir: str | Path, threads: int = 1, decoder_graph: bool = False):
    """``models`` with every role whose graph ``onnx_dir`` holds running on ONNX Runtime: the GRN as a
    :class:`CompiledGRN` (its slot loop in the kernel, or in the exported graph with ``decoder_graph``, as an
    edge device would run it), a GRN conditioned on the objective as a :class:`KernelGRN`, the teacher as an
    :class:`OnnxModule`, the evaluator compiled and reading the compiled teacher's logits as its prior (one
    teacher pass per request serves both)."""
    from relist.rerank.list_scorer import teacher_prior

    onnx_dir = Path(onnx_dir)
    manifest = json.loads((onnx_dir / MANIFEST).read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{onnx_dir / MANIFEST}: format {manifest.get('format')} is not {FORMAT}")
    graphs = manifest["graphs"]

    def graph(name: str) -> OnnxGraph:
        return OnnxGraph(onnx_dir / graphs[name]["file"], threads)

    changes = {}
    if "generator_decoder" in graphs and models.generator is not None:
        model = as_runner(models.generator).model
        rules = manifest["rules"]
        rules = BusinessRules(rules["cate_window"], rules["max_per_shop"],
                              {int(k): v for k, v in rules["pinned"].items()})
        decoder = graph("generator_decoder") if decoder_graph else None
        changes["generator"] = CompiledGRN(model, graph("generator_encoder"), decoder, rules, manifest["slots"])
    if models.generator_cmr is not None:  # its encoder reads the request's objective: no graph, the kernel decodes
        changes["generator_cmr"] = KernelGRN(as_runner(models.generator_cmr).model)
    ranker = models.ranker
    if "ranker" in graphs and ranker is not None:
        if "slot_terms" in manifest:
            terms = ContextTerms.load(onnx_dir / manifest["slot_terms"]["file"])
        else:  # an export written before the tables shipped with it
            terms = ranker.context_terms() if hasattr(ranker, "context_terms") else None
        ranker = changes["ranker"] = OnnxModule(graph("ranker"), graphs["ranker"]["outputs"], terms)
    scorer = models.evaluator
    if "evaluator" in graphs and scorer is not None:
        updates = {"compiled": OnnxModule(graph("evaluator"), ["click", "next", "buy"])}
        if scorer.prior is not None and ranker is not None:
            updates["prior"] = teacher_prior(ranker, scorer.model.cfg.prior_in_slot)
        changes["evaluator"] = scorer.replaced(**updates)
    return dataclasses.replace(models, **changes)
