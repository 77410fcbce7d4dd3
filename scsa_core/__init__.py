"""scsa_core: the pure-torch heart of the SCSA node pack (no ComfyUI imports, no I/O).

Data flow, from the nodes downwards:
  styles      how many style images a run takes; each style's stream and input names
  presets     the ``default`` / ``official`` preset, and how each brings labels to a grid
  labels      colour maps / masks -> integer label maps, resampled to each token grid
  adain       AdaIN, S-AdaIN and instance normalisation over token sequences
  attention   SCA (masked softmax by label), SSA (masked argmax + gather), StyleID injection
  block       one SCSA self-attention call in an injected transformer block
  schedules   DDIM timesteps, inversion and sampling schedules, the DDIM update
  features    the feature bank recorded by inversion and read back during sampling

Import the modules themselves (``from scsa_core.labels import SemanticLabels``): this package
imports nothing, so that the torch-free ones (``styles``, ``presets``) load without torch.
"""
