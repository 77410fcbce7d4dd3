"""Put the pack's example inputs into ComfyUI's input folder, so the templates run as opened.

The example workflows' Load Image nodes name ``scsa_example_*.png`` (painted by
scripts/make_example_inputs.py, shipped in ``workflows/inputs/``). At start-up the pack copies
each of them into the input folder when no file of that name is there. A user's file is never
replaced: a file of the same name with other content is left alone (one log line says so), and
the copy is made with an exclusive create, so a file that appears meanwhile is not overwritten
either. Nothing here may stop the pack from loading: problems are logged, never raised.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("scsa")

EXAMPLE_DIR = Path(__file__).resolve().parent.parent / "workflows" / "inputs"
PATTERN = "scsa_example_*.png"


def example_files(example_dir: Path = EXAMPLE_DIR) -> list[Path]:
    """The shipped example inputs, sorted by name."""
    return sorted(p for p in Path(example_dir).glob(PATTERN) if p.is_file())


def install_examples(input_dir: str | os.PathLike | None = None,
                     example_dir: Path = EXAMPLE_DIR) -> dict[str, str]:
    """Copy the example inputs into ``input_dir`` (default: ComfyUI's input folder).

    Returns ``{file name: outcome}``, the outcome being "copied", "present" (an identical file
    is there), "kept" (a different file of that name is there: left alone) or "failed: <why>".
    """
    if input_dir is None:
        import folder_paths
        input_dir = folder_paths.get_input_directory()
    target_dir = Path(input_dir)
    outcomes = {}
    for source in example_files(example_dir):
        target = target_dir / source.name
        try:
            data = source.read_bytes()
            if target.exists():
                same = target.is_file() and target.stat().st_size == len(data) and target.read_bytes() == data
                outcomes[source.name] = "present" if same else "kept"
                if not same:
                    log.info("SCSA: %s in the input folder is not the pack's example image; it is left as it "
                             "is (the example workflows will load that file)", target)
                continue
            target_dir.mkdir(parents=True, exist_ok=True)
            try:
                _create_exclusively(target, data)
                outcomes[source.name] = "copied"
            except FileExistsError:   # created by someone else since the check: theirs stays
                outcomes[source.name] = "kept"
        except OSError as e:
            outcomes[source.name] = f"failed: {e}"
            log.warning("SCSA: could not copy the example image %s to %s: %s", source.name, target_dir, e)
    copied = [name for name, outcome in outcomes.items() if outcome == "copied"]
    if copied:
        log.info("SCSA: example images for the templates copied to %s: %s", target_dir, ", ".join(copied))
    return outcomes


def _create_exclusively(target: Path, data: bytes) -> None:
    """Write ``data`` to a new file ``target``; FileExistsError if it exists. A partial file
    left by a failed write is removed, so the next start copies it again."""
    with open(target, "xb") as f:
        try:
            f.write(data)
        except BaseException:
            f.close()
            target.unlink(missing_ok=True)
            raise
