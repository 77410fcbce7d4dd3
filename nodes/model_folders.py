"""The pack's folders in ComfyUI's model paths (``models/<name>``, plus any
``extra_model_paths.yaml`` entries for that name)."""
from __future__ import annotations

import os

import folder_paths


def register_model_folder(name: str, extensions) -> None:
    """Add ``models/<name>`` after the yaml's folders and make ``extensions`` listable there.

    ComfyUI registers the yaml's folders before custom nodes load, with an empty extension set
    (which would list every file); the given extensions are added to what is there.
    """
    folder_paths.add_model_folder_path(name, os.path.join(folder_paths.models_dir, name))
    paths, known = folder_paths.folder_names_and_paths[name]
    folder_paths.folder_names_and_paths[name] = (paths, set(known) | set(extensions))
