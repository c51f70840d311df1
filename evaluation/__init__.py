"""The memory evaluation: long synthetic conversations with planted facts, run through the real
turn pipeline once per strategy, measured on what reached the model. ``python -m evaluation``."""
