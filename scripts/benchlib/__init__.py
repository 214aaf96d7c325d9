"""The benchmark scenarios of ``scripts/bench.py`` (``registry.py`` lists them) and the
helpers they share (``common.py``)."""
