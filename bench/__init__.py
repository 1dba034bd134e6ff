"""Load and latency benchmarks of Blueline against baselines measured in the same run.

Run ``python -m bench [scenario ...] [--smoke]``; see ``bench/README.md``.
"""
