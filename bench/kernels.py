"""Benchmark: the Triton kernels against PyTorch, at Whisper's shapes, on a GPU.

    python fastwhisper.py bench kernels        (or, from the repository: python -m bench.kernels)

For each case it times the Triton kernel and its PyTorch counterpart (mean of REPS runs after a
warm-up, with CUDA events) and measures the peak memory each allocates beyond its inputs
(torch.cuda.max_memory_allocated), then prints both with their ratios, all from this one run:

    attention  vs torch.nn.functional.scaled_dot_product_attention (PyTorch's fused kernels)
    kd_loss    vs the plain PyTorch loss (kernels.kd_loss_reference), forward + backward

Goals: attention at least on par with SDPA; the KD loss faster than PyTorch's and with at
least 5x less peak memory at batch 64.  On a machine without a GPU it says so and exits.
"""

import sys

import torch

DEVICE = "cuda"
REPS = 10
HEADS, HEAD_DIM = 8, 64  # Whisper base: d_model 512 = 8 heads x 64
AUDIO_FRAMES, TEXT_TOKENS = 1500, 448
VOCAB = 51865
BATCH = 16  # attention batch
KD_BATCH, KD_TOKENS = 64, 128  # KD loss: 64 utterances x 128 text tokens = 8192 token rows
D_MODEL = 512


def measure(fn):
    """(mean ms per call, peak MB allocated beyond what was live before) for a CUDA callable."""
    fn()  # warm-up: compiles the Triton kernel for this shape
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(REPS):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / REPS, peak_mb


def safely(fn):
    try:
        return measure(fn)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return None


def forward_backward(fn, inputs, *args, **kw):
    """A callable running fn forward and backward (gradients to `inputs`, then dropped)."""

    def run():
        out = fn(*args, **kw)
        torch.autograd.grad(out, inputs, torch.ones_like(out) if out.dim() else None)

    return run


# ----------------------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------------------


def attention_cases():
    """(name, Lq, Lk, options) for each way Whisper attends, at batch BATCH."""
    lengths = torch.linspace(AUDIO_FRAMES // 3, AUDIO_FRAMES, BATCH).int()  # a padded batch
    return [
        (f"encoder self {AUDIO_FRAMES}", AUDIO_FRAMES, AUDIO_FRAMES, {}),
        (f"decoder self {TEXT_TOKENS} causal", TEXT_TOKENS, TEXT_TOKENS, dict(causal=True)),
        (f"cross {TEXT_TOKENS} x {AUDIO_FRAMES}", TEXT_TOKENS, AUDIO_FRAMES, {}),
        (
            f"cross {TEXT_TOKENS} x {AUDIO_FRAMES}, lengths",
            TEXT_TOKENS,
            AUDIO_FRAMES,
            dict(k_lengths=lengths),
        ),
        (
            f"decode 1 token, kv cache {TEXT_TOKENS}",
            1,
            TEXT_TOKENS,
            dict(causal=True, q_offset=TEXT_TOKENS - 1),
        ),
        (f"decode 1 token x {AUDIO_FRAMES}", 1, AUDIO_FRAMES, {}),
    ]


def sdpa(q, k, v, causal=False, q_offset=0, k_lengths=None):
    """PyTorch's attention, same masking rules (a boolean mask where is_causal cannot say it)."""
    import torch.nn.functional as F

    from kernels.attention import visible_keys

    Lq, Lk = q.shape[2], k.shape[2]
    if k_lengths is None and (not causal or q_offset >= Lk - 1):  # every query sees every key
        return F.scaled_dot_product_attention(q, k, v)
    if k_lengths is None and Lq == Lk and q_offset == 0:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    mask = visible_keys(
        Lq, Lk, causal=causal, q_offset=q_offset, k_lengths=k_lengths, device=q.device
    )
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def bench_attention(rows, dtype):
    from kernels import attention

    for name, Lq, Lk, kw in attention_cases():
        kw = {
            key: (value.to(DEVICE) if torch.is_tensor(value) else value)
            for key, value in kw.items()
        }
        q = torch.randn(BATCH, HEADS, Lq, HEAD_DIM, device=DEVICE, dtype=dtype, requires_grad=True)
        k, v = (
            torch.randn(BATCH, HEADS, Lk, HEAD_DIM, device=DEVICE, dtype=dtype, requires_grad=True)
            for _ in range(2)
        )
        shape = f"{BATCH}x{HEADS}x{Lq}x{Lk}x{HEAD_DIM}"
        with torch.no_grad():
            rows.append(
                (
                    f"attention fwd  {name}",
                    shape,
                    safely(lambda: attention(q, k, v, backend="triton", **kw)),
                    safely(lambda: sdpa(q, k, v, **kw)),
                )
            )
        if Lq > 1:  # training shapes only
            rows.append(
                (
                    f"attention f+b  {name}",
                    shape,
                    safely(forward_backward(attention, (q, k, v), q, k, v, backend="triton", **kw)),
                    safely(forward_backward(sdpa, (q, k, v), q, k, v, **kw)),
                )
            )


def bench_kd_loss(rows, dtype):
    from kernels import fused_linear_kd_loss, kd_loss, kd_loss_reference

    N = KD_BATCH * KD_TOKENS
    shape = f"{N}x{VOCAB}"
    student = torch.randn(N, VOCAB, device=DEVICE, dtype=dtype, requires_grad=True)
    teacher, self_teacher = (torch.randn(N, VOCAB, device=DEVICE, dtype=dtype) for _ in range(2))
    labels = torch.randint(0, VOCAB, (N,), device=DEVICE)
    labels[::7] = -100  # some padding
    kw = dict(
        self_teacher=self_teacher,
        ce_weight=1.0,
        kd_weight=torch.rand(N, device=DEVICE),
        self_weight=0.5,
        T=2.0,
    )
    rows.append(
        (
            "kd_loss f+b  CE + KD + self-KD, T=2",
            shape,
            safely(
                forward_backward(
                    kd_loss, (student,), student, teacher, labels, backend="triton", **kw
                )
            ),
            safely(forward_backward(kd_loss_reference, (student,), student, teacher, labels, **kw)),
        )
    )
    del student

    hidden = torch.randn(N, D_MODEL, device=DEVICE, dtype=dtype, requires_grad=True)
    weight = (torch.randn(VOCAB, D_MODEL, device=DEVICE, dtype=dtype) * 0.05).requires_grad_()

    def linear_then_loss(h, w, *args, **kw):
        return kd_loss_reference(h @ w.T, *args, **kw)

    rows.append(
        (
            f"fused linear+kd f+b  d={D_MODEL}",
            f"{N}x{D_MODEL} @ {VOCAB}x{D_MODEL}",
            safely(
                forward_backward(
                    fused_linear_kd_loss,
                    (hidden, weight),
                    hidden,
                    weight,
                    teacher,
                    labels,
                    backend="triton",
                    **kw,
                )
            ),
            safely(
                forward_backward(
                    linear_then_loss, (hidden, weight), hidden, weight, teacher, labels, **kw
                )
            ),
        )
    )


# ----------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------


def print_table(title, rows, baseline):
    print(f"\n{title}  (ratios: {baseline} / Triton; > 1 means Triton is faster or smaller)")
    head = (
        f"{'case':44s} {'shape':26s} {'triton ms':>10s} {baseline + ' ms':>10s} {'speedup':>8s}"
        f" {'triton MB':>10s} {baseline + ' MB':>10s} {'mem ratio':>9s}"
    )
    print(head)
    print("-" * len(head))
    for name, shape, ours, theirs in rows:
        cells = []
        for i in (0, 1):  # ms, then MB
            a = f"{ours[i]:10.3f}" if ours else f"{'OOM':>10s}"
            b = f"{theirs[i]:10.3f}" if theirs else f"{'OOM':>10s}"
            ratio = (
                f"{theirs[i] / ours[i]:7.2f}x" if ours and theirs and ours[i] > 0 else f"{'-':>8s}"
            )
            cells.append(f"{a} {b} {ratio:>8s}")
        print(f"{name:44s} {shape:26s} {cells[0]} {cells[1]}")


def main(argv=None):
    if not torch.cuda.is_available():
        print("bench kernels: needs a CUDA GPU, and none was found")
        return 0
    print(
        f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, {REPS} runs per timing"
    )
    for dtype in (torch.float16, torch.bfloat16):
        rows = []
        bench_attention(rows, dtype)
        print_table(f"attention, {str(dtype)[6:]}", rows, "sdpa")
    for dtype in (torch.bfloat16, torch.float32):
        rows = []
        bench_kd_loss(rows, dtype)
        print_table(f"distillation loss, {str(dtype)[6:]} logits, batch {KD_BATCH}", rows, "torch")
        torch.cuda.empty_cache()
    return 0


bench_kernels = main  # the name the CLI calls

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
