"""Session memory beyond the raw turns: strategies that turn a session into the model's context
within a token budget, and the running summary and facts that are kept off the hot path.

``manager.MemoryManager`` is what a turn uses; ``updater.MemoryUpdater`` is what runs after it.
"""
