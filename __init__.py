"""SCSA semantic style transfer for ComfyUI: the pack's entry point (V3 node API).

ComfyUI imports this folder as a package and awaits :func:`comfy_entrypoint`. Importing the
package itself needs nothing from ComfyUI (test runners import it while collecting).
"""


async def comfy_entrypoint():
    import logging

    from comfy_api.latest import ComfyExtension

    from .nodes.example_inputs import install_examples
    from .nodes.diffusion_nodes import NODES as DIFFUSION_NODES
    from .nodes.feedforward import NODES as FEEDFORWARD_NODES
    from .nodes.mask_nodes import NODES as MASK_NODES
    from .nodes.semantic_nodes import NODES as SEMANTIC_NODES
    from .nodes.style_library_nodes import NODES as STYLE_LIBRARY_NODES

    class SCSAExtension(ComfyExtension):
        loaded = False

        async def on_load(self):
            """Once per start: the example images the templates load go into the input folder.
            ComfyUI 0.33 awaits this before get_node_list; 0.3.75 defines it but never calls it,
            so get_node_list calls it too, and the flag keeps it to one run."""
            if self.loaded:
                return
            self.loaded = True
            try:
                install_examples()
            except Exception as e:   # examples are a convenience: the nodes must load regardless
                logging.getLogger("scsa").warning("SCSA: the example images were not installed: %s", e)

        async def get_node_list(self):
            await self.on_load()
            return SEMANTIC_NODES + MASK_NODES + DIFFUSION_NODES + STYLE_LIBRARY_NODES + FEEDFORWARD_NODES

    return SCSAExtension()
