"""Triton kernels for FastWhisper, each next to a plain PyTorch twin.

Two kernels carry the GPU speed of the project:

    attention.py  fused (flash) attention, forward and backward
    kd_loss.py    fused softmax + cross-entropy + distillation loss over the vocabulary

and fused_linear.py, kd_loss from the hidden states without ever forming all the logits at once
(for memory-bound GPU runs; training does not use it).

Every kernel has a twin written in plain PyTorch with the same signature.  The twin is
what runs on the CPU and it is the oracle the tests compare the kernel against.

One switch picks between them: the `backend` argument of each function, or, when that is
None, the environment variable FASTWHISPER_KERNELS.  Both take

    'auto'    (default) the Triton kernel for CUDA tensors, the twin otherwise
    'triton'  always the kernel (on the CPU this needs TRITON_INTERPRET=1)
    'torch'   always the twin

Triton is optional: without it the twins still work, and asking for 'triton' is an error.
Without a GPU, Triton runs kernels only through its CPU interpreter, which must be switched on
(TRITON_INTERPRET=1) before this package is imported: the tests do that to check the kernels
on the CPU (slowly).  Nothing here sets it: on a CPU-only machine 'auto' picks the twins anyway.
"""

import os

import torch


def interpreting():
    """True when Triton runs kernels on the CPU through its interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


try:
    # Triton is imported only where a kernel can run (a GPU, or its interpreter): on a CPU alone
    # none would launch, and the import slows every `transcribe` start-up.
    if not (torch.cuda.is_available() or interpreting()):
        raise ImportError("no GPU and no interpreter")
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # the twins still work; the kernels below are never launched
    from types import SimpleNamespace

    triton = SimpleNamespace(jit=lambda fn: fn, cdiv=lambda a, b: -(-a // b))
    tl = SimpleNamespace(constexpr=int)
    HAVE_TRITON = False

BACKENDS = ("auto", "triton", "torch")
ENV_VAR = "FASTWHISPER_KERNELS"


def use_triton(tensor, backend=None):
    """Whether to run the Triton kernel (True) or the PyTorch twin (False) on `tensor`."""
    backend = backend or os.environ.get(ENV_VAR) or "auto"
    backend = backend.lower()
    if backend not in BACKENDS:
        raise ValueError(
            f"{ENV_VAR}: unknown kernel backend {backend!r} (choose from {', '.join(BACKENDS)})"
        )
    if backend == "torch":
        return False
    if backend == "auto":
        return HAVE_TRITON and tensor.is_cuda
    if not HAVE_TRITON:
        raise ValueError(
            f"{ENV_VAR}: backend 'triton' asked for, but triton is not installed "
            f"(or, without a GPU, TRITON_INTERPRET=1 was not set before the import)"
        )
    if not tensor.is_cuda and not interpreting():
        raise ValueError(
            f"{ENV_VAR}: backend 'triton' needs CUDA tensors (or TRITON_INTERPRET=1 on the CPU)"
        )
    return True


# Imported last: the modules below take triton, tl and use_triton from this package.
from kernels.attention import attention, attention_reference  # noqa: E402
from kernels.fused_linear import fused_linear_kd_loss  # noqa: E402
from kernels.kd_loss import kd_loss, kd_loss_reference  # noqa: E402

__all__ = [
    "attention",
    "attention_reference",
    "kd_loss",
    "kd_loss_reference",
    "fused_linear_kd_loss",
    "use_triton",
    "HAVE_TRITON",
]
