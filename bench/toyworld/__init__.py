"""The toy world of issue 7: a world of drawn shapes, an instrument that reads it, and a tiny
SD-shaped model pretrained on it, on which Perfusion's claims can be measured in small.

``python -m bench.toyworld.run`` (from the repository root) runs the stages and caches what they
make (see run.py). The base model's tokenizer is built by ``tests/tiny_pipelines.py``.
"""
