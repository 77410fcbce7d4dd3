"""What a layout probe reads from ``transformer_options`` at each attention call (shared by
tests/test_flux_layout.py and tests/test_dit_layout.py)."""


def block_position(options: dict) -> dict:
    """The block position a hook reads from transformer_options, copied at call time (0.3.75
    mutates one dict through the whole forward)."""
    img_slice = options.get("img_slice")
    return {"block_type": options.get("block_type"), "block_index": options.get("block_index"),
            "total_blocks": options.get("total_blocks"),
            "img_slice": list(img_slice) if img_slice is not None else None}


def block_order(records) -> list:
    """``(block_type, block_index, total_blocks)`` of each recorded call, in call order."""
    return [(r["block_type"], r["block_index"], r["total_blocks"]) for r in records]
