"""A SAM 2 Hiera block with hierarchical LoRA experts and HL-Attn fusion as real submodules."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sam2.modeling.backbones.hieradet import MultiScaleBlock, do_pool
from sam2.modeling.backbones.utils import window_partition, window_unpartition
from torch import nn

from samora_monai.networks.lora import HierarchicalLoRA
from samora_monai.networks.samora_block import SamoraBlock

__all__ = ["HieraSamoraBlock"]


class HieraSamoraBlock(nn.Module):
    """Wraps one ``sam2`` Hiera ``MultiScaleBlock``, adopting its submodules (same state-dict keys).

    The block maps x [B, H, W, C] to [B, H', W', C'] (H' = H / 2 and C' = 2 C at the first block of stages 2-4,
    which max-pools q 2x2 and projects the shortcut). The experts add rank-r deltas to the q and v slices of
    ``attn.qkv`` (width ``qkv.out_features // 3 = C'``), applied before q pooling, as LoRA on the fused
    projection would.

    Modes (set with :meth:`set_mode`, same rules as :class:`SamoraBlock`):
        - ``"plain"``: the frozen Hiera block.
        - ``"expert"``: one active expert's q/v deltas are added (stage 1, or a SAMed-style single LoRA).
        - ``"fused"``: stage 2. ``attn.qkv`` runs once for all experts. In blocks without q pooling the expert
          scores are rank-r updates of the base scores (``scale * U_e (k B_e)^T``) and all 1 + E attentions come
          from one softmax. In q-pooling blocks that trick is impossible: ``maxpool(q + dq_e)`` is not
          ``maxpool(q)`` plus a low-rank term, so each expert's pooled query is formed (from the shared qkv
          output plus its delta) and the 1 + E score maps are computed in one batched matmul. In both cases
          the value deltas enter as ``P_e U^v_e B^v_e^T`` with the shared v. The experts' residuals, taken after
          the output projection (its bias cancels), are fused by ``fusion`` on the unpartitioned grid and added
          to the projected base output.

    Args:
        block: the Hiera block whose ``norm1``, ``attn``, ``norm2``, ``mlp`` (and ``proj``) are adopted.
        lora: the block's experts (``HierarchicalLoRA(dim, r, levels, out_dim=dim_out)``) or ``None``.
        fusion: module mapping residuals [E, B, H', W', C'] to [B, H', W', C']; required for ``"fused"``.
    """

    set_mode = SamoraBlock.set_mode

    def __init__(
        self, block: MultiScaleBlock, lora: HierarchicalLoRA | None = None, fusion: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.dim, self.dim_out = block.dim, block.dim_out
        self.norm1 = block.norm1
        self.window_size = block.window_size
        self.pool, self.q_stride = block.pool, block.q_stride
        self.attn = block.attn
        self.drop_path = block.drop_path
        self.norm2 = block.norm2
        self.mlp = block.mlp
        if self.dim != self.dim_out:
            self.proj = block.proj
        self.lora = lora
        self.fusion = fusion
        self.mode = "plain"
        self.active_level: str | None = None

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        """[n, N, C'] -> [n, heads, N, d]."""
        return t.unflatten(-1, (self.attn.num_heads, -1)).transpose(1, 2)

    def _pool_q(self, q: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """q [..., N, C'] on an hw grid -> [..., M, C'] (M = N / 4 in q-pooling blocks, else M = N)."""
        if self.pool is None:
            return q
        lead = q.shape[:-2]
        pooled = do_pool(q.reshape(-1, *hw, q.shape[-1]), self.pool)
        return pooled.reshape(*lead, -1, q.shape[-1])

    def _fused_attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, h: torch.Tensor, hw: tuple[int, int]):
        """Base and every expert's attention core from the one qkv projection.

        q, k, v [n, N, C'] are the frozen projections (q not yet pooled), h [n, N, C] the normalised input.
        Returns [1 + E, n, M, C'] (before the output projection), exactly the separate attentions.
        """
        n, tokens, width = q.shape
        heads = self.attn.num_heads
        scale = (width // heads) ** -0.5
        u_q, b_q, u_v, b_v = self.lora.low_rank_factors(h)  # U [E, n, N, r], B [E, C', r]
        b_q, b_v = (b.unflatten(1, (heads, -1)) for b in (b_q, b_v))  # [E, a, d, r]
        k, v = self._heads(k), self._heads(v)  # [n, a, N, d]
        if self.pool is None:
            scores = (self._heads(q) * scale) @ k.transpose(-2, -1)  # [n, a, N, N]
            k_b = torch.einsum("nald,eadr->naerl", k, b_q * scale)  # [n, a, E, r, N]
            updates = torch.einsum("enmr,naerl->naeml", u_q, k_b)  # [n, a, E, N, N]
            logits = torch.cat([scores.unsqueeze(2), scores.unsqueeze(2) + updates], dim=2)  # [n, a, 1+E, N, N]
        else:
            dq = torch.einsum("enlr,eadr->enlad", u_q, b_q).flatten(-2)  # [E, n, N, C']
            q_all = self._pool_q(torch.cat([q.unsqueeze(0), q.unsqueeze(0) + dq]), hw)  # [1+E, n, M, C']
            q_all = q_all.unflatten(-1, (heads, -1)).permute(1, 3, 0, 2, 4)  # [n, a, 1+E, M, d]
            logits = (q_all * scale) @ k.unsqueeze(2).transpose(-2, -1)  # [n, a, 1+E, M, N]
        probs = logits.softmax(-1)
        out = (probs.flatten(2, 3) @ v).unflatten(2, probs.shape[2:4])  # [n, a, 1+E, M, d]
        expert_v = torch.einsum("naeml,enlr->naemr", probs[:, :, 1:], u_v)  # [n, a, E, M, r]
        out[:, :, 1:] += torch.einsum("naemr,eadr->naemd", expert_v, b_v)
        return out.permute(2, 0, 3, 1, 4).flatten(-2)  # [1+E, n, M, C']

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """One attention: q, k, v [n, N, C'] -> [n, M, C'] (q pooled first in q-pooling blocks)."""
        q = self._pool_q(q, hw)
        out = F.scaled_dot_product_attention(self._heads(q), self._heads(k), self._heads(v))
        return out.transpose(1, 2).flatten(-2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, H, W, C] -> [B, H', W', C']."""
        shortcut = x
        h = self.norm1(x)
        if self.dim != self.dim_out:
            shortcut = do_pool(self.proj(h), self.pool)
        height, width = x.shape[1:3]
        if self.window_size > 0:
            h, _ = window_partition(h, self.window_size)
        n, hh, ww, _ = h.shape
        h = h.reshape(n, hh * ww, -1)
        q, k, v = self.attn.qkv(h).chunk(3, dim=-1)

        fused = self.mode == "fused" and self.lora is not None
        if fused:
            out = self._fused_attend(q, k, v, h, (hh, ww)).flatten(0, 1)  # [(1 + E) n, M, C']
        elif self.mode == "expert" and self.lora is not None:
            dq, dv = self.lora.delta(h, self.active_level)
            out = self._attend(q + dq, k, v + dv, (hh, ww))
        else:
            out = self._attend(q, k, v, (hh, ww))

        if self.q_stride:
            height, width = shortcut.shape[1:3]  # the pooled grid
        if self.window_size > 0:
            window = self.window_size // (self.q_stride[0] if self.q_stride else 1)
            pad_hw = (height + (-height) % window, width + (-width) % window)
            out = window_unpartition(out.reshape(-1, window, window, self.dim_out), window, pad_hw, (height, width))
        else:
            out = out.reshape(-1, height, width, self.dim_out)
        if fused:  # the experts' residuals after the output projection, as in SamoraBlock (its bias cancels)
            out = out.unflatten(0, (-1, x.shape[0]))  # [1 + E, B, H', W', C']
            residuals = F.linear(out[1:] - out[0], self.attn.proj.weight)
            out = self.attn.proj(out[0]) + self.fusion(residuals)
        else:
            out = self.attn.proj(out)
        x = shortcut + self.drop_path(out)
        return x + self.drop_path(self.mlp(self.norm2(x)))
