"""SCSA semantic style transfer for ComfyUI: the pack's entry point (V3 node API).

ComfyUI imports this folder as a package and awaits :func:`comfy_entrypoint`. Importing the
package itself needs nothing from ComfyUI (test runners import it while collecting).
"""


async def comfy_entrypoint():
    from comfy_api.latest import ComfyExtension

    from .nodes.mask_nodes import NODES as MASK_NODES
    from .nodes.scsa_nodes import NODES

    class SCSAExtension(ComfyExtension):
        async def get_node_list(self):
            return NODES + MASK_NODES

    return SCSAExtension()
