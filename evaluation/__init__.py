"""The memory evaluation. ``python -m evaluation --locomo PATH``: conversations of the public
LoCoMo benchmark replayed through the real turn pipeline, each strategy the domain registers
and retrieval baselines scored on whether a question's evidence reached the prompt
(``evaluation.replay``). ``python -m evaluation.smoke``: the synthetic planted-fact smoke test."""
