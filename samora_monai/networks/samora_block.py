"""An encoder block of SAM with hierarchical LoRA experts and HL-Attn fusion as real submodules."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Block, get_rel_pos, window_partition, window_unpartition
from torch import nn

from samora_monai.networks.lora import HierarchicalLoRA

__all__ = ["SamoraBlock", "BLOCK_MODES"]

BLOCK_MODES = ("plain", "expert", "fused")


class SamoraBlock(nn.Module):
    """Wraps one ``segment_anything`` ViT block, adopting its submodules (same state-dict keys).

    Modes (set with :meth:`set_mode`):
        - ``"plain"``: the frozen SAM block.
        - ``"expert"``: one active expert's q/v deltas are added (stage 1, or a SAMed-style single LoRA).
        - ``"fused"``: stage 2. The qkv projection runs once; the experts' rank-r query/value deltas are added
          and the base and expert attention cores run at once: one batch of fused SDPA attentions without
          autograd (:meth:`_batched_attend`), one softmax over rank-r score updates in training
          (:meth:`_low_rank_attend`, leaner in memory). As in the SAMora
          reference, the experts' residuals ``r_e = proj(a_e) - proj(base)`` (after the output projection) are
          fused by ``fusion`` on the window-partitioned token grid, and ``proj(base) + fused`` is unpartitioned
          and added to the block input; a fusion with a ``project_and_fuse(base, diffs, proj)`` method computes
          that sum itself from the unprojected ``a_e - base`` (cheaper, same value).
        Plain, expert and batched fused attention run through ``scaled_dot_product_attention`` with the
        relative-position bias as its mask (fused kernels on CPU and GPU); every softmax is float32 under autocast.

    Args:
        block: the SAM block whose ``norm1``, ``attn``, ``norm2`` and ``mlp`` are adopted.
        lora: the block's experts, or ``None`` for a block without LoRA (it always runs plain).
        fusion: module mapping residuals [E, n, h, w, C] (n windows of h x w tokens) to [n, h, w, C]; required
            for ``"fused"``.
    """

    def __init__(self, block: Block, lora: HierarchicalLoRA | None = None, fusion: nn.Module | None = None) -> None:
        super().__init__()
        self.norm1 = block.norm1
        self.attn = block.attn
        self.norm2 = block.norm2
        self.mlp = block.mlp
        self.window_size = block.window_size
        self.lora = lora
        self.fusion = fusion
        self.mode = "plain"
        self.active_level: str | None = None

    def set_mode(self, mode: str, level: str | None = None) -> None:
        if mode not in BLOCK_MODES:
            raise ValueError(f"Unknown block mode {mode!r}; choose one of {BLOCK_MODES}.")
        if mode == "expert" and self.lora is not None and level not in self.lora.levels:
            raise ValueError(f"Unknown expert level {level!r}; this block has {list(self.lora.levels)}.")
        if mode == "fused" and self.lora is not None and self.fusion is None:
            raise ValueError("This block has no fusion module; build the network with a fusion to use 'fused'.")
        self.mode = mode
        self.active_level = level if mode == "expert" else None

    def _attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        hw: tuple[int, int],
        rel: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Multi-head attention core with SAM's decomposed relative position bias.

        q, k, v [n, h*w, C] -> [n, h*w, C] (before the output projection). ``rel``: the bias terms of ``q``
        (:meth:`_rel_terms`) when the caller has them.
        """
        n, tokens, dim = q.shape
        heads = self.attn.num_heads
        q, k, v = (t.reshape(n, tokens, heads, dim // heads).transpose(1, 2) for t in (q, k, v))
        bias = None
        if self.attn.use_rel_pos:
            bias = self._rel_bias(*(self._rel_terms(q, hw) if rel is None else rel))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.attn.scale)
        return out.transpose(1, 2).reshape(n, tokens, dim)

    def _rel_terms(self, q: torch.Tensor, hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Decomposed relative-position terms of queries q [n, a, H*W, d] -> ([n, a, H, W, H], [n, a, H, W, W])."""
        h, w = hw
        grid = q.reshape(*q.shape[:2], h, w, q.shape[-1])
        rel_h = torch.einsum("nayxd,ykd->nayxk", grid, get_rel_pos(h, h, self.attn.rel_pos_h))
        return rel_h, torch.einsum("nayxd,xkd->nayxk", grid, get_rel_pos(w, w, self.attn.rel_pos_w))

    def _delta_rel_terms(self, u_q: torch.Tensor, b_q: torch.Tensor, hw: tuple[int, int]):
        """The terms of :meth:`_rel_terms` for the experts' rank-r query deltas ``U_e B_e^T``, from the factors:
        u_q [E, n, H*W, r], b_q [E, a, d, r] -> ([E, n, a, H, W, H], [E, n, a, H, W, W]) (r instead of d products)."""
        h, w = hw
        u_grid = u_q.reshape(*u_q.shape[:2], h, w, u_q.shape[-1])  # [E, n, H, W, r]
        rel_h = torch.einsum("eadr,ykd->eaykr", b_q, get_rel_pos(h, h, self.attn.rel_pos_h))
        rel_w = torch.einsum("eadr,xkd->eaxkr", b_q, get_rel_pos(w, w, self.attn.rel_pos_w))
        return (torch.einsum("enyxr,eaykr->enayxk", u_grid, rel_h),
                torch.einsum("enyxr,eaxkr->enayxk", u_grid, rel_w))  # fmt: skip

    def _batched_attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, h: torch.Tensor, hw: tuple[int, int]):
        """Base and every expert's attention core as one batch of ``(1 + E) n`` attentions (inference).

        q, k, v [n, N, C] are the frozen projections and h [n, N, C] the normalised block input. Expert e's query
        and value are ``q + U_e B_e^T`` and ``v + U^v_e B^v_e^T`` (rank-r factors from one matmul); the keys are
        shared, and the experts' relative-position terms are the base query's plus those of the rank-r deltas.
        One ``scaled_dot_product_attention`` call (fused kernel, softmax accumulated in float32 under autocast)
        covers all of them: faster than :meth:`_low_rank_attend` without autograd (on CPU about 25% less time for
        the attention cores of ViT-B). Returns [1 + E, n, N, C] (before the output projection).
        """
        u_q, b_q, u_v, b_v = self.lora.low_rank_factors(h)  # U [E, n, N, r], B [E, C, r]
        queries = torch.cat([q[None], q + u_q @ b_q.transpose(1, 2)[:, None]])  # [1 + E, n, N, C]
        values = torch.cat([v[None], v + u_v @ b_v.transpose(1, 2)[:, None]])
        keys = k.expand(queries.shape[0], *k.shape)
        rel = None
        if self.attn.use_rel_pos:
            heads = self.attn.num_heads
            base = self._rel_terms(q.unflatten(-1, (heads, -1)).transpose(1, 2), hw)  # each [n, a, H, W, K]
            deltas = self._delta_rel_terms(u_q, b_q.unflatten(1, (heads, -1)), hw)  # each [E, n, a, H, W, K]
            rel = tuple(torch.cat([t[None], t + d]).flatten(0, 1) for t, d in zip(base, deltas, strict=True))
        out = self._attend(queries.flatten(0, 1), keys.flatten(0, 1), values.flatten(0, 1), hw, rel)
        return out.unflatten(0, (-1, q.shape[0]))

    def _low_rank_attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, h: torch.Tensor, hw: tuple[int, int]):
        """Base and every expert's attention core at once, exploiting that expert deltas are low-rank (training).

        q, k, v [n, N, C] are the frozen projections and h [n, N, C] the normalised block input. Expert e adds
        ``dq_e = U_e B_e^T`` (U_e = h A_e^T, rank r), so its scores are the base scores plus a rank-r update
        ``scale * U_e (k B_e)^T`` plus the (linear) relative-position bias of ``dq_e``; its values add
        ``P_e (U^v_e) B^v_e^T``. One softmax over [n, heads, 1 + E, N, N] and one ``P @ v`` with the shared v
        follow. It saves about 40% less for backward than :meth:`_batched_attend`. The softmax runs in float32.
        Returns [1 + E, n, N, C] (before the output projection), exactly the separate attentions.
        """
        n, tokens, dim = q.shape
        heads = self.attn.num_heads
        head_dim = dim // heads
        q, k, v = (t.reshape(n, tokens, heads, head_dim).transpose(1, 2) for t in (q, k, v))  # [n, a, N, d]
        u_q, b_q, u_v, b_v = self.lora.low_rank_factors(h)  # U [E, n, N, r], B [E, C, r]
        b_q, b_v = (b.unflatten(1, (heads, head_dim)) for b in (b_q, b_v))  # [E, a, d, r]

        scores = (q * self.attn.scale) @ k.transpose(-2, -1)  # [n, a, N, N]
        k_b = torch.einsum("nald,eadr->naerl", k, b_q * self.attn.scale)  # [n, a, E, r, N]
        updates = torch.einsum("enmr,naerl->naeml", u_q, k_b)  # [n, a, E, N, N]
        if self.attn.use_rel_pos:
            scores = scores + self._rel_bias(*self._rel_terms(q, hw))
            deltas = (t.permute(1, 2, 0, 3, 4, 5) for t in self._delta_rel_terms(u_q, b_q, hw))  # [n, a, E, H, W, K]
            updates = updates + self._rel_bias(*deltas)
        logits = torch.cat([scores.unsqueeze(2), scores.unsqueeze(2) + updates], dim=2)  # [n, a, 1 + E, N, N]
        probs = logits.softmax(-1, dtype=torch.float32).to(v.dtype)
        out = (probs.flatten(2, 3) @ v).unflatten(2, (-1, tokens))  # [n, a, 1 + E, N, d]
        # P_e @ U^v_e for every e from one contiguous matmul, then the matching (row level, factor level) pairs.
        experts = u_v.shape[0]
        expert_v = (probs.flatten(2, 3) @ u_v.permute(1, 2, 0, 3).flatten(2)[:, None])  # [n, a, (1+E) N, E r]
        expert_v = expert_v.unflatten(2, (-1, tokens)).unflatten(-1, (experts, -1))[:, :, 1:]  # [n, a, E, N, E, r]
        expert_v = expert_v.diagonal(dim1=2, dim2=4)  # [n, a, N, r, E]
        out[:, :, 1:] += torch.einsum("namre,eadr->naemd", expert_v, b_v)
        return out.permute(2, 0, 3, 1, 4).reshape(-1, n, tokens, dim)

    @staticmethod
    def _rel_bias(rel_h: torch.Tensor, rel_w: torch.Tensor) -> torch.Tensor:
        """[..., H, W, H] and [..., H, W, W] decomposed terms -> bias [..., H*W, H*W]."""
        *lead, h, w, _ = rel_h.shape
        return (rel_h.contiguous()[..., :, None] + rel_w.contiguous()[..., None, :]).reshape(*lead, h * w, h * w)

    def _project_and_fuse(self, base: torch.Tensor, diffs: torch.Tensor) -> torch.Tensor:
        """base [n, h, w, C] and diffs ``a_e - base`` [E, n, h, w, C] -> ``proj(base) + fusion(r)`` [n, h, w, C]."""
        if hasattr(self.fusion, "project_and_fuse"):
            return self.fusion.project_and_fuse(base, diffs, self.attn.proj)
        # r_e = proj(a_e) - proj(base) = W (a_e - base): the bias cancels, the weight is applied to each residual.
        return self.attn.proj(base) + self.fusion(F.linear(diffs, self.attn.proj.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, H, W, C] -> [B, H, W, C]."""
        height, width = x.shape[1], x.shape[2]
        h = self.norm1(x)
        pad_hw = (height, width)
        if self.window_size > 0:
            h, pad_hw = window_partition(h, self.window_size)
        n, hh, ww, dim = h.shape
        h = h.reshape(n, hh * ww, dim)
        q, k, v = self.attn.qkv(h).chunk(3, dim=-1)

        fused = self.mode == "fused" and self.lora is not None
        if fused:
            attend = self._low_rank_attend if torch.is_grad_enabled() else self._batched_attend
            out = attend(q, k, v, h, (hh, ww)).flatten(0, 1)  # [(1 + E) n, N, C]
        elif self.mode == "expert" and self.lora is not None:
            dq, dv = self.lora.delta(h, self.active_level)
            out = self._attend(q + dq, k, v + dv, (hh, ww))
        else:
            out = self._attend(q, k, v, (hh, ww))
        out = out.reshape(-1, hh, ww, dim)
        if fused:
            out = out.unflatten(0, (-1, n))  # [1 + E, n, h, w, C]
            out = self._project_and_fuse(out[0], out[1:] - out[0])
        else:
            out = self.attn.proj(out)
        if self.window_size > 0:
            out = window_unpartition(out, self.window_size, pad_hw, (height, width))
        x = x + out
        return x + self.mlp(self.norm2(x))
