"""Progress read from a provider's log text: the last tqdm bar line (``  25%|██▌  | 1/4 [...]``).

Hosted runners (Replicate's predictions, fal's queue) hand back the model's own stdout,
where diffusers prints a tqdm bar per sampling loop. The pattern is replicate-python's
(``replicate/prediction.py`` ``Prediction.Progress._pattern`` @0110c2c5): percentage, then
a bar between pipes, then ``current/total``; the last matching line wins.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["tqdm_progress"]

_BAR = re.compile(r"^\s*(\d+)%\s*\|.+?\|\s*(\d+)/(\d+)")


def tqdm_progress(lines: Iterable[str]) -> tuple[int, int] | None:
    """``(step, steps)`` of the last tqdm bar among ``lines`` (each may hold several
    newline- or carriage-return-separated lines), or None when there is none."""
    found: tuple[int, int] | None = None
    for text in lines:
        for line in re.split(r"[\r\n]", text):
            match = _BAR.match(line)
            if match and int(match[3]) > 0:
                found = int(match[2]), int(match[3])
    return found
