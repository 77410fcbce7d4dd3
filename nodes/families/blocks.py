"""The ``blocks`` input's syntax, shared by every family: ``"output 6-11"``,
``"single 19-37, double 14-18"``; a family gives its own block names."""
from __future__ import annotations

import re


def parse_blocks(text: str, names, example: str, default_name: str | None = None) -> list[tuple[str, int]]:
    """``"output 6-11"`` / ``"output 6, output 7; input 4-5"`` -> ``[("output", 6), ...]``, for a
    family whose blocks are called ``names`` (e.g. input / middle / output). ``default_name``:
    the name of bare numbers (``"40-59"``) before any name is written (families with one kind
    of block)."""
    item_pattern = re.compile(rf"^({'|'.join(map(re.escape, names))})\s*(\d+)?(?:\s*-\s*(\d+))?$")
    blocks, name = [], default_name
    for item in re.split(r"[,;]", text):
        item = item.strip().lower()
        if not item:
            continue
        if item[:1].isdigit() and name:  # "output 6, 9-10": the block name carries over
            item = f"{name} {item}"
        match = item_pattern.match(item)
        if not match:
            raise ValueError(f'blocks: cannot read "{item}". Write e.g. "{example}" or "auto" '
                             f"(block names here: {', '.join(names)}).")
        name = match.group(1)
        first = int(match.group(2) or 0)
        last = int(match.group(3) or first)
        blocks += [(name, number) for number in range(first, last + 1)]
    return blocks
