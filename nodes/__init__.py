"""ComfyUI-facing node definitions: the only part of the pack that imports ``comfy``."""
