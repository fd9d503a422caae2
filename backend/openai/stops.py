"""Cut stop sequences out of streamed text, so a stop string never reaches the client.

Text arrives in pieces; a piece may end with the first characters of a stop
sequence (``"##"`` of ``"###"``). Those characters are held back until the
next piece shows whether the stop sequence follows. The text before the first
stop sequence is all the client gets.
"""

from __future__ import annotations

from collections.abc import Iterable


class StopCutter:
    def __init__(self, stops: Iterable[str]):
        self._stops = tuple(s for s in stops if s)
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """The part of ``held + text`` that is safe to send now."""
        if self.stopped:
            return ""
        buffer = self._held + text
        hits = [i for i in (buffer.find(s) for s in self._stops) if i >= 0]
        if hits:
            self.stopped = True
            self._held = ""
            return buffer[:min(hits)]
        keep = self._partial_stop_length(buffer)
        self._held = buffer[len(buffer) - keep:]
        return buffer[:len(buffer) - keep]

    def flush(self) -> str:
        """The end of the text: what was held back is not a stop sequence after all."""
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _partial_stop_length(self, buffer: str) -> int:
        """Length of the longest end of ``buffer`` that is the start of a stop sequence."""
        longest = max((len(s) for s in self._stops), default=1) - 1
        for n in range(min(longest, len(buffer)), 0, -1):
            tail = buffer[-n:]
            if any(s.startswith(tail) for s in self._stops):
                return n
        return 0
