"""The HTTP service: FastAPI app (app), request/response bodies (schemas), the per-request pipeline
(pipeline, stages, budget), versioned model directories (registry), Prometheus metrics (metrics)."""
