"""``mirasol-run --view``: a live page beside a run (Starlette + uvicorn, the ``view`` extra).
Nothing in the runtime imports it; the CLI imports it only when ``--view`` is given."""
