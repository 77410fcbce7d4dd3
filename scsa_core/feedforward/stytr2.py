"""StyTr2 (transformer style transfer) and StyTr2+SCSA, forward passes on pretrained weights.

Network (d = 512, 8 heads of 64, post-norm layers, eval mode):
- patch embedding: an 8 x 8 / stride 8 conv of the [0, 1] RGB image -> tokens on an
  ``floor(H/8) x floor(W/8)`` grid;
- CAPE (content-aware positional encoding) ``P``: the content embedding average-pooled to
  18 x 18, a 1 x 1 conv (``new_ps``), resized bilinearly to the content grid;
- two encoders of 3 layers: ``Es = encoder_s(E_s)`` (no position), ``Ec = encoder_c(E_c, P)``;
- a decoder of 3 layers, queries from the content (``x + P``), keys and values the encoded
  style, then a final LayerNorm; the CNN decoder turns the tokens into an image.

StyTr2+SCSA runs the same weights (SCSA adds no parameters) on the semantic maps too:
``Esm = encoder_s(E_sm)``, ``Ecm = encoder_c(E_cm, P)`` (the content map takes the content
image's P), and ``Esc = encoder_c(Es)``: the style encoded a second time, the target of S-AdaIN
(the official code's behaviour, kept in both presets: it is what the published model does).
An SCSA call of one attention module (weights W_q, W_k, W_v, W_o):
- SCA: ``softmax(W_q(Ecm + P) W_k(Esm)^T / 8)`` per head, restricted to the query's region,
  applied to ``W_v(Es)``: the region decides where to look, the style gives the colours;
- SSA: per head, the ``W_v(Es)`` row of the best-scoring same-region key ``W_k(Es)`` for the
  query ``W_q(q)``;
- output ``t1 (W_o SCA + b_o) + t2 (W_o SSA + b_o)`` (the bias counted t1 + t2 times, as in the
  official code). SCA never reads the decoder state, so each module's SCA is a fixed,
  region-restricted average of the style.
Layer 0: ``T' = S-AdaIN(Ec, Esc)``; ``x = LN1(b T' + (1 - b) Ec + SCSA_self(T' + P))``;
``x = LN2(x + SCSA_cross(x + P))``; FFN. Layers 1-2: the plain (unmasked) self_attn cross-
attention to Es, then ``SCSA_cross(x + P)``, FFN.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..adain import semantic_adain
from ..attention import (LabelPairing, merge_heads, pair_labels, plain_attention, semantic_continuous_attention,
                         semantic_sparse_attention, split_heads)
from .cnn_decoder import CNNDecoder
from .common import LabelsAt, SCSAWeights, Trace, check_map_sizes, flat_labels, record, to_feature_map, to_tokens

__all__ = ["StyTr2Model", "StyTr2Transformer", "PatchEmbedding", "AttentionWeights",
           "stytr2_transformer_key_shapes", "stytr2_embedding_key_shapes", "STYTR2_DEFAULT_WEIGHTS"]

D_MODEL = 512
HEADS = 8
FFN_DIM = 2048
LAYERS = 3
PATCH = 8
CAPE_POOL = 18
LN_EPS = 1e-5
STYTR2_DEFAULT_WEIGHTS = SCSAWeights(sca_weight=1.2, ssa_weight=0.5, adain_mix=0.7)  # official t1, t2, b


def stytr2_embedding_key_shapes() -> dict[str, tuple[int, ...]]:
    """Keys of ``embedding_iter_160000.pth``."""
    return {"proj.weight": (D_MODEL, 3, PATCH, PATCH), "proj.bias": (D_MODEL,)}


def _attention_shapes(prefix: str) -> dict:
    return {f"{prefix}.in_proj_weight": (3 * D_MODEL, D_MODEL), f"{prefix}.in_proj_bias": (3 * D_MODEL,),
            f"{prefix}.out_proj.weight": (D_MODEL, D_MODEL), f"{prefix}.out_proj.bias": (D_MODEL,)}


def _ffn_norm_shapes(prefix: str, norms: int) -> dict:
    shapes = {f"{prefix}.linear1.weight": (FFN_DIM, D_MODEL), f"{prefix}.linear1.bias": (FFN_DIM,),
              f"{prefix}.linear2.weight": (D_MODEL, FFN_DIM), f"{prefix}.linear2.bias": (D_MODEL,)}
    for i in range(1, norms + 1):
        shapes[f"{prefix}.norm{i}.weight"] = (D_MODEL,)
        shapes[f"{prefix}.norm{i}.bias"] = (D_MODEL,)
    return shapes


def stytr2_transformer_key_shapes() -> dict[str, tuple[int, ...]]:
    """Every key of ``transformer_iter_160000.pth`` and its shape (130 tensors)."""
    shapes = {}
    for encoder in ("encoder_c", "encoder_s"):
        for i in range(LAYERS):
            prefix = f"{encoder}.layers.{i}"
            shapes.update(_attention_shapes(f"{prefix}.self_attn"))
            shapes.update(_ffn_norm_shapes(prefix, 2))
    for i in range(LAYERS):
        prefix = f"decoder.layers.{i}"
        shapes.update(_attention_shapes(f"{prefix}.self_attn"))
        shapes.update(_attention_shapes(f"{prefix}.multihead_attn"))
        shapes.update(_ffn_norm_shapes(prefix, 3))
    shapes["decoder.norm.weight"] = (D_MODEL,)
    shapes["decoder.norm.bias"] = (D_MODEL,)
    shapes["new_ps.weight"] = (D_MODEL, D_MODEL, 1, 1)
    shapes["new_ps.bias"] = (D_MODEL,)
    return shapes


class AttentionWeights(nn.Module):
    """The parameters of one ``nn.MultiheadAttention`` (same names, so the published weights load
    unchanged): ``in_proj_weight`` rows 0-511 = W_q, 512-1023 = W_k, 1024-1535 = W_v."""

    def __init__(self, d_model: int = D_MODEL, heads: int = HEADS):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * d_model))
        self.out_proj = nn.Linear(d_model, d_model)

    def _project(self, x: torch.Tensor, which: int) -> torch.Tensor:
        d = self.out_proj.weight.shape[0]
        rows = slice(which * d, (which + 1) * d)
        return F.linear(x, self.in_proj_weight[rows], self.in_proj_bias[rows])

    def query(self, x):
        return self._project(x, 0)

    def key(self, x):
        return self._project(x, 1)

    def value(self, x):
        return self._project(x, 2)

    def attend(self, query_in: torch.Tensor, key_in: torch.Tensor, value_in: torch.Tensor,
               key_log_counts: torch.Tensor | None = None) -> torch.Tensor:
        """Plain multi-head attention (logits / sqrt(64)). query_in ``[B, N, d]``; key_in,
        value_in ``[B or 1, M, d]`` -> ``[B, N, d]``. ``key_log_counts`` ``[M]``: each key stands
        for that many (log) identical keys, added to its logits (see :meth:`Encoder.deduplicated`)."""
        query, key, value = self.query(query_in), self.key(key_in), self.value(value_in)
        if key_log_counts is None:
            return self.out_proj(plain_attention(query, key, value, self.heads))
        query, key, value = (split_heads(x, self.heads) for x in (query, key, value))
        bias = key_log_counts.to(query.dtype).view(1, 1, 1, -1)
        return self.out_proj(merge_heads(F.scaled_dot_product_attention(query, key, value, attn_mask=bias)))

    def scsa(self, ssa_query_in: torch.Tensor, terms: "SCATerms", weights: SCSAWeights,
             trace: Trace | None = None, name: str = "") -> torch.Tensor:
        """One SCSA call: ``t1 (W_o SCA + b_o) + t2 (W_o SSA + b_o)``.

        ssa_query_in: ``[B, N, d]`` (position included); ``terms``: this module's SCA output and
        style key/value (:meth:`sca_terms`) -> ``[B, N, d]``.
        """
        t1, t2 = weights.sca_weight, weights.ssa_weight
        w_out, b_out = self.out_proj.weight, self.out_proj.bias
        record(trace, f"{name}.query", ssa_query_in)
        record(trace, f"{name}.sca", lambda: F.linear(terms.sca, w_out, b_out))
        mixed = t1 * terms.sca
        if t2 != 0.0 or trace is not None:
            ssa, chosen = semantic_sparse_attention(self.query(ssa_query_in), terms.style_key,
                                                    terms.style_value, terms.pairing, self.heads,
                                                    return_index=True)
            record(trace, f"{name}.ssa", lambda: F.linear(ssa, w_out, b_out))
            record(trace, f"{name}.ssa_argmax", chosen)
            mixed = mixed + t2 * ssa
        out = F.linear(mixed, w_out) + (t1 + t2) * b_out
        record(trace, f"{name}.out", out)
        return out

    def sca_terms(self, sem_query_in: torch.Tensor, sem_key_in: torch.Tensor, memory: torch.Tensor,
                  pairing: LabelPairing, weights: SCSAWeights) -> "SCATerms":
        """What this module's SCSA calls need that does not depend on the decoder state.

        sem_query_in: ``Ecm + P`` ``[B, N, d]``; sem_key_in: ``Esm`` ``[1, M, d]``; memory: ``Es``
        ``[1, M, d]``."""
        value = self.value(memory)
        if weights.sca_weight != 0.0:
            sca = semantic_continuous_attention(self.query(sem_query_in), self.key(sem_key_in), value,
                                                pairing, self.heads)
        else:
            sca = torch.zeros_like(sem_query_in)
        return SCATerms(sca, self.key(memory), value, pairing)


class SCATerms:
    """One attention module's SCA output ``[B, N, d]`` (before W_o), style keys and values
    ``[1, M, d]`` and the label pairing."""

    def __init__(self, sca, style_key, style_value, pairing):
        self.sca, self.style_key, self.style_value, self.pairing = sca, style_key, style_value, pairing


def _layer_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, LN_EPS)


class _FeedForward(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear1 = nn.Linear(D_MODEL, FFN_DIM)
        self.linear2 = nn.Linear(FFN_DIM, D_MODEL)

    def ffn(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(F.relu(self.linear1(x)))


class EncoderLayer(_FeedForward):
    """Post-norm encoder layer: ``x = LN1(x + MHA(x + p, x + p, x))``, ``x = LN2(x + FFN(x))``."""

    def __init__(self):
        super().__init__()
        self.self_attn = AttentionWeights()
        self.norm1 = nn.LayerNorm(D_MODEL)
        self.norm2 = nn.LayerNorm(D_MODEL)

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None = None,
                key_log_counts: torch.Tensor | None = None) -> torch.Tensor:
        query_key = x if pos is None else x + pos
        x = _layer_norm(self.norm1, x + self.self_attn.attend(query_key, query_key, x, key_log_counts))
        return _layer_norm(self.norm2, x + self.ffn(x))


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer() for _ in range(LAYERS))

    def forward(self, tokens: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        """tokens ``[B, N, d]``, pos ``[B, N, d]`` or None -> ``[B, N, d]``."""
        for layer in self.layers:
            tokens = layer(tokens, pos)
        return tokens

    def deduplicated(self, tokens: torch.Tensor) -> torch.Tensor:
        """The same as ``self(tokens)`` without a position term, computed on the distinct tokens.

        tokens ``[1, N, d]`` -> ``[1, N, d]``. Without a position, every step treats identical
        tokens identically (attention reads all tokens, but a token's output depends only on its
        own value), so identical inputs stay identical; n identical keys weigh in the softmax as
        one key with ``log n`` added to its logit. A flat-colour semantic map has few distinct
        patches (pair 29: 201 of 4096), so its encoding costs a few percent of a full pass.
        """
        unique, inverse, counts = torch.unique(tokens[0], dim=0, return_inverse=True, return_counts=True)
        if unique.shape[0] * 2 > tokens.shape[1]:   # a photo-like map: nothing to gain
            return self(tokens)
        log_counts = counts.to(tokens.dtype).log()
        x = unique[None]
        for layer in self.layers:
            x = layer(x, None, log_counts)
        return x[:, inverse]


class DecoderLayer(_FeedForward):
    """Post-norm decoder layer: ``x = LN1(x + self_attn)``, ``x = LN2(x + multihead_attn)``,
    ``x = LN3(x + FFN(x))``; both attentions take their keys and values from the style (the
    official StyTr2 decoder's "self" attention reads the memory too). Tokens ``[B, N, d]``."""

    def __init__(self):
        super().__init__()
        self.self_attn = AttentionWeights()
        self.multihead_attn = AttentionWeights()
        self.norm1 = nn.LayerNorm(D_MODEL)
        self.norm2 = nn.LayerNorm(D_MODEL)
        self.norm3 = nn.LayerNorm(D_MODEL)

    def plain_self_attention(self, x: torch.Tensor, pos: torch.Tensor, memory: torch.Tensor,
                             trace: Trace | None, name: str) -> torch.Tensor:
        """``LN1(x + self_attn(x + P, Es, Es))`` without SCSA. memory: ``Es`` ``[1, M, d]``."""
        attended = self.self_attn.attend(x + pos, memory, memory)
        record(trace, f"{name}_self_attn.out", attended)
        x = _layer_norm(self.norm1, x + attended)
        record(trace, f"{name}_norm1", x)
        return x

    def after_cross_attention(self, x: torch.Tensor, attended: torch.Tensor, trace: Trace | None,
                              name: str) -> torch.Tensor:
        """The layer's tail, the same with and without SCSA: ``y = LN2(x + attended)``,
        ``LN3(y + FFN(y))``. attended: the ``multihead_attn`` output ``[B, N, d]``."""
        x = _layer_norm(self.norm2, x + attended)
        record(trace, f"{name}_norm2", x)
        x = _layer_norm(self.norm3, x + self.ffn(x))
        record(trace, f"{name}_norm3", x)
        return x


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer() for _ in range(LAYERS))
        self.norm = nn.LayerNorm(D_MODEL)


class StyTr2Transformer(nn.Module):
    """The ``transformer_iter_160000.pth`` part: both encoders, the decoder and CAPE's conv."""

    def __init__(self):
        super().__init__()
        self.encoder_c = Encoder()
        self.encoder_s = Encoder()
        self.decoder = Decoder()
        self.new_ps = nn.Conv2d(D_MODEL, D_MODEL, 1)

    def content_position(self, content_embedding: torch.Tensor) -> torch.Tensor:
        """CAPE: ``[B, d, h, w]`` -> ``[B, d, h, w]``. Resized to the content's own grid (the
        official code resizes to the style's grid, the same size there since it stretches both
        images to 512 x 512)."""
        pooled = F.adaptive_avg_pool2d(content_embedding, CAPE_POOL)
        return F.interpolate(self.new_ps(pooled), size=content_embedding.shape[-2:], mode="bilinear",
                             align_corners=False)


class PatchEmbedding(nn.Module):
    """``embedding_iter_160000.pth``: an 8 x 8 / stride 8 conv, image ``[B, 3, H, W]`` in [0, 1]
    -> ``[B, 512, floor(H/8), floor(W/8)]``."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(3, D_MODEL, PATCH, stride=PATCH)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.proj(image)


class StyTr2Model(nn.Module):
    """StyTr2 weights (``embedding``, ``transformer``, ``decoder``: three of the published files;
    its VGG is used only in training) and its two forward passes. Images are ``[B, 3, H, W]``
    RGB in [0, 1], H and W multiples of 8."""

    variant = "stytr2"
    display_name = "StyTr2"
    size_multiple = PATCH
    default_weights = STYTR2_DEFAULT_WEIGHTS

    def __init__(self):
        super().__init__()
        self.embedding = PatchEmbedding()
        self.transformer = StyTr2Transformer()
        self.decoder = CNNDecoder()

    @staticmethod
    def progress_steps(semantic: bool) -> int:
        """How many times a forward pass calls ``progress``."""
        return 9 if semantic else 7

    def _finish(self, x: torch.Tensor, grid: tuple, trace: Trace | None) -> torch.Tensor:
        hs = _layer_norm(self.transformer.decoder.norm, x)
        record(trace, "hs", hs)
        image = self.decoder(to_feature_map(hs, *grid))
        record(trace, "output_raw", image)
        return image

    def _embed(self, content: torch.Tensor, style: torch.Tensor):
        """Patch embeddings of both sides and the content's CAPE."""
        embedded_content = self.embedding(content)
        embedded_style = self.embedding(style)
        position = self.transformer.content_position(embedded_content)
        return embedded_content, embedded_style, position

    def forward_plain(self, content: torch.Tensor, style: torch.Tensor, trace: Trace | None = None,
                      progress: Callable[[], None] | None = None) -> torch.Tensor:
        """Plain StyTr2: content ``[B, 3, H, W]``, style ``[1, 3, Hs, Ws]`` -> raw image
        ``[B, 3, 8 floor(H/8), 8 floor(W/8)]`` (not clamped)."""
        tick = progress or (lambda: None)
        e_c, e_s, position = self._embed(content, style)
        grid = tuple(e_c.shape[-2:])
        pos = to_tokens(position)
        record(trace, "E_c", lambda: to_tokens(e_c))
        record(trace, "E_s", lambda: to_tokens(e_s))
        record(trace, "P", pos)
        tick()
        memory = self.transformer.encoder_s(to_tokens(e_s))
        record(trace, "Es", memory)
        tick()
        x = self.transformer.encoder_c(to_tokens(e_c), pos)
        record(trace, "Ec", x)
        tick()
        for i, layer in enumerate(self.transformer.decoder.layers):
            x = layer.plain_self_attention(x, pos, memory, trace, f"dec{i}")
            attended = layer.multihead_attn.attend(x + pos, memory, memory)
            record(trace, f"dec{i}_multihead_attn.out", attended)
            x = layer.after_cross_attention(x, attended, trace, f"dec{i}")
            tick()
        image = self._finish(x, grid, trace)
        tick()
        return image

    def forward_scsa(self, content: torch.Tensor, style: torch.Tensor, content_sem: torch.Tensor,
                     style_sem: torch.Tensor, labels_at: LabelsAt,
                     weights: SCSAWeights = STYTR2_DEFAULT_WEIGHTS, trace: Trace | None = None,
                     progress: Callable[[], None] | None = None,
                     reference_cache: dict | None = None) -> torch.Tensor:
        """StyTr2+SCSA. content ``[B, 3, H, W]``; style ``[1, 3, Hs, Ws]``; content_sem / style_sem:
        the semantic maps as images of the content's / style's size; ``labels_at(content_grid,
        style_grid)`` gives the label maps at the token grids -> raw image ``[B, 3, 8 floor(H/8),
        8 floor(W/8)]``.

        ``reference_cache``: a dict kept by the caller across calls with the *same* style and
        maps (e.g. the images of a batch): the style side (Es, Esm, Esc) and the content map's
        embedding are computed on the first call only.
        """
        check_map_sizes(content, style, content_sem, style_sem)
        cache = {} if reference_cache is None else reference_cache
        tick = progress or (lambda: None)
        batch = content.shape[0]
        transformer = self.transformer
        if "content_sem" not in cache:
            cache["content_sem"] = to_tokens(self.embedding(content_sem))
        e_content = self.embedding(content)
        position = transformer.content_position(e_content)
        e_c, e_cm = to_tokens(e_content), cache["content_sem"]
        tick()
        if "style" not in cache:
            e_style = self.embedding(torch.cat([style, style_sem]))
            e_s, e_sm = to_tokens(e_style[:1]), to_tokens(e_style[1:])
            memory = transformer.encoder_s(e_s)
            # The style map has few distinct patches (flat colours): encoded once per distinct patch.
            memory_sem = transformer.encoder_s.deduplicated(e_sm)
            tick()
            # The style encoded a second time by the content encoder: S-AdaIN's target.
            style_twice = transformer.encoder_c(memory)
            cache["style"] = (e_s, e_sm, memory, memory_sem, style_twice, tuple(e_style.shape[-2:]))
        else:
            tick()
        tick()
        e_s, e_sm, memory, memory_sem, style_twice, style_grid = cache["style"]
        grid = tuple(e_content.shape[-2:])
        pos = to_tokens(position)
        for name, value in (("E_c", e_c), ("E_s", e_s), ("E_cm", e_cm), ("E_sm", e_sm), ("P", pos),
                            ("Es", memory), ("Esm", memory_sem), ("Esc", style_twice)):
            record(trace, name, value)
        # Content and content map through encoder_c together, both with the content's P.
        encoded = transformer.encoder_c(torch.cat([e_c, e_cm.expand(batch, -1, -1)]), torch.cat([pos, pos]))
        content_tokens, content_sem_tokens = encoded[:batch], encoded[batch:]
        record(trace, "Ec", content_tokens)
        record(trace, "Ecm", content_sem_tokens)
        sem_query = content_sem_tokens + pos
        record(trace, "q_sem", sem_query)
        tick()

        content_labels, style_labels = labels_at(grid, style_grid)
        content_labels = flat_labels(content_labels, grid, "content", content.device)
        style_labels = flat_labels(style_labels, style_grid, "style", content.device)
        pairing = pair_labels(content_labels, style_labels)
        restyled = semantic_adain(content_tokens, style_twice, content_labels, style_labels)
        record(trace, "sadain", restyled)
        tick()

        b = weights.adain_mix
        for i, layer in enumerate(transformer.decoder.layers):
            if i == 0:
                terms = layer.self_attn.sca_terms(sem_query, memory_sem, memory, pairing, weights)
                attended = layer.self_attn.scsa(restyled + pos, terms, weights, trace, "dec0_self_attn")
                x = _layer_norm(layer.norm1, b * restyled + (1.0 - b) * content_tokens + attended)
                record(trace, "dec0_norm1", x)
            else:
                x = layer.plain_self_attention(x, pos, memory, trace, f"dec{i}")
            terms = layer.multihead_attn.sca_terms(sem_query, memory_sem, memory, pairing, weights)
            attended = layer.multihead_attn.scsa(x + pos, terms, weights, trace, f"dec{i}_multihead_attn")
            x = layer.after_cross_attention(x, attended, trace, f"dec{i}")
            tick()
        image = self._finish(x, grid, trace)
        tick()
        return image
