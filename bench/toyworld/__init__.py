"""The toy world of issue 7: a world of drawn shapes, an instrument that reads it, and a tiny
SD-shaped model pretrained on it, on which Perfusion's claims can be measured in small.

``python bench/toyworld/run.py`` runs the stages and caches what they make (see run.py).
Importing the package puts the repository's ``tests`` folder on ``sys.path``: the base model's
tokenizer is built by ``tests/tiny_pipelines.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

if str(REPO / "tests") not in sys.path:
    sys.path.append(str(REPO / "tests"))
