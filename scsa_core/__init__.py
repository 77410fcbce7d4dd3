"""scsa_core: the pure-torch heart of the SCSA node pack (no ComfyUI imports, no I/O).

Data flow, from the nodes downwards:
  labels      colour maps / masks -> integer label maps, resampled to each token grid
  adain       AdaIN, S-AdaIN and instance normalisation over token sequences
  attention   SCA (masked softmax by label), SSA (masked argmax + gather), StyleID injection
  block       one SCSA self-attention call in an injected transformer block
  schedules   DDIM timesteps, inversion and sampling schedules, the DDIM update
  features    the feature bank recorded by inversion and read back during sampling
"""
from .adain import adain, instance_normalize, semantic_adain
from .attention import (LabelPairing, pair_labels, plain_attention, semantic_continuous_attention,
                        semantic_sparse_attention, styleid_attention)
from .block import (BlockLayers, ReferenceInputs, ReferenceProjections, ReferenceTerms, SCSAParams,
                    fuse, project_references, reference_terms, scsa_block, ssa_output)
from .labels import (SemanticLabels, label_preview, labels_from_color_maps, labels_from_masks,
                     resample_labels, token_grid_size)
from .schedules import ddim_invert, ddim_sample, ddim_timesteps, inversion_schedule, sampling_schedule
