"""Work shared by everything one list-ranking call runs: computed once per batch of requests.

Several generators read the same intermediate results of a request: the GRN's encoding (``grn``,
``grn_samples`` and LAST decode from it) and the fine-ranking teacher's logits (``greedy_ctr``,
``beam`` and every evaluator call, whose prior they are). Inside :func:`scope` (list ranking opens
one per call) :func:`once` computes such a result the first time it is asked for and hands the
same object out after that; outside a scope it simply computes. A scope belongs to its thread,
so concurrent calls never see each other's results, and it ends with the call, so nothing is kept
between requests.

Results are keyed by what they are (``kind``), whose they are (``owner``: the model), the store
they read and the content of the requests (ids, users, candidates, upstream scores, and whatever
else the caller says the result depends on), never by object identity of the requests, so a
sub-batch or a copy of the same requests finds them too.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import numpy as np

from relist.data.requests import Requests

T = TypeVar("T")
_local = threading.local()


@contextmanager
def scope() -> Iterator[None]:
    """Share work until the block ends (a nested scope joins the outer one)."""
    if getattr(_local, "memo", None) is not None:
        yield
        return
    _local.memo = {}
    try:
        yield
    finally:
        _local.memo = None


def fingerprint(requests: Requests, *more: np.ndarray | None) -> bytes:
    """A digest of the requests' content (and of ``more`` arrays, e.g. rule attributes)."""
    digest = hashlib.blake2b(digest_size=16)
    for array in (requests.request_id, requests.user_id, requests.candidates, requests.cand_scores, *more):
        if array is not None:
            array = np.ascontiguousarray(array)
            digest.update(str(array.shape).encode() + array.tobytes())
    return digest.digest()


def once(kind: str, owner: object, requests: Requests, store: object, compute: Callable[[], T],
         *depends_on: np.ndarray | None) -> T:
    """``compute()`` the first time in this scope for (kind, owner, store, requests' content); the same result
    after that. Outside a scope, ``compute()``."""
    memo = getattr(_local, "memo", None)
    if memo is None:
        return compute()
    key = (kind, id(owner), id(store), fingerprint(requests, *depends_on))
    if key not in memo:
        memo[key] = compute()
    return memo[key]
