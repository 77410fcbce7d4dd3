"""SCSA semantic style transfer for ComfyUI: the pack's entry point (V3 node API).

ComfyUI imports this folder as a package and calls :func:`comfy_entrypoint`.
"""
from comfy_api.latest import ComfyExtension, io


class SCSAExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        from .nodes.scsa_nodes import NODES
        return NODES


async def comfy_entrypoint() -> SCSAExtension:
    return SCSAExtension()
