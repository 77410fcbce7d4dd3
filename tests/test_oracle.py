"""Per-call reproduction of the official SCSA attention (oracle README, "one SCSA call").

Every ``scsa_call_*.safetensors`` under ``SCSA_ORACLE_DIR`` is a case: stored fp16 inputs, the
official outputs recomputed from exactly those inputs. Tolerances are the README's.
"""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from oracle_data import oracle_dir, oracle_unet_weights, require_oracle
from scsa_core.attention import merge_heads, pair_labels
from scsa_core.block import (BlockLayers, ReferenceInputs, ReferenceProjections, SCSAParams,
                             fuse, reference_terms, ssa_output)
from scsa_core.attention import semantic_sparse_attention
from scsa_core.adain import instance_normalize

HEADS = 8


def _cases():
    root = oracle_dir()
    return sorted(root.glob("*/scsa_call_*.safetensors")) if root.is_dir() else []


def _rel_l2(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).norm() / expected.norm()).item()


def _block_layers(block: int) -> BlockLayers:
    w = oracle_unet_weights(f"output_blocks.{block}.1.transformer_blocks.0.")
    channels = w["norm1.weight"].numel()
    return BlockLayers(
        norm1=lambda x: F.layer_norm(x, (channels,), w["norm1.weight"], w["norm1.bias"], 1e-5),
        to_q=lambda x: F.linear(x, w["attn1.to_q.weight"]),
        to_k=lambda x: F.linear(x, w["attn1.to_k.weight"]),
        to_v=lambda x: F.linear(x, w["attn1.to_v.weight"]),
        to_out=lambda x: F.linear(x, w["attn1.to_out.0.weight"], w["attn1.to_out.0.bias"]),
    )


def _load_case(path):
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    for key, value in tensors.items():
        if value.dtype == torch.float16:
            tensors[key] = value.float()
    return meta, tensors


@pytest.mark.parametrize("case", _cases() or [None], ids=lambda p: "none" if p is None else f"{p.parent.name}-{p.stem}")
def test_scsa_call_matches_official(case):
    require_oracle()
    if case is None:
        pytest.fail(f"the oracle folder {oracle_dir()} has no scsa_call_*.safetensors case")
    meta, t = _load_case(case)
    config = json.loads(meta["config"])
    block = int(meta["block"])
    params = SCSAParams(preset="official", sca_weight=config["t1"], ssa_weight=config["t2"],
                        semantic_share=config["a1"], content_share=config["a2"],
                        temperature=config["T"])
    tokens = t["x_t"].shape[1]
    grid = int(round(tokens ** 0.5))
    with safe_open(str(case.parent / "masks.safetensors"), "pt") as f:
        content_labels = f.get_tensor(f"content_labels_{grid}").long().flatten()
        style_labels = f.get_tensor(f"style_labels_{grid}").long().flatten()

    layers = _block_layers(block)
    refs = ReferenceInputs(content=t["x_c"], style=t["x_s"])
    projections = ReferenceProjections(style_key=merge_heads(t["k_s"][None]),
                                       style_value=merge_heads(t["v_s"][None]),
                                       content_map_query=merge_heads(t["q_csem"][None]),
                                       style_map_key=merge_heads(t["k_ssem"][None]))
    pairing = pair_labels(content_labels, style_labels)
    with torch.no_grad():
        terms = reference_terms(layers, refs, projections, content_labels, style_labels, pairing,
                                HEADS, params)
        sca_projected = layers.to_out(terms.sca)
        ssa = ssa_output(layers, t["x_t"], terms, HEADS, params)
        ssa_projected = layers.to_out(ssa)
        fused = fuse(t["x_t"], sca_projected, ssa_projected, params)
        a2 = params.content_share
        query = a2 * terms.ssa_content_query + (1 - a2) * layers.to_q(instance_normalize(t["x_t"]))
        _, chosen = semantic_sparse_attention(query, terms.style_key, terms.style_value, pairing,
                                              HEADS, params.unmatched, return_index=True)

    idx = t["query_index"]
    sca_err = _rel_l2(sca_projected[:, idx], t["O1_sca_at_query_index"])
    ssa_err = _rel_l2(ssa_projected[:, idx], t["O2_ssa_at_query_index"])
    fused_err = _rel_l2(fused[:, idx], t["x_fused_at_query_index"])
    agreement = (chosen[0] == t["ssa_argmax"].long()).float().mean().item()
    print(f"{case.parent.name}/{case.stem}: O1 {sca_err:.2e}  O2 {ssa_err:.2e}  "
          f"x_fused {fused_err:.2e}  argmax agreement {agreement:.5f}")
    assert sca_err <= 1e-4
    assert agreement >= 0.999
    assert ssa_err <= 1e-3
    assert fused_err <= 1e-3
