"""Every list model by name: a spec names its model, and the model brings its loss (and, to generate, its decoder).

Adding a list model is one class that meets relist.models.contract plus one line here; its trainer
fits it with ``model.loss`` and the re-ranking policy decodes it with ``model.decode``. The GRN's
rewards come from the frozen evaluator it is trained against (relist.train.generator pays each pick).
"""

from __future__ import annotations

from relist.models.baselines.dlcm import DLCM
from relist.models.baselines.prm import PRM
from relist.models.baselines.seq2slate import Seq2Slate
from relist.models.contract import ListModel
from relist.models.evaluator import Evaluator
from relist.models.generator import GRN

# name -> class built as ``cls(vocab, cfg)``; the names are the model folders' role names
LIST_MODELS: dict[str, type[ListModel]] = {"evaluator": Evaluator, "generator": GRN, "prm": PRM, "dlcm": DLCM,
                                           "seq2slate": Seq2Slate}

