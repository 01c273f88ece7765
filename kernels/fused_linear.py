"""Fused linear + distillation loss: kd_loss(hidden @ weight.T, ...) without the [N, V] logits.

It takes the hidden states and the output embedding instead of the logits, and forms the logits
a chunk of tokens at a time (the gradient overwrites each chunk's logits in place), so the [N, V]
logits of a big batch (28k tokens x 51,865 = 5.9 GB in fp32) never exist at once.  It runs the
kernel of kd_loss.py (or its twin) on each chunk.

Training does not call it: on the CPU, where this project trains by default, a batch's logits
are small (tens of MB), and on a GPU askd's trust weights c_i and logged parts would have to be
formed chunk by chunk too.  It is kept, apart from the loss askd uses, for memory-bound GPU runs;
the tests check it against the twin and bench/kernels.py times it.
"""

import torch

from kernels import use_triton
from kernels.kd_loss import (
    _check,
    _grad_scale,
    _kd_rows,
    _prepare,
    _reduce,
    _scale_kept_grads,
    kd_loss_reference,
)

# ----------------------------------------------------------------------------------------
# Fused linear + loss: the logits are formed and consumed a chunk of tokens at a time.
# ----------------------------------------------------------------------------------------


def _chunk_logits(source, rows):
    """Teacher logits for a chunk: a slice of [N, V] logits, or formed from (hidden, weight)."""
    if source is None or torch.is_tensor(source):
        return None if source is None else source[rows].detach()
    hidden, weight = source
    with torch.no_grad():
        return hidden[rows] @ weight.T


def _chunk_loss_and_grad(
    logits,
    teacher,
    self_teacher,
    labels,
    weights,
    T,
    ignore_index,
    grad_scale,
    want_grad,
    triton_kernel,
):
    """Per-token losses of one chunk, with the gradient written over `logits` (if wanted)."""
    if triton_kernel:
        return _kd_rows(
            logits,
            teacher,
            self_teacher,
            labels,
            weights,
            T,
            ignore_index,
            grad_scale,
            logits if want_grad else None,
        )
    # The twin: autograd through the reference loss, one chunk at a time.
    w_ce, w_kd, w_self = (0.0 if w is None else w for w in weights)
    with torch.enable_grad():
        s = logits.detach().requires_grad_(want_grad)
        rows = kd_loss_reference(
            s,
            teacher,
            labels,
            self_teacher=self_teacher,
            ce_weight=w_ce,
            kd_weight=w_kd,
            self_weight=w_self,
            T=T,
            ignore_index=ignore_index,
            reduction="none",
        )
        if want_grad:
            (g,) = torch.autograd.grad(rows, s, grad_scale.expand_as(rows))
            logits.copy_(g)
    return rows.detach()


class _FusedLinearKDLoss(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        hidden,
        weight,
        teacher,
        self_teacher,
        labels,
        weights,
        T,
        ignore_index,
        reduction,
        chunk_size,
        triton_kernel,
    ):
        N = hidden.shape[0]
        want_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        valid = labels != ignore_index
        grad_scale = _grad_scale(valid, reduction)
        rows = torch.empty(N, device=hidden.device, dtype=torch.float32)
        grad_hidden = torch.empty_like(hidden) if want_grad else None
        grad_weight = (
            torch.zeros(weight.shape, device=weight.device, dtype=torch.float32)
            if want_grad
            else None
        )
        for start in range(0, N, chunk_size):
            chunk = slice(start, min(start + chunk_size, N))
            h = hidden[chunk]
            logits = h @ weight.T  # [chunk, V]; becomes the gradient d loss / d logits in place
            rows[chunk] = _chunk_loss_and_grad(
                logits,
                _chunk_logits(teacher, chunk),
                _chunk_logits(self_teacher, chunk),
                labels[chunk],
                tuple(None if w is None else w[chunk] for w in weights),
                T,
                ignore_index,
                grad_scale,
                want_grad,
                triton_kernel,
            )
            if want_grad:
                grad_hidden[chunk] = logits @ weight
                if grad_weight.dtype == logits.dtype:
                    grad_weight.addmm_(logits.T, h)
                else:  # half-precision chunks, fp32 running sum
                    grad_weight += (logits.T @ h).float()
            del logits
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype) if want_grad else None)
        ctx.used = False
        return _reduce(rows, valid, reduction)

    @staticmethod
    def backward(ctx, grad_output):
        return _scale_kept_grads(ctx, grad_output) + (None,) * 9


def default_chunk_size(V):
    """Tokens per chunk so a chunk's fp32 logits take about 256 MB (1024 tokens at V = 51,865)."""
    tokens = max(1, 2**26 // V)
    return 1 << (tokens.bit_length() - 1)  # rounded down to a power of two


def fused_linear_kd_loss(
    hidden,
    weight,
    teacher,
    labels,
    *,
    self_teacher=None,
    ce_weight=1.0,
    kd_weight=0.0,
    self_weight=0.0,
    T=1.0,
    ignore_index=-100,
    reduction="mean",
    chunk_size=None,
    backend=None,
):
    """kd_loss(hidden @ weight.T, teacher, labels, ...) without ever holding all N x V logits.

    hidden [N, d], weight [V, d] (the output embedding); gradients flow to both.  teacher and
    self_teacher are logits [N, V], or (hidden_t [N, d_t], weight_t [V, d_t]) pairs so that
    their logits too are formed a chunk at a time.  reduction: 'mean' or 'sum' (the gradient is
    summed into the weight chunk by chunk, so per-token losses cannot be differentiated).
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"fused_linear_kd_loss: hidden [N, d] and weight [V, d] do not fit: "
            f"{tuple(hidden.shape)}, {tuple(weight.shape)}"
        )
    if reduction not in ("mean", "sum"):
        raise ValueError(
            f"fused_linear_kd_loss: reduction must be 'mean' or 'sum', got {reduction!r}"
        )
    N, V = hidden.shape[0], weight.shape[0]
    for name, source in (("teacher", teacher), ("self_teacher", self_teacher)):
        if isinstance(source, (tuple, list)):
            h_t, w_t = source
            if h_t.shape[0] != N or w_t.shape[0] != V or h_t.shape[1] != w_t.shape[1]:
                raise ValueError(
                    f"fused_linear_kd_loss: {name} (hidden, weight) shapes {tuple(h_t.shape)}, "
                    f"{tuple(w_t.shape)} do not give [{N}, {V}] logits"
                )
        elif source is not None and tuple(source.shape) != (N, V):
            raise ValueError(
                f"fused_linear_kd_loss: {name} shape {tuple(source.shape)} != ({N}, {V})"
            )
    fake = torch.empty(N, V, device="meta")  # checks the remaining arguments like kd_loss does
    _check(
        fake,
        None if teacher is None else fake,
        labels,
        None if self_teacher is None else fake,
        kd_weight,
        self_weight,
        reduction,
    )
    labels, weights = _prepare(
        hidden, teacher, labels, self_teacher, ce_weight, kd_weight, self_weight, ignore_index, V
    )
    teacher = teacher if weights[1] is not None else None
    self_teacher = self_teacher if weights[2] is not None else None
    return _FusedLinearKDLoss.apply(
        hidden,
        weight,
        teacher,
        self_teacher,
        labels,
        weights,
        float(T),
        int(ignore_index),
        reduction,
        int(chunk_size or default_chunk_size(V)),
        use_triton(hidden, backend),
    )
