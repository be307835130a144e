"""pfx's benchmarks: each module prints markdown tables (``--json``: the numbers) and is run from
the repository root as ``python -m bench.NAME``; the README quotes their output with the command
that made it. What they share is in :mod:`bench.common`. They are never part of ``make test``.

Modules: ``bench.format``, ``bench.runtime``, ``bench.training``, ``bench.client``,
``bench.registry``, and the toy world ``bench.toyworld.run``. Some build on the test suite's
helpers (``tests/tiny_pipelines.py``, ``tests/training_images.py``), imported as ``tests.…``.
"""
