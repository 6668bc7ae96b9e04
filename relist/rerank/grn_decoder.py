"""The GRN's slot loop under the business rules as one numba kernel: no per-operation dispatch inside a decode.

A 10-slot decode of a few rows is some 500 tiny operations; in ONNX Runtime the unrolled graph
(relist.rerank.compiled) still pays ~2.4 ms for 5 rows, most of it per operation, not arithmetic. This
kernel runs the same arithmetic as :meth:`relist.models.generator.GRN.decode_rows` in one call per decode,
with the rules' relaxation order of :meth:`relist.rerank.rules.BusinessRules.feasible_mask` inside the
loop, so it takes any rules and any number of slots (the graph fixes both when it is exported). It
picks the same candidates as the eager decoder up to float rounding (tests/test_grn_decoder.py);
``benchmarks/results/rerank_latency.json`` has what it costs.

Beside it, :func:`logp_gradients` is LAST's gradient: the forward pass of the decoded picks and its backward
pass written out, autograd's gradient to float rounding (the same test file) at a tenth of its cost.

Both release the GIL, so the server's pipeline threads run them side by side.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numba
import numpy as np
import torch
from numpy.polynomial import polynomial as P
from torch import Tensor

from relist.data.padding import NEG_INF
from relist.models.generator import GRN, Encoded
from relist.rerank.rules import BusinessRules


def _tanh_fraction(depth: int) -> tuple[np.ndarray, np.ndarray]:
    """Polynomials P, Q in y = x² with tanh(x) ≈ x P(y) / Q(y): Lambert's continued fraction
    x / (1 + x²/(3 + x²/(5 + ...))) cut after ``depth`` terms, folded into one fraction."""
    numerator, denominator = np.array([1.0]), np.array([2.0 * depth + 1])
    for k in range(depth - 1, -1, -1):
        numerator, denominator = denominator, P.polyadd((2 * k + 1) * denominator, P.polymulx(numerator))
    return (numerator / denominator[0]).astype(np.float32), (denominator / denominator[0]).astype(np.float32)


# 12 terms, the argument clipped at +-9 (where float32 tanh is 1): within 4e-7 of tanh everywhere
TANH_NUMERATOR, TANH_DENOMINATOR = _tanh_fraction(12)
TANH_SATURATES = 9.0


@dataclass(frozen=True)
class DecoderWeights:
    """The weights the slot loop reads, as contiguous float32 arrays (taken once per model)."""

    gru_ih: np.ndarray  # [3h, h]
    gru_ih_bias: np.ndarray  # [3h]
    gru_hh: np.ndarray  # [3h, h]
    gru_hh_bias: np.ndarray  # [3h]
    start: np.ndarray  # [h]
    glimpse_t: np.ndarray  # [h, h], transposed: candidates @ it
    keys_t: np.ndarray  # [h, h], transposed
    query_state: np.ndarray  # [h, h], the pointer query's weights on the state
    query_context: np.ndarray  # [h, h], and on the glimpse's context
    query_bias: np.ndarray  # [h]
    out: np.ndarray  # [h]

    @classmethod
    def of(cls, model: GRN) -> DecoderWeights:
        def array(t: Tensor) -> np.ndarray:
            return np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.float32)

        gru, h = model.gru, model.cfg.hidden
        query = model.pointer_query.weight
        return cls(array(gru.weight_ih), array(gru.bias_ih), array(gru.weight_hh), array(gru.bias_hh),
                   array(model.start), array(model.glimpse.weight.T), array(model.pointer_keys.weight.T),
                   array(query[:, :h]), array(query[:, h:]), array(model.pointer_query.bias),
                   array(model.pointer_out.weight[0]))

    def arrays(self) -> tuple[np.ndarray, ...]:
        """The weights in the order the kernels take them, then the pointer's tanh fraction."""
        return (*(getattr(self, f.name) for f in fields(self)), TANH_NUMERATOR, TANH_DENOMINATOR)


def decode_rows(weights: DecoderWeights, enc: Encoded, rule_inputs: dict[str, Tensor], n: int,
                rules: BusinessRules | None, noise: Tensor | None = None,
                temperature: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """``GRN.decode_rows(..., with_allowed=True)`` under ``rules_hook(rules, rule_inputs)``, in one kernel call:
    candidate columns [N, n] (-1 once nothing is left), each pick's log-probability [N, n] and the
    candidates each slot allowed [N, n, m]. ``noise`` [N, n, m] is added before the argmax (None: greedy)."""
    rows, m, _ = enc.candidates.shape
    rules = rules or BusinessRules(cate_window=0)
    pins = sorted(rules.pinned.items())
    mask = rule_inputs["mask"].numpy()
    choice = np.empty((rows, n), np.int64)
    step_logp = np.empty((rows, n), np.float32)
    allowed = np.empty((rows, n, m), np.bool_)
    _decode(np.ascontiguousarray(enc.candidates.detach().numpy(), dtype=np.float32),
            np.ascontiguousarray(enc.state.detach().numpy(), dtype=np.float32), mask & enc.mask.numpy(),
            rule_inputs["cate"].numpy().astype(np.int64, copy=False),
            rule_inputs["shop"].numpy().astype(np.int64, copy=False),
            rule_inputs["candidates"].numpy().astype(np.int64, copy=False),
            np.zeros((1, 1, 1), np.float32) if noise is None else np.ascontiguousarray(noise.numpy(),
                                                                                        dtype=np.float32),
            noise is not None, float(temperature), *weights.arrays(),
            rules.cate_window, -1 if rules.max_per_shop is None else rules.max_per_shop,
            np.array([s for s, _ in pins], np.int64), np.array([i for _, i in pins], np.int64),
            choice, step_logp, allowed)
    return torch.from_numpy(choice), torch.from_numpy(step_logp), torch.from_numpy(allowed)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _decode(cands, state0, real, cates, shops, ids, noise, noisy, temperature, w_ih, b_ih, w_hh, b_hh, start,
            glimpse_t, keys_t, query_state, query_context, b_query, w_out, tanh_p, tanh_q, window, shop_cap,
            pin_slots, pin_items, choice, step_logp, allowed):  # pragma: no cover - compiled
    """Every row's slot loop; writes ``choice``, ``step_logp`` and ``allowed``."""
    rows, m, h = cands.shape
    n = choice.shape[1]
    scale = np.float32(np.sqrt(h))
    state = np.empty(h, np.float32)
    scores = np.empty(m, np.float32)
    th = np.empty((m, h), np.float32)
    query = np.empty(h, np.float32)
    chosen = np.zeros(m, np.bool_)
    for r in range(rows):
        c = cands[r]
        keys, glimpse_keys = np.dot(c, keys_t), np.dot(c, glimpse_t)
        _gru(start, state0[r], w_ih, b_ih, w_hh, b_hh, state)
        chosen[:] = False
        for slot in range(n):
            mask = allowed[r, slot]
            if not _feasible(mask, slot, r, real, chosen, ids, cates, shops, choice[r], window, shop_cap,
                             pin_slots, pin_items):  # every candidate is placed: so are the later slots
                choice[r, slot:], step_logp[r, slot:], allowed[r, slot:] = -1, 0.0, False
                break
            # the glimpse: attention of the state over the allowed candidates
            glimpse = np.dot(glimpse_keys, state)
            top = NEG_INF
            for j in range(m):
                scores[j] = glimpse[j] / scale if mask[j] else NEG_INF
                top = max(top, scores[j])
            total = 0.0
            for j in range(m):
                scores[j] = np.exp(scores[j] - top)
                total += scores[j]
            context = np.dot(scores / np.float32(total), c)
            query[:] = b_query + np.dot(query_state, state) + np.dot(query_context, context)
            # the pointer: every allowed candidate's logit, then the log-softmax at the temperature
            _pointer_tanh(keys, query, tanh_p, tanh_q, th)
            logits = np.dot(th, w_out)
            top = NEG_INF / temperature
            for j in range(m):
                scores[j] = (logits[j] if mask[j] else NEG_INF) / temperature
                top = max(top, scores[j])
            total = 0.0
            for j in range(m):
                total += np.exp(scores[j] - top)
            norm = top + np.log(total)
            pick, best = 0, -np.inf
            for j in range(m):
                value = scores[j] - norm + (noise[r, slot, j] if noisy else 0.0)
                if value > best:
                    pick, best = j, value
            choice[r, slot], step_logp[r, slot], chosen[pick] = pick, scores[pick] - norm, True
            _gru(c[pick], state.copy(), w_ih, b_ih, w_hh, b_hh, state)


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _gru(x, hidden, w_ih, b_ih, w_hh, b_hh, out):  # pragma: no cover - compiled
    """``nn.GRUCell``'s formula (gates r, z, n) into ``out``."""
    _gru_from_gates(b_ih + np.dot(w_ih, x), b_hh + np.dot(w_hh, hidden), hidden, out)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _feasible(mask, slot, r, real, chosen, ids, cates, shops, prefix, window, shop_cap, pin_slots,
              pin_items):  # pragma: no cover - compiled
    """``BusinessRules.feasible_mask`` for row ``r`` at ``slot`` into ``mask``: the full rules, else the least
    relaxed that leave a candidate (narrower window, no shop cap, pinned items freed). True if any is left."""
    if _allowed(mask, slot, r, real, chosen, ids, cates, shops, prefix, window, shop_cap, True, pin_slots,
                pin_items):
        return True
    for narrower in range(window - 1, -1, -1):
        if _allowed(mask, slot, r, real, chosen, ids, cates, shops, prefix, narrower, shop_cap, True, pin_slots,
                    pin_items):
            return True
    if _allowed(mask, slot, r, real, chosen, ids, cates, shops, prefix, 0, -1, True, pin_slots, pin_items):
        return True
    return _allowed(mask, slot, r, real, chosen, ids, cates, shops, prefix, 0, -1, False, pin_slots, pin_items)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _allowed(mask, slot, r, real, chosen, ids, cates, shops, prefix, window, shop_cap, reserve, pin_slots,
             pin_items):  # pragma: no cover - compiled
    """``BusinessRules.allowed_mask`` for row ``r`` into ``mask`` (``shop_cap`` -1: off); True if any is allowed."""
    m = mask.shape[0]
    pinned_here = -1
    for p in range(len(pin_slots)):
        if pin_slots[p] == slot:
            pinned_here = p
    has_pin = False
    for j in range(m):
        ok = real[r, j] and not chosen[j]
        if ok and reserve:
            for p in range(len(pin_slots)):
                if pin_slots[p] != slot and ids[r, j] == pin_items[p]:
                    ok = False
        mask[j] = ok
        if ok and pinned_here >= 0 and ids[r, j] == pin_items[pinned_here]:
            has_pin = True
    if has_pin:
        for j in range(m):
            mask[j] = mask[j] and ids[r, j] == pin_items[pinned_here]
    left = False
    for j in range(m):
        if mask[j] and not has_pin:
            if window > 0 and cates[r, j] != 0:
                for t in range(max(0, slot - window), slot):
                    if cates[r, max(prefix[t], 0)] == cates[r, j]:
                        mask[j] = False
            if shop_cap >= 0 and slot > 0 and shops[r, j] != 0:
                count = 0
                for t in range(slot):
                    count += shops[r, max(prefix[t], 0)] == shops[r, j]
                if count >= shop_cap:
                    mask[j] = False
        left = left or mask[j]
    return left


def logp_gradients(weights: DecoderWeights, enc: Encoded, choice: Tensor, allowed: Tensor,
                   temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """The gradient of each decoded row's log-probability of its picks (the sum over slots of
    :meth:`GRN.forced_logp`) in its candidate states [N, m, h] and first decoder state [N, h]: the forward
    pass and its backward pass written out in one kernel call (what LAST's shift of the activations needs;
    autograd over the same small tensors costs milliseconds of dispatch)."""
    rows, m, h = enc.candidates.shape
    grad_candidates = np.zeros((rows, m, h), np.float32)
    grad_state = np.zeros((rows, h), np.float32)
    _logp_gradients(np.ascontiguousarray(enc.candidates.detach().numpy(), dtype=np.float32),
                    np.ascontiguousarray(enc.state.detach().numpy(), dtype=np.float32),
                    np.ascontiguousarray(choice.numpy(), dtype=np.int64), np.ascontiguousarray(allowed.numpy()),
                    float(temperature), *weights.arrays(), grad_candidates, grad_state)
    return torch.from_numpy(grad_candidates), torch.from_numpy(grad_state)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _logp_gradients(cands, state0, choice, allowed, temperature, w_ih, b_ih, w_hh, b_hh, start, glimpse_t, keys_t,
                    query_state, query_context, b_query, w_out, tanh_p, tanh_q, grad_c,
                    grad_s):  # pragma: no cover - compiled
    """Every row's forward pass (the states the forced picks lead to, each slot's pointer), then its backward
    pass into ``grad_c`` and ``grad_s``."""
    rows, m, h = cands.shape
    n = choice.shape[1]
    scale = np.float32(np.sqrt(h))
    states = np.empty((n + 1, h), np.float32)  # states[0]: the encoder's; states[t + 1]: what slot t reads
    gates_i = np.empty((n, 3 * h), np.float32)  # each GRU step's input and hidden projections
    gates_h = np.empty((n, 3 * h), np.float32)
    grad_states = np.empty((n + 1, h), np.float32)
    th = np.empty((m, h), np.float32)
    logits = np.empty(m, np.float32)
    for r in range(rows):
        c = cands[r]
        keys, glimpse_keys = np.dot(c, keys_t), np.dot(c, glimpse_t)
        grad_keys = np.zeros((m, h), np.float32)
        grad_glimpse_keys = np.zeros((m, h), np.float32)
        states[0] = state0[r]
        for t in range(n):  # step t reads start (t = 0) or the item slot t - 1 placed
            x = start if t == 0 else c[max(choice[r, t - 1], 0)]
            gates_i[t] = b_ih + np.dot(w_ih, x)
            gates_h[t] = b_hh + np.dot(w_hh, states[t])
            _gru_from_gates(gates_i[t], gates_h[t], states[t], states[t + 1])
        grad_states[:] = 0.0
        for t in range(n):
            mask = allowed[r, t]
            if not mask.any():
                continue  # a slot with nothing left adds 0 to the log-probability
            state = states[t + 1]
            glimpse = np.dot(glimpse_keys, state) / scale
            attention = np.zeros(m, np.float32)
            top = NEG_INF
            for j in range(m):
                if mask[j]:
                    top = max(top, glimpse[j])
            for j in range(m):
                if mask[j]:
                    attention[j] = np.exp(glimpse[j] - top)
            attention /= attention.sum()
            context = np.dot(attention, c)
            query = b_query + np.dot(query_state, state) + np.dot(query_context, context)
            _pointer_tanh(keys, query, tanh_p, tanh_q, th)
            logits[:] = np.dot(th, w_out) / temperature
            top = NEG_INF
            for j in range(m):
                if mask[j]:
                    top = max(top, logits[j])
            total = 0.0
            for j in range(m):
                if mask[j]:
                    total += np.exp(logits[j] - top)
            # d logp(pick) / d logit_j = (1[j = pick] - p_j) / T on the allowed candidates, 0 elsewhere
            grad_query = np.zeros(h, np.float32)
            for j in range(m):
                if not mask[j]:
                    continue
                grad_logit = ((1.0 if j == choice[r, t] else 0.0) - np.exp(logits[j] - top) / total) / temperature
                for k in range(h):
                    grad_u = grad_logit * w_out[k] * (1.0 - th[j, k] * th[j, k])
                    grad_keys[j, k] += grad_u
                    grad_query[k] += grad_u
            grad_states[t + 1] += np.dot(grad_query, query_state)
            grad_context = np.dot(grad_query, query_context)
            grad_attention = np.dot(c, grad_context)
            grad_c[r] += np.outer(attention, grad_context)
            grad_glimpse = attention * (grad_attention - np.dot(attention, grad_attention)) / scale
            grad_glimpse_keys += np.outer(grad_glimpse, state)
            grad_states[t + 1] += np.dot(grad_glimpse, glimpse_keys)
        grad_c[r] += np.dot(grad_keys, keys_t.T) + np.dot(grad_glimpse_keys, glimpse_t.T)
        for t in range(n - 1, -1, -1):  # back through the GRU steps: into their inputs and earlier states
            grad_x, grad_h = _gru_backward(gates_i[t], gates_h[t], states[t], states[t + 1], grad_states[t + 1],
                                           w_ih, w_hh)
            grad_states[t] += grad_h
            if t > 0:
                grad_c[r, max(choice[r, t - 1], 0)] += grad_x
        grad_s[r] = grad_states[0]


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=True)
def _pointer_tanh(keys, query, p, q, out):  # pragma: no cover - compiled
    """``out = tanh(keys + query)`` [m, h], tanh as the fraction x P(x²) / Q(x²) (P, Q of degree 6): no call in
    the loop, so it runs on vector lanes (libm's tanh is most of a decode's time otherwise)."""
    m, h = keys.shape
    for j in range(m):
        for k in range(h):
            x = min(max(keys[j, k] + query[k], np.float32(-TANH_SATURATES)), np.float32(TANH_SATURATES))
            y = x * x
            top = ((((((p[6] * y + p[5]) * y + p[4]) * y + p[3]) * y + p[2]) * y + p[1]) * y + p[0])
            bottom = ((((((q[6] * y + q[5]) * y + q[4]) * y + q[3]) * y + q[2]) * y + q[1]) * y + q[0])
            out[j, k] = min(max(x * top / bottom, np.float32(-1.0)), np.float32(1.0))


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _gru_from_gates(gi, gh, hidden, out):  # pragma: no cover - compiled
    """``nn.GRUCell``'s formula from its input and hidden projections ``gi``, ``gh`` [3h] into ``out``."""
    h = hidden.shape[0]
    for k in range(h):
        reset = 1.0 / (1.0 + np.exp(-(gi[k] + gh[k])))
        update = 1.0 / (1.0 + np.exp(-(gi[h + k] + gh[h + k])))
        candidate = np.tanh(gi[2 * h + k] + reset * gh[2 * h + k])
        out[k] = (1.0 - update) * candidate + update * hidden[k]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _gru_backward(gi, gh, hidden, out, grad_out, w_ih, w_hh):  # pragma: no cover - compiled
    """The gradient of a GRU step's output (``grad_out``) in its input and its hidden state."""
    h = hidden.shape[0]
    grad_gi = np.empty(3 * h, np.float32)
    grad_gh = np.empty(3 * h, np.float32)
    grad_h = np.empty(h, np.float32)
    for k in range(h):
        reset = 1.0 / (1.0 + np.exp(-(gi[k] + gh[k])))
        update = 1.0 / (1.0 + np.exp(-(gi[h + k] + gh[h + k])))
        candidate = np.tanh(gi[2 * h + k] + reset * gh[2 * h + k])
        grad_candidate = grad_out[k] * (1.0 - update) * (1.0 - candidate * candidate)
        grad_reset = grad_candidate * gh[2 * h + k] * reset * (1.0 - reset)
        grad_update = grad_out[k] * (hidden[k] - candidate) * update * (1.0 - update)
        grad_gi[k], grad_gi[h + k], grad_gi[2 * h + k] = grad_reset, grad_update, grad_candidate
        grad_gh[k], grad_gh[h + k], grad_gh[2 * h + k] = grad_reset, grad_update, grad_candidate * reset
        grad_h[k] = grad_out[k] * update
    return np.dot(grad_gi, w_ih), grad_h + np.dot(grad_gh, w_hh)
