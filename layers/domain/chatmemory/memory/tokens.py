"""Token accounting. Stored turns carry the model's own counts; only text the model has not
seen yet (the new message, the system prompt, the facts block) is estimated, from characters,
with a ratio calibrated against the input tokens the model reports."""

from __future__ import annotations

import math
import threading

from chatmemory.turns import Turn

# Role markers and separators the Messages API adds around each message (an upper bound).
MESSAGE_OVERHEAD = 4
_SMOOTHING = 0.2  # weight of the newest observation in the calibration
_SCALE_BOUNDS = (0.5, 2.0)  # a wild observation (an outage page, a bug) cannot skew it far


class TokenEstimator:
    """``chars / chars_per_token``, scaled by how the model's counts compared with earlier
    estimates. Shared by the turns of a process; the calibration is a moving average."""

    def __init__(self, chars_per_token: float) -> None:
        self._chars_per_token = chars_per_token
        self._scale = 1.0
        self._lock = threading.Lock()

    @property
    def scale(self) -> float:
        return self._scale

    def estimate(self, text: str) -> int:
        if not text:
            return 0
        return max(1, math.ceil(len(text) / self._chars_per_token * self._scale))

    def observe(self, estimated: int, reported: int) -> None:
        """Calibrate with one request: what was estimated for it and what the model counted."""
        if estimated <= 0 or reported <= 0:
            return
        ratio = self._scale * reported / estimated
        low, high = _SCALE_BOUNDS
        with self._lock:
            blended = (1 - _SMOOTHING) * self._scale + _SMOOTHING * ratio
            self._scale = min(high, max(low, blended))

    def turn_tokens(self, turn: Turn) -> int:
        """A stored turn's share of a prompt: the model's counts where it reported them."""
        user = turn.user_tokens or self.estimate(turn.user)
        reply = turn.output_tokens if turn.output_tokens and turn.status == "complete" else 0
        assistant = reply or self.estimate(turn.assistant or "")
        return user + assistant + 2 * MESSAGE_OVERHEAD
