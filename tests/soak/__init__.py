"""The 60 s soak (opt-in: ``pytest -m soak tests/soak``); tests/test_soak_short.py runs 10 s of it
in the default suite."""
