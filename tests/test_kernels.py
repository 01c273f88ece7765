"""Tests for kernels/: each Triton kernel, forward and backward, against its PyTorch twin.

With a GPU the kernels run natively on it.  Without one they run in Triton's CPU interpreter,
which must be switched on before triton is imported (conftest.py does it; so does this file, when
run alone). The interpreter is slow, so the shapes are the awkward ones (lengths 1, 7, 1500; V =
51,864 and 51,865; N = 1) with few rows and heads rather than big ones.

Tolerances: fp32 results agree with the twin to 1e-5 relative to the largest entry; fp16 and
bf16 ones to atol 1e-2, as in Triton's own tutorials (plus rtol 1.6e-2 for bf16), against the
twin run in fp32 on the same (rounded) inputs.
"""

import os
import subprocess
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch.nn.functional as F

from kernels import (
    attention,
    attention_reference,
    fused_linear_kd_loss,
    kd_loss,
    kd_loss_reference,
    use_triton,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ROOT = Path(__file__).resolve().parent.parent


def assert_rel(actual, expected, rel=1e-5, what=""):
    """max |actual - expected| <= rel * max |expected| (and both finite)."""
    actual, expected = actual.float(), expected.float()
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    err = (actual - expected).abs().max().item()
    scale = expected.abs().max().item()
    assert err <= rel * max(scale, 1e-30), f"{what}: max error {err:.3g} > {rel:g} x {scale:.3g}"


def randn(*shape, dtype=torch.float32, std=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * std).to(device=DEVICE, dtype=dtype)


# ----------------------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------------------


def attention_and_grads(fn, q, k, v, d_out, **kw):
    q, k, v = (x.detach().requires_grad_() for x in (q, k, v))
    out = fn(q, k, v, **kw)
    return (out, *torch.autograd.grad(out, (q, k, v), d_out))


ATTENTION_CASES = {
    # name: (B, H, Lq, Lk, D, options)
    "self_7": (1, 2, 7, 7, 64, {}),
    "cross_448_over_1500": (1, 1, 448, 1500, 64, {}),
    "decode_one_token_kv_cache": (2, 2, 1, 7, 64, dict(causal=True, q_offset=6)),
    "causal_offset": (2, 2, 7, 20, 32, dict(causal=True, q_offset=13)),
    "key_lengths_1500": (3, 1, 1, 1500, 16, dict(k_lengths=[1500, 700, 1])),
    "key_lengths_with_empty_row": (3, 1, 5, 300, 16, dict(k_lengths=[300, 7, 0])),
    "causal_and_lengths_d128": (
        1,
        1,
        70,
        150,
        128,
        dict(causal=True, q_offset=80, k_lengths=[100]),
    ),
    "scale": (1, 1, 33, 65, 32, dict(scale=0.3)),
}


def attention_case(name, dtype=torch.float32, std=1.0):
    B, H, Lq, Lk, D, kw = ATTENTION_CASES[name]
    kw = dict(kw)
    if "k_lengths" in kw:
        kw["k_lengths"] = torch.tensor(kw["k_lengths"], device=DEVICE)
    q, k, v = (randn(B, H, L, D, dtype=dtype, std=std, seed=i) for i, L in enumerate((Lq, Lk, Lk)))
    return q, k, v, randn(B, H, Lq, D, dtype=dtype, seed=3), kw


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ATTENTION_CASES))
def test_attention_fp32_matches_twin(name):
    q, k, v, d_out, kw = attention_case(name)
    got = attention_and_grads(attention, q, k, v, d_out, backend="triton", **kw)
    want = attention_and_grads(attention_reference, q, k, v, d_out, **kw)
    for a, b, what in zip(got, want, ("out", "dq", "dk", "dv")):
        assert a.dtype == b.dtype == torch.float32
        assert_rel(a, b, 1e-5, f"{name} {what}")


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "name", ["cross_448_over_1500", "causal_offset", "key_lengths_with_empty_row"]
)
def test_attention_half_precision(name, dtype):
    q, k, v, d_out, kw = attention_case(name, dtype, std=0.5)  # Triton's tutorial draws N(0, 0.5)
    got = attention_and_grads(attention, q, k, v, d_out, backend="triton", **kw)
    want = attention_and_grads(attention_reference, *(x.float() for x in (q, k, v, d_out)), **kw)
    # bf16 keeps 3 bits fewer than fp16: add torch.testing's default bf16 rtol to the tutorial atol
    rtol = 1.6e-2 if dtype == torch.bfloat16 else 0.0
    for a, b, what in zip(got, want, ("out", "dq", "dk", "dv")):
        assert a.dtype == dtype
        torch.testing.assert_close(a.float(), b, atol=1e-2, rtol=rtol, msg=f"{name} {dtype} {what}")


def test_attention_rows_that_see_no_key_are_zero():
    q, k, v, d_out, kw = attention_case("key_lengths_with_empty_row")
    out, dq, dk, dv = attention_and_grads(attention, q, k, v, d_out, backend="triton", **kw)
    assert out[2].abs().max() == 0 and dq[2].abs().max() == 0  # sequence 2 has no keys at all
    assert dk[1, :, 7:].abs().max() == 0 and dv[1, :, 7:].abs().max() == 0  # keys past the length
    assert out[0].abs().max() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_attention_extreme_scores_stay_finite(dtype):
    """Scores near +-1e4: the softmax is one-hot-like, and nothing overflows."""
    B, H, L, D = 1, 2, 7, 64
    q = randn(B, H, L, D, seed=1).sign() * 12.5
    k = randn(B, H, L, D, seed=2).sign() * 12.5  # scores q.k / 8 of up to +-1250 ...
    q[..., 0, :] *= 8  # ... and up to +-1e4 in row 0
    v, d_out = randn(B, H, L, D, seed=3), randn(B, H, L, D, seed=4)
    q, k, v, d_out = (x.to(dtype) for x in (q, k, v, d_out))
    got = attention_and_grads(attention, q, k, v, d_out, backend="triton", causal=True)
    want = attention_and_grads(
        attention_reference, *(x.float() for x in (q, k, v, d_out)), causal=True
    )
    for a, b, what in zip(got, want, ("out", "dq", "dk", "dv")):
        assert torch.isfinite(a).all(), what
        torch.testing.assert_close(
            a.float(), b, atol=1e-2 if dtype != torch.float32 else 1e-4, rtol=1e-3
        )


def test_attention_gradient_by_finite_differences():
    """The kernel's backward against central differences of the kernel's own forward."""
    B, H, Lq, Lk, D = 2, 1, 5, 9, 16
    kw = dict(
        causal=True, q_offset=4, k_lengths=torch.tensor([9, 6], device=DEVICE), backend="triton"
    )
    q, k, v = (randn(B, H, L, D, seed=i) for i, L in enumerate((Lq, Lk, Lk)))
    w = randn(B, H, Lq, D, seed=5)
    grads = attention_and_grads(attention, q, k, v, w, **kw)[1:]
    directions = [randn(*x.shape, seed=10 + i) for i, x in enumerate((q, k, v))]
    h = 1e-2

    def f(sign):
        moved = [x + sign * h * d for x, d in zip((q, k, v), directions)]
        return (attention(*moved, **kw).double() * w).sum()

    numeric = (f(1) - f(-1)) / (2 * h)
    analytic = sum((g.double() * d).sum() for g, d in zip(grads, directions))
    assert abs(numeric - analytic) <= 1e-3 * abs(analytic), (numeric.item(), analytic.item())


def test_attention_takes_strided_inputs():
    """q, k, v as [B, L, H, D] transposed to [B, H, L, D] (the model's layout), no copies."""
    B, L, H, D = 2, 7, 3, 32
    q, k, v = (randn(B, L, H, D, seed=i).transpose(1, 2) for i in range(3))
    assert not q.is_contiguous()
    d_out = randn(B, H, L, D, seed=4)
    got = attention_and_grads(attention, q, k, v, d_out, backend="triton", causal=True)
    want = attention_and_grads(attention_reference, q, k, v, d_out, causal=True)
    for a, b in zip(got, want):
        assert_rel(a, b, 1e-5)


def test_attention_twin_matches_pytorch_sdpa():
    """The oracle itself, against PyTorch's attention (with a boolean mask for the same rules)."""
    from kernels.attention import visible_keys

    q, k, v, _, kw = attention_case("causal_and_lengths_d128")
    want = F.scaled_dot_product_attention(
        q, k, v, attn_mask=visible_keys(70, 150, device=DEVICE, **kw)
    )
    assert_rel(attention_reference(q, k, v, **kw), want, 1e-5)


def test_attention_rejects_bad_shapes():
    q = randn(1, 2, 7, 64)
    with pytest.raises(ValueError, match="attention"):
        attention(q, randn(1, 2, 7, 32), randn(1, 2, 7, 32), backend="triton")
    with pytest.raises(ValueError, match="head_dim"):
        x = randn(1, 2, 7, 48)
        attention(x, x, x, backend="triton")
    with pytest.raises(ValueError, match="k_lengths"):
        attention(q, q, q, k_lengths=torch.tensor([7, 7]))


# ----------------------------------------------------------------------------------------
# Distillation loss
# ----------------------------------------------------------------------------------------


def kd_inputs(N, V, dtype=torch.float32, ignored=(0,), seed=0):
    student, teacher, self_teacher = (
        randn(N, V, dtype=dtype, std=3.0, seed=seed + i) for i in range(3)
    )
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, V, (N,), generator=g)
    labels[list(ignored)] = -100
    weights = dict(
        ce_weight=torch.rand(N, generator=g).to(DEVICE),
        kd_weight=0.7,
        self_weight=torch.rand(N, generator=g).to(DEVICE),
    )
    return student, teacher, self_teacher, labels.to(DEVICE), weights


def loss_and_grad(fn, student, teacher, labels, grad_out=None, **kw):
    s = student.detach().requires_grad_()
    loss = fn(s, teacher, labels, **kw)
    grad_out = torch.ones_like(loss) * 1.3 if grad_out is None else grad_out
    return loss, torch.autograd.grad(loss, s, grad_out)[0]


@pytest.mark.slow
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("T", [1.0, 2.0])
@pytest.mark.parametrize("V", [51864, 51865])
def test_kd_loss_fp32_matches_twin(V, T, reduction):
    s, t, e, labels, w = kd_inputs(3, V)
    grad_out = randn(3, seed=9) if reduction == "none" else None
    kw = dict(self_teacher=e, T=T, reduction=reduction, **w)
    loss, grad = loss_and_grad(kd_loss, s, t, labels, grad_out, backend="triton", **kw)
    want_loss, want_grad = loss_and_grad(kd_loss_reference, s, t, labels, grad_out, **kw)
    assert loss.dtype == torch.float32 and loss.shape == want_loss.shape
    assert_rel(loss, want_loss, 1e-5, "loss")
    assert_rel(grad, want_grad, 1e-5, "grad")
    assert grad[0].abs().max() == 0  # the ignored token


@pytest.mark.slow
@pytest.mark.parametrize("logits", ["random", "real-ish"])
def test_kd_loss_kernel_is_a_drop_in_for_askds_loss(logits, monkeypatch):
    """askd.distill_loss writes the loss out in PyTorch; the kernel, switched on, gives the same
    loss, gradient and logged parts."""
    import askd

    if logits == "random":
        s, t, e, labels, _ = kd_inputs(5, 300, ignored=(1,))
    else:  # a decoder's: one token far ahead of a long tail, the students near the teacher
        V, top = 51864, torch.tensor([11, 50256, 220, 13])
        t = randn(4, V, std=2.0, seed=3)
        t[range(4), top.to(DEVICE)] += 12.0
        s, e = (t + randn(4, V, std=1.0, seed=seed) for seed in (4, 5))
        labels = torch.tensor([11, -100, 7, 13], device=DEVICE)  # token 2: the teacher is wrong
    cfg = askd.LossConfig("askd", T=2.0, alpha="linear:1:0", beta="linear:0:1")
    got = {}
    for backend in ("torch", "triton"):
        monkeypatch.setenv("FASTWHISPER_KERNELS", backend)
        x = s.detach().requires_grad_()
        loss, parts = askd.distill_loss(x, labels, t, e, cfg, s=0.4)
        got[backend] = loss, torch.autograd.grad(loss, x)[0], parts
    (loss, grad, parts), (want_loss, want_grad, want_parts) = got["triton"], got["torch"]
    assert_rel(loss, want_loss, 1e-5, "loss")
    assert_rel(grad, want_grad, 1e-5, "grad")
    assert parts.keys() == want_parts.keys() >= {"ce", "kd", "self", "trust"}
    for name in want_parts:
        assert parts[name] == pytest.approx(want_parts[name], rel=1e-5, abs=1e-6), name


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kd_loss_half_precision(dtype):
    s, t, e, labels, w = kd_inputs(3, 51865, dtype)
    kw = dict(self_teacher=e, T=2.0, **w)
    loss, grad = loss_and_grad(kd_loss, s, t, labels, backend="triton", **kw)
    want_loss, want_grad = loss_and_grad(kd_loss_reference, s.float(), t, labels, **kw)
    assert grad.dtype == dtype
    assert_rel(loss, want_loss, 1e-5, "loss")  # fp32 arithmetic on the same inputs
    torch.testing.assert_close(grad.float(), want_grad, atol=1e-2, rtol=0)


def test_kd_loss_single_token_ce_only_matches_cross_entropy():
    """N = 1, no teacher: plain cross-entropy, checked against PyTorch's own."""
    s, _, _, labels, _ = kd_inputs(1, 51865, ignored=())
    loss, grad = loss_and_grad(kd_loss, s, None, labels, backend="triton")
    s2 = s.detach().requires_grad_()
    want = F.cross_entropy(s2, labels)
    assert_rel(loss, want, 1e-5)
    assert_rel(grad, torch.autograd.grad(want * 1.3, s2)[0], 1e-5)


def test_kd_loss_kl_term_matches_pytorch_kl_div():
    """The KD term alone at T = 2 against T^2 * F.kl_div (mean over tokens, none ignored)."""
    s, t, _, labels, _ = kd_inputs(4, 1000, ignored=())
    T = 2.0
    loss = kd_loss(s, t, labels, ce_weight=0.0, kd_weight=1.0, T=T, backend="triton")
    want = (
        T
        * T
        * F.kl_div(
            F.log_softmax(s / T, -1),
            F.log_softmax(t / T, -1),
            log_target=True,
            reduction="batchmean",
        )
    )
    assert_rel(loss, want, 1e-5)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_kd_loss_all_ignored_is_zero(reduction):
    s, t, e, labels, w = kd_inputs(2, 51865, ignored=(0, 1))
    loss, grad = loss_and_grad(
        kd_loss, s, t, labels, self_teacher=e, reduction=reduction, backend="triton", **w
    )
    assert loss.item() == 0.0 and grad.abs().max() == 0
    ref = kd_loss_reference(s, t, labels, self_teacher=e, reduction=reduction, **w)
    assert ref.item() == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_kd_loss_extreme_logits(dtype):
    """Logits of +-1e4 (and teachers far from the student) give finite, correct losses."""
    N, V = 4, 51865
    s, t, e = (randn(N, V, seed=i).sign() * 1e4 for i in range(3))
    s[1] = 0.0
    s[1, 7] = 1e4  # one huge logit in an otherwise flat row
    labels = torch.tensor([5, 7, 51864, 0], device=DEVICE)
    kw = dict(self_teacher=e.to(dtype), ce_weight=1.0, kd_weight=0.5, self_weight=0.25)
    for T in (1.0, 2.0):
        loss, grad = loss_and_grad(
            kd_loss, s.to(dtype), t.to(dtype), labels, T=T, reduction="none", backend="triton", **kw
        )
        want_loss, want_grad = loss_and_grad(
            kd_loss_reference, s, t.to(dtype), labels, T=T, reduction="none", **kw
        )
        assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
        assert_rel(loss, want_loss, 1e-5, f"loss T={T}")
        torch.testing.assert_close(grad.float(), want_grad, atol=1e-3, rtol=0)


def test_kd_loss_gradient_by_finite_differences():
    """The kernel's gradient against central differences of the kernel's own loss."""
    s, t, e, labels, w = kd_inputs(4, 37, ignored=(2,))
    kw = dict(self_teacher=e, T=2.0, backend="triton", **w)
    _, grad = loss_and_grad(kd_loss, s, t, labels, torch.tensor(1.0, device=DEVICE), **kw)
    direction = randn(*s.shape, seed=11)
    h = 1e-2
    numeric = (
        kd_loss(s + h * direction, t, labels, **kw).double()
        - kd_loss(s - h * direction, t, labels, **kw).double()
    ) / (2 * h)
    analytic = (grad.double() * direction).sum()
    assert abs(numeric - analytic) <= 1e-3 * abs(analytic), (numeric.item(), analytic.item())


def test_kd_loss_takes_int32_labels():
    s, t, _, labels, _ = kd_inputs(3, 300)
    for backend in ("triton", "torch"):
        assert_rel(
            kd_loss(s, t, labels.int(), kd_weight=0.5, backend=backend),
            kd_loss_reference(s, t, labels, kd_weight=0.5),
            1e-5,
            backend,
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="peak memory is measured on a GPU")
def test_extra_memory_is_per_token_not_per_score():
    """kd_loss needs its gradient (N x V) and O(N) more; attention its output and O(Lq) more."""

    def peak_extra(fn):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    s, t, e, labels, w = kd_inputs(256, 51865)
    s.requires_grad_()
    extra = peak_extra(lambda: kd_loss(s, t, labels, self_teacher=e, T=2.0, **w).backward())
    assert extra <= s.numel() * 4 + 2**20, extra
    q = randn(2, 8, 1500, 64, dtype=torch.float16)
    with torch.no_grad():
        extra = peak_extra(lambda: attention(q, q, q))
    assert extra <= q.numel() * 2 + 2**20, extra  # the [1500, 1500] scores would be 72 MB


def test_kd_loss_refuses_a_second_backward():
    """The kept gradient is scaled in place, so backward twice must fail loudly, not silently."""
    s, t, _, labels, _ = kd_inputs(2, 100)
    s.requires_grad_()
    loss = kd_loss(s, t, labels, kd_weight=1.0, backend="triton") * 2.0
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="twice"):
        loss.backward()


def test_kd_loss_rejects_bad_arguments():
    s, t, _, labels, _ = kd_inputs(3, 50)
    with pytest.raises(ValueError, match="teacher"):
        kd_loss(s, None, labels, kd_weight=1.0)
    with pytest.raises(ValueError, match="shape"):
        kd_loss(s, t[:, :40], labels, kd_weight=1.0)
    with pytest.raises(ValueError, match="labels"):
        kd_loss(s, t, torch.full((3,), 50, device=DEVICE), kd_weight=1.0, backend="triton")
    with pytest.raises(ValueError, match="reduction"):
        kd_loss(s, t, labels, reduction="avg")


# ----------------------------------------------------------------------------------------
# Fused linear + distillation loss
# ----------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("teacher_as", ["logits", "hidden_and_weight"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_fused_linear_kd_loss_matches_twin(backend, teacher_as, reduction):
    N, d, d_t, V = 7, 16, 8, 51865
    hidden, weight = randn(N, d, seed=1), randn(V, d, std=0.5, seed=2)
    hidden_t, weight_t = randn(N, d_t, seed=3), randn(V, d_t, seed=4)
    teacher_logits = hidden_t @ weight_t.T
    _, _, e, labels, w = kd_inputs(N, V, ignored=(2,))
    kw = dict(self_teacher=e, T=2.0, reduction=reduction, **w)
    teacher = teacher_logits if teacher_as == "logits" else (hidden_t, weight_t)

    h, W = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss = fused_linear_kd_loss(h, W, teacher, labels, chunk_size=3, backend=backend, **kw)
    grads = torch.autograd.grad(loss * 1.7, (h, W))
    h2, W2 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    want = kd_loss_reference(h2 @ W2.T, teacher_logits, labels, **kw)
    want_grads = torch.autograd.grad(want * 1.7, (h2, W2))
    assert_rel(loss, want, 1e-5, "loss")
    # d/d hidden sums 51,865 terms whose weights cancel (softmax minus one-hot): a little looser.
    assert_rel(grads[0], want_grads[0], 3e-5, "d hidden")
    assert_rel(grads[1], want_grads[1], 1e-5, "d weight")


@pytest.mark.slow
def test_fused_linear_kd_loss_half_precision_default_chunks():
    N, d, V = 5, 32, 51865
    hidden, weight = (
        randn(N, d, dtype=torch.bfloat16, seed=1),
        randn(V, d, dtype=torch.bfloat16, std=0.3, seed=2),
    )
    s, t, _, labels, _ = kd_inputs(N, V, ignored=(1,))
    h, W = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss = fused_linear_kd_loss(h, W, t, labels, kd_weight=1.0, backend="triton")
    gh, gW = torch.autograd.grad(loss, (h, W))
    assert gh.dtype == gW.dtype == torch.bfloat16
    h2, W2 = hidden.float().requires_grad_(), weight.float().requires_grad_()
    want = kd_loss_reference((h2 @ W2.T).bfloat16().float(), t, labels, kd_weight=1.0)
    want_gh, want_gW = torch.autograd.grad(want, (h2, W2))
    assert_rel(loss, want, 1e-5, "loss")
    assert_rel(gh, want_gh, 2e-2, "d hidden")
    assert_rel(gW, want_gW, 2e-2, "d weight")


def test_fused_linear_rejects_bad_shapes():
    with pytest.raises(ValueError, match="fused_linear_kd_loss"):
        fused_linear_kd_loss(
            randn(3, 8), randn(50, 4), None, torch.zeros(3, dtype=torch.long, device=DEVICE)
        )
    with pytest.raises(ValueError, match="reduction"):
        fused_linear_kd_loss(
            randn(3, 8),
            randn(50, 8),
            None,
            torch.zeros(3, dtype=torch.long, device=DEVICE),
            reduction="none",
        )


# ----------------------------------------------------------------------------------------
# Dispatch
# ----------------------------------------------------------------------------------------


def test_dispatch_switch(monkeypatch):
    cpu = torch.zeros(1)
    monkeypatch.delenv("FASTWHISPER_KERNELS", raising=False)
    assert use_triton(cpu) is False  # default: the twin on the CPU
    assert use_triton(cpu, "torch") is False
    monkeypatch.setenv("FASTWHISPER_KERNELS", "triton")
    assert use_triton(cpu, "auto") is False  # the argument wins over the environment
    if (
        torch.cuda.is_available()
    ):  # Triton on CPU tensors needs the interpreter, off on a GPU machine
        with pytest.raises(ValueError, match="CUDA"):
            use_triton(cpu)
    else:
        assert use_triton(cpu) is True
    monkeypatch.setenv("FASTWHISPER_KERNELS", "cuda")
    with pytest.raises(ValueError, match="FASTWHISPER_KERNELS"):
        use_triton(cpu)
    if torch.cuda.is_available():
        monkeypatch.delenv("FASTWHISPER_KERNELS")
        assert use_triton(torch.zeros(1, device="cuda")) is True


@pytest.mark.slow
def test_twins_work_without_triton():
    """With triton unimportable, kernels/ still imports and the twins run; 'triton' is refused."""
    script = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, kernels\n"
        "assert not kernels.HAVE_TRITON\n"
        "q = torch.randn(1, 2, 5, 16)\n"
        "assert kernels.attention(q, q, q, causal=True).shape == q.shape\n"
        "loss = kernels.kd_loss(torch.randn(3, 11), torch.randn(3, 11), "
        "torch.tensor([1, 2, -100]), kd_weight=1.0)\n"
        "assert torch.isfinite(loss)\n"
        "try:\n"
        "    kernels.attention(q, q, q, backend='triton')\n"
        "    raise SystemExit('triton backend was not refused')\n"
        "except ValueError as e:\n"
        "    assert 'not installed' in str(e)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.slow
def test_importing_kernels_leaves_the_environment_alone():
    """No process-wide switch on import: without TRITON_INTERPRET, 'auto' runs the twins on CPU."""
    script = (
        "import os, torch, kernels\n"
        "assert 'TRITON_INTERPRET' not in os.environ\n"
        "assert not kernels.use_triton(torch.zeros(1))\n"
    )
    env = {
        k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "FASTWHISPER_KERNELS")
    }
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=dict(env, PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES=""),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_kd_loss_parts_come_from_one_pass(backend, monkeypatch):
    """parts=True: one kernel launch gives the weighted loss and gradient, and each term's
    unweighted mean, equal to what three separate calls (CE; T^2 KL to the teacher; to the
    self-teacher) give."""
    module = sys.modules["kernels.kd_loss"]  # the attribute kernels.kd_loss is the function
    s, t, e, labels, _ = kd_inputs(6, 1000, ignored=(2,))
    w = torch.rand(6, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    launches, launch = [], module._kd_rows

    def counting(*args, **kwargs):
        launches.append(1)
        return launch(*args, **kwargs)

    monkeypatch.setattr(module, "_kd_rows", counting)
    kw = dict(self_teacher=e, ce_weight=0.8, kd_weight=w, self_weight=0.3, T=2.0)
    s1 = s.clone().requires_grad_(True)
    loss, parts = kd_loss(s1, t, labels, parts=True, backend=backend, **kw)
    loss.backward()
    assert len(launches) == (1 if backend == "triton" else 0) and set(parts) == {"ce", "kd", "self"}
    want_loss, want_grad = loss_and_grad(
        kd_loss_reference, s, t, labels, torch.tensor(1.0, device=DEVICE), **kw
    )
    assert_rel(loss, want_loss, 1e-5, "loss")
    assert_rel(s1.grad, want_grad, 1e-5, "grad")
    separate = {
        "ce": kd_loss_reference(s, None, labels),
        "kd": kd_loss_reference(s, t, labels, ce_weight=0.0, kd_weight=1.0, T=2.0),
        "self": kd_loss_reference(
            s, None, labels, self_teacher=e, ce_weight=0.0, self_weight=1.0, T=2.0
        ),
    }
    for name, value in separate.items():
        assert_rel(parts[name], value, 1e-5, name)
    _, only = kd_loss(
        s, t, labels, kd_weight=0.0, T=2.0, parts=True, backend=backend
    )  # weight 0: logged, not in loss
    assert set(only) == {"ce", "kd"}
    assert_rel(only["kd"], separate["kd"], 1e-5, "kd with weight 0")
