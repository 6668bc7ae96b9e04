"""One module per study: a pydantic ``Config`` and ``run(cfg, work) -> dict`` (see benchmarks.harness)."""
