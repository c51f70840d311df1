"""Benchmarks of the per-turn memory work, side by side with LangChain's chat histories and the
naive session blob; cold start of each function; the round-trip floor. Run: ``python -m bench``."""
