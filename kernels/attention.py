"""Fused (flash) attention: forward and backward in Triton, with a plain PyTorch twin.

For one query row q_i and keys k_j, values v_j that it may see,

    s_ij = scale * q_i . k_j        p_ij = exp(s_ij - L_i)        L_i = log sum_j exp(s_ij)
    o_i  = sum_j p_ij v_j

The twin computes the whole [Lq, Lk] score matrix.  The kernel never does: one program owns
a block of query rows and walks the keys block by block with an *online softmax*.  It keeps,
per row, the running maximum m, the running sum l = sum_j exp(s_ij - m) and the unnormalised
output acc = sum_j exp(s_ij - m) v_j.  When a new key block raises the maximum from m to m',
everything gathered so far is rescaled by exp(m - m'), so at the end o_i = acc / l and
L_i = m + log l.  Only L (one float per row) is kept for the backward pass.
The kernel works in base 2 (exp2, log2), folding log2(e) into the scale: it is the faster
instruction on a GPU and changes nothing else.

Backward, given dO = dLoss/dO (D_i = dO_i . o_i):

    dV_j = sum_i p_ij dO_i                  dP_ij = dO_i . v_j
    dS_ij = p_ij (dP_ij - D_i)              (softmax backward: D_i = sum_j p_ij dP_ij)
    dQ_i = scale sum_j dS_ij k_j            dK_j = scale sum_i dS_ij q_i

p_ij is recomputed from q, k and L block by block.  One kernel owns a block of keys and walks
the queries to sum dK and dV; a second owns a block of queries and walks the keys to sum dQ,
so no two programs ever write the same output (no atomics).

Masks (what Whisper needs): key j is visible to query i iff
    j < k_lengths[b]                 (per-sequence key length: padded audio or text)
    j <= q_offset + i  if causal     (query i is token q_offset + i; with a KV cache of
                                      q_offset tokens, one new token sees them all)
A row that sees no key at all outputs 0 (and passes back zero gradient).

Inputs are fp32, fp16 or bf16; scores, softmax statistics and accumulators are always fp32.
"""

import torch

from kernels import interpreting, tl, triton, use_triton

LOG2E = 1.4426950408889634  # log2(e): exp(x) == exp2(x * LOG2E)
HEAD_DIMS = (16, 32, 64, 128)  # what the kernel supports: tl.dot wants a power of two >= 16


# ----------------------------------------------------------------------------------------
# The PyTorch twin: the oracle for the tests, and what runs on the CPU.
# ----------------------------------------------------------------------------------------


def visible_keys(Lq, Lk, *, causal=False, q_offset=0, k_lengths=None, device=None):
    """Boolean mask [B or 1, 1, Lq, Lk]: True where query i may attend to key j."""
    j = torch.arange(Lk, device=device)
    visible = torch.ones(1, 1, Lq, Lk, dtype=torch.bool, device=device)
    if causal:
        i = torch.arange(Lq, device=device) + q_offset
        visible = visible & (j[None, :] <= i[:, None])
    if k_lengths is not None:
        visible = visible & (j < k_lengths.to(device).view(-1, 1, 1, 1))
    return visible


def attention_reference(
    q, k, v, *, causal=False, q_offset=0, k_lengths=None, scale=None, backend=None
):
    """Plain PyTorch attention, same arguments and result as `attention` (fp32 inside)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    visible = visible_keys(
        q.shape[-2],
        k.shape[-2],
        causal=causal,
        q_offset=q_offset,
        k_lengths=k_lengths,
        device=q.device,
    )
    scores = (q.float() @ k.float().transpose(-1, -2)) * scale
    # A finite fill (not -inf) keeps rows that see no key free of NaN: their softmax is
    # uniform, and multiplying by the mask zeroes it, in the forward and backward pass alike.
    scores = scores.masked_fill(~visible, torch.finfo(torch.float32).min)
    probs = torch.softmax(scores, dim=-1) * visible
    return (probs @ v.float()).to(q.dtype)


# ----------------------------------------------------------------------------------------
# The Triton kernels.
# ----------------------------------------------------------------------------------------


@triton.jit
def _dot(a, b, DOT: tl.constexpr):
    """a @ b with fp32 accumulation.  DOT is the precision for fp32 operands ('tf32x3': three
    TF32 tensor-core products, about fp32 accuracy; 'ieee': plain fp32), ignored for 16-bit
    ones, or 'upcast': multiply the (already rounded) 16-bit operands in fp32, the same products
    as the tensor cores give, for Triton's CPU interpreter whose bf16 dot is wrong."""
    if DOT == "upcast":
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=DOT)


@triton.jit
def _attn_fwd_kernel(
    Q,
    K,
    V,
    Out,
    LSE,
    KLEN,
    sqb,
    sqh,
    sqm,
    sqd,
    skb,
    skh,
    skn,
    skd,
    svb,
    svh,
    svn,
    svd,
    sob,
    soh,
    som,
    sod,
    H,
    Lq,
    Lk,
    q_offset,
    qk_scale,
    CAUSAL: tl.constexpr,
    HAS_KLEN: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DOT: tl.constexpr,
):
    """One program: BLOCK_M query rows of one (batch, head); online softmax over key blocks."""
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    rows = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    Q += b.to(tl.int64) * sqb + h * sqh
    K += b.to(tl.int64) * skb + h * skh
    V += b.to(tl.int64) * svb + h * svh
    Out += b.to(tl.int64) * sob + h * soh

    k_len = Lk
    if HAS_KLEN:
        k_len = tl.minimum(tl.load(KLEN + b).to(tl.int32), Lk)
    hi = k_len  # key blocks past the last visible key of this query block are skipped
    if CAUSAL:
        hi = tl.minimum(hi, q_offset + start_m + BLOCK_M)

    q = tl.load(Q + rows[:, None] * sqm + offs_d[None, :] * sqd, mask=rows[:, None] < Lq, other=0.0)
    # -1e30, not -inf: a row whose keys so far are all masked then rescales by exp2(0) = 1
    # instead of exp2(-inf + inf) = NaN.
    m_i = tl.full([BLOCK_M], -1e30, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + offs_n
        kT = tl.load(
            K + cols[None, :] * skn + offs_d[:, None] * skd, mask=cols[None, :] < k_len, other=0.0
        )
        s = _dot(q, kT, DOT) * qk_scale  # [BLOCK_M, BLOCK_N], log2 units
        visible = cols[None, :] < k_len
        if CAUSAL:
            visible = visible & (cols[None, :] <= q_offset + rows[:, None])
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(
            V + cols[:, None] * svn + offs_d[None, :] * svd, mask=cols[:, None] < k_len, other=0.0
        )
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, DOT)
        m_i = m_new

    has_keys = l_i > 0
    acc = acc / tl.where(has_keys, l_i, 1.0)[:, None]
    # +inf for rows that see nothing: the backward pass then recomputes p = exp2(s - inf) = 0.
    lse = tl.where(has_keys, m_i + tl.log2(tl.where(has_keys, l_i, 1.0)), float("inf"))
    tl.store(
        Out + rows[:, None] * som + offs_d[None, :] * sod,
        acc.to(Out.dtype.element_ty),
        mask=rows[:, None] < Lq,
    )
    tl.store(LSE + bh.to(tl.int64) * Lq + rows, lse, mask=rows < Lq)


@triton.jit
def _attn_bwd_dkdv_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DK,
    DV,
    KLEN,
    sqb,
    sqh,
    sqm,
    sqd,
    skb,
    skh,
    skn,
    skd,
    svb,
    svh,
    svn,
    svd,
    sdob,
    sdoh,
    sdom,
    sdod,
    H,
    Lq,
    Lk,
    q_offset,
    qk_scale,
    scale,
    CAUSAL: tl.constexpr,
    HAS_KLEN: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DOT: tl.constexpr,
):
    """One program: dK and dV for BLOCK_N keys of one (batch, head), walking the query blocks.

    Works on transposed scores (keys x queries) so dK and dV come out as plain dots.
    dK and dV share strides with K and V (the wrapper allocates them that way)."""
    start_n = tl.program_id(0) * BLOCK_N
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    cols = start_n + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    Q += b.to(tl.int64) * sqb + h * sqh
    K += b.to(tl.int64) * skb + h * skh
    V += b.to(tl.int64) * svb + h * svh
    DO += b.to(tl.int64) * sdob + h * sdoh
    DK += b.to(tl.int64) * skb + h * skh
    DV += b.to(tl.int64) * svb + h * svh
    LSE += bh.to(tl.int64) * Lq
    DELTA += bh.to(tl.int64) * Lq

    k_len = Lk
    if HAS_KLEN:
        k_len = tl.minimum(tl.load(KLEN + b).to(tl.int32), Lk)
    lo = 0
    if CAUSAL:  # queries before q_offset + i >= start_n see none of these keys
        lo = tl.maximum(start_n - q_offset, 0) // BLOCK_M * BLOCK_M
    hi = tl.where(start_n < k_len, Lq, lo)  # a key block wholly past k_len gets zero gradient

    k = tl.load(
        K + cols[:, None] * skn + offs_d[None, :] * skd, mask=cols[:, None] < k_len, other=0.0
    )
    v = tl.load(
        V + cols[:, None] * svn + offs_d[None, :] * svd, mask=cols[:, None] < k_len, other=0.0
    )
    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    for start_m in range(lo, hi, BLOCK_M):
        rows = start_m + offs_m
        qT = tl.load(
            Q + rows[None, :] * sqm + offs_d[:, None] * sqd, mask=rows[None, :] < Lq, other=0.0
        )
        lse = tl.load(LSE + rows, mask=rows < Lq, other=float("inf"))
        sT = _dot(k, qT, DOT) * qk_scale  # [BLOCK_N, BLOCK_M]
        visible = cols[:, None] < k_len
        if CAUSAL:
            visible = visible & (cols[:, None] <= q_offset + rows[None, :])
        pT = tl.exp2(tl.where(visible, sT, float("-inf")) - lse[None, :])  # masked: exp2(-inf) = 0
        do = tl.load(
            DO + rows[:, None] * sdom + offs_d[None, :] * sdod, mask=rows[:, None] < Lq, other=0.0
        )
        dv += _dot(pT.to(do.dtype), do, DOT)
        delta = tl.load(DELTA + rows, mask=rows < Lq, other=0.0)
        dpT = _dot(v, tl.trans(do), DOT)
        dsT = pT * (dpT - delta[None, :])
        dk += _dot(dsT.to(qT.dtype), tl.trans(qT), DOT)
    dk *= scale
    tl.store(
        DK + cols[:, None] * skn + offs_d[None, :] * skd,
        dk.to(DK.dtype.element_ty),
        mask=cols[:, None] < Lk,
    )
    tl.store(
        DV + cols[:, None] * svn + offs_d[None, :] * svd,
        dv.to(DV.dtype.element_ty),
        mask=cols[:, None] < Lk,
    )


@triton.jit
def _attn_bwd_dq_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DQ,
    KLEN,
    sqb,
    sqh,
    sqm,
    sqd,
    skb,
    skh,
    skn,
    skd,
    svb,
    svh,
    svn,
    svd,
    sdob,
    sdoh,
    sdom,
    sdod,
    H,
    Lq,
    Lk,
    q_offset,
    qk_scale,
    scale,
    CAUSAL: tl.constexpr,
    HAS_KLEN: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DOT: tl.constexpr,
):
    """One program: dQ for BLOCK_M queries of one (batch, head), walking the key blocks.
    dQ shares strides with Q."""
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    rows = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    Q += b.to(tl.int64) * sqb + h * sqh
    K += b.to(tl.int64) * skb + h * skh
    V += b.to(tl.int64) * svb + h * svh
    DO += b.to(tl.int64) * sdob + h * sdoh
    DQ += b.to(tl.int64) * sqb + h * sqh
    LSE += bh.to(tl.int64) * Lq
    DELTA += bh.to(tl.int64) * Lq

    k_len = Lk
    if HAS_KLEN:
        k_len = tl.minimum(tl.load(KLEN + b).to(tl.int32), Lk)
    hi = k_len
    if CAUSAL:
        hi = tl.minimum(hi, q_offset + start_m + BLOCK_M)

    q = tl.load(Q + rows[:, None] * sqm + offs_d[None, :] * sqd, mask=rows[:, None] < Lq, other=0.0)
    do = tl.load(
        DO + rows[:, None] * sdom + offs_d[None, :] * sdod, mask=rows[:, None] < Lq, other=0.0
    )
    lse = tl.load(LSE + rows, mask=rows < Lq, other=float("inf"))
    delta = tl.load(DELTA + rows, mask=rows < Lq, other=0.0)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + offs_n
        kT = tl.load(
            K + cols[None, :] * skn + offs_d[:, None] * skd, mask=cols[None, :] < k_len, other=0.0
        )
        vT = tl.load(
            V + cols[None, :] * svn + offs_d[:, None] * svd, mask=cols[None, :] < k_len, other=0.0
        )
        s = _dot(q, kT, DOT) * qk_scale
        visible = cols[None, :] < k_len
        if CAUSAL:
            visible = visible & (cols[None, :] <= q_offset + rows[:, None])
        p = tl.exp2(tl.where(visible, s, float("-inf")) - lse[:, None])
        dp = _dot(do, vT, DOT)
        ds = p * (dp - delta[:, None])
        dq += _dot(ds.to(kT.dtype), tl.trans(kT), DOT)
    dq *= scale
    tl.store(
        DQ + rows[:, None] * sqm + offs_d[None, :] * sqd,
        dq.to(DQ.dtype.element_ty),
        mask=rows[:, None] < Lq,
    )


# ----------------------------------------------------------------------------------------
# Launchers and the autograd wrapper.
# ----------------------------------------------------------------------------------------


def _dot_precision(q):
    """The DOT argument of _dot for inputs like q."""
    if interpreting():
        return "upcast" if q.dtype == torch.bfloat16 else "ieee"
    return "tf32x3" if torch.cuda.get_device_capability(q.device)[0] >= 8 else "ieee"


# Tile sizes per kernel: (rows a program owns, rows it walks per step, warps), by 16-bit vs fp32
# inputs and head_dim <= 64 vs 128.  Chosen so that every kernel compiles for an H100 (sm_90)
# without register spills (checked with ptxas); 16-bit tiles can be larger than fp32 ones.
BLOCKS = {
    ("fwd", True, True): (128, 64, 8),
    ("fwd", True, False): (128, 64, 8),
    ("fwd", False, True): (64, 32, 4),
    ("fwd", False, False): (32, 32, 8),
    ("dkdv", True, True): (128, 32, 8),
    ("dkdv", True, False): (64, 32, 8),
    ("dkdv", False, True): (32, 32, 8),
    ("dkdv", False, False): (16, 16, 8),
    ("dq", True, True): (128, 32, 8),
    ("dq", True, False): (128, 32, 8),
    ("dq", False, True): (64, 32, 4),
    ("dq", False, False): (32, 16, 8),
}


def _launch_config(kernel, q, L_own, L_walk):
    """Block sizes (no larger than the lengths need: one query gets a 16-row tile) and options."""
    half = q.dtype != torch.float32
    own, walk, warps = BLOCKS[kernel, half, q.shape[-1] <= 64]
    fit = lambda block, L: max(16, min(block, triton.next_power_of_2(L)))  # noqa: E731
    return fit(own, L_own), fit(walk, L_walk), dict(num_warps=warps, num_stages=3 if half else 2)


def _flash_forward(q, k, v, causal, q_offset, k_lengths, scale):
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    o = torch.empty_like(q)  # same layout as q, so a transposed q gives a transposed o for free
    lse = torch.empty(B, H, Lq, device=q.device, dtype=torch.float32)
    block_m, block_n, opts = _launch_config("fwd", q, Lq, Lk)
    _attn_fwd_kernel[(triton.cdiv(Lq, block_m), B * H)](
        q,
        k,
        v,
        o,
        lse,
        k_lengths if k_lengths is not None else lse,
        *q.stride(),
        *k.stride(),
        *v.stride(),
        *o.stride(),
        H,
        Lq,
        Lk,
        q_offset,
        scale * LOG2E,
        CAUSAL=causal,
        HAS_KLEN=k_lengths is not None,
        HEAD_DIM=D,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        DOT=_dot_precision(q),
        **opts,
    )
    return o, lse


def _flash_backward(do, q, k, v, o, lse, causal, q_offset, k_lengths, scale):
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    delta = (do.float() * o.float()).sum(-1)  # D_i = dO_i . o_i, [B, H, Lq]
    # dQ, dK, dV share strides with q, k, v (the kernels index them with the same strides).
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    if dq.stride() != q.stride() or dk.stride() != k.stride() or dv.stride() != v.stride():
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    args = (
        *q.stride(),
        *k.stride(),
        *v.stride(),
        *do.stride(),
        H,
        Lq,
        Lk,
        q_offset,
        scale * LOG2E,
        scale,
    )
    common = dict(CAUSAL=causal, HAS_KLEN=k_lengths is not None, HEAD_DIM=D, DOT=_dot_precision(q))
    klen = k_lengths if k_lengths is not None else lse

    block_n, block_m, opts = _launch_config("dkdv", q, Lk, Lq)
    _attn_bwd_dkdv_kernel[(triton.cdiv(Lk, block_n), B * H)](
        q,
        k,
        v,
        do,
        lse,
        delta,
        dk,
        dv,
        klen,
        *args,
        **common,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        **opts,
    )
    block_m, block_n, opts = _launch_config("dq", q, Lq, Lk)
    _attn_bwd_dq_kernel[(triton.cdiv(Lq, block_m), B * H)](
        q, k, v, do, lse, delta, dq, klen, *args, **common, BLOCK_M=block_m, BLOCK_N=block_n, **opts
    )
    return dq, dk, dv


class _FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, q_offset, k_lengths, scale):
        o, lse = _flash_forward(q, k, v, causal, q_offset, k_lengths, scale)
        ctx.save_for_backward(q, k, v, o, lse, k_lengths)
        ctx.args = (causal, q_offset, scale)
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, k_lengths = ctx.saved_tensors
        dq, dk, dv = _flash_backward(do, q, k, v, o, lse, *ctx.args[:2], k_lengths, ctx.args[2])
        return dq, dk, dv, None, None, None, None


def _check(q, k, v, k_lengths):
    """Shapes and dtypes the kernel can take; a one-line ValueError otherwise."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"attention: q, k, v must be [batch, heads, length, head_dim], "
            f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    B, H, _, D = q.shape
    if k.shape != v.shape or k.shape[0] != B or k.shape[1] != H or k.shape[3] != D:
        raise ValueError(
            f"attention: k {tuple(k.shape)} and v {tuple(v.shape)} do not fit q {tuple(q.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"attention: q, k, v dtypes differ ({q.dtype}, {k.dtype}, {v.dtype})")
    if k_lengths is not None and tuple(k_lengths.shape) != (B,):
        raise ValueError(
            f"attention: k_lengths must have shape ({B},), got {tuple(k_lengths.shape)}"
        )


def attention(q, k, v, *, causal=False, q_offset=0, k_lengths=None, scale=None, backend=None):
    """softmax(scale * q k^T, masked) v for q [B, H, Lq, D] and k, v [B, H, Lk, D].

    causal: query i (token q_offset + i) sees keys j <= q_offset + i.
    k_lengths: optional integer tensor [B]; keys j >= k_lengths[b] are masked.
    scale: defaults to D ** -0.5.  Returns [B, H, Lq, D] in q's dtype; rows that see no key
    are 0.  Differentiable.  `backend` as in kernels.use_triton.
    """
    _check(q, k, v, k_lengths)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if not use_triton(q, backend) or q.numel() == 0 or k.shape[2] == 0:
        return attention_reference(
            q, k, v, causal=causal, q_offset=q_offset, k_lengths=k_lengths, scale=scale
        )
    D = q.shape[-1]
    if D not in HEAD_DIMS:
        raise ValueError(
            f"attention: head_dim {D} not supported by the Triton kernel (use one of {HEAD_DIMS})"
        )
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"attention: dtype {q.dtype} not supported by the Triton kernel")
    if k_lengths is not None:
        k_lengths = k_lengths.to(device=q.device, dtype=torch.int32).contiguous()
    return _FlashAttention.apply(q, k, v, bool(causal), int(q_offset), k_lengths, scale)
