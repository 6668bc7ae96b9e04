"""relist's benchmarks: one harness (:mod:`benchmarks.harness`), one module per study in
:mod:`benchmarks.studies`, one config file per study in ``benchmarks/configs``, results in
``benchmarks/results``. Run one with ``python -m benchmarks STUDY`` (or ``relist bench STUDY``)."""
