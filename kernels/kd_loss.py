"""Fused softmax + distillation loss over the vocabulary, in Triton, with a plain PyTorch twin.

Per token i, with student logits s, teacher logits t, self-teacher logits e (all [V]), label y
and temperature T, the loss is

    loss_i = w_ce   * CE(y, softmax(s))
           + w_kd   * T^2 * KL(softmax(t/T) || softmax(s/T))
           + w_self * T^2 * KL(softmax(e/T) || softmax(s/T))

with its own weight per term and per token; a token labelled ignore_index contributes 0.
These are the losses askd.py calls; 'mean' divides by the number of non-ignored tokens.
With parts=True the same single pass also returns each term's unweighted mean (CE, T^2 KL to
the teacher, T^2 KL to the self-teacher), which askd logs: one pass over the vocabulary per step.

Written with log-sum-exps (lse(x) = log sum_j exp x_j):

    CE           = lse(s) - s_y
    KL(p || q)   = sum_j p_j (t_j/T - s_j/T) - lse(t/T) + lse(s/T)       p = softmax(t/T)

and the gradients with respect to the student logits are

    d CE / ds              = softmax(s) - onehot(y)
    d T^2 KL(p || q) / ds  = T (softmax(s/T) - softmax(t/T))

Every sum above can be gathered in one streaming pass over the vocabulary with the online
log-sum-exp: keep a running max m and a running sum z = sum exp(x - m); when a new block
raises the max to m', rescale z by exp(m - m').  The teacher's sum_j exp(t_j/T - m)(t_j/T - s_j/T)
is rescaled the same way.  So the kernel gives each token one program that

    1. walks the vocabulary in blocks once, gathering lse(s), lse(s/T), lse(t/T), lse(e/T)
       and the two cross sums: that is the loss;
    2. walks it again and writes the gradient above, now that the normalisers are known.

Both passes live in one kernel, which runs in the forward pass (the gradient is kept for
backward, scaled by grad_output there).  Extra memory is O(tokens): a few floats per row, plus
the gradient itself, which is the size of the student logits and which autograd needs anyway.

"""

import torch
import torch.nn.functional as F

from kernels import tl, triton, use_triton

REDUCTIONS = ("mean", "sum", "none")


# ----------------------------------------------------------------------------------------
# The PyTorch twin: the oracle for the tests, and what runs on the CPU.
# ----------------------------------------------------------------------------------------


def _is_zero(weight):
    """A weight given as the number 0 switches its term off (a tensor never does)."""
    return not torch.is_tensor(weight) and float(weight) == 0.0


def _kl(log_p, log_q):
    """KL(p || q) per row from log-probabilities; terms with p = 0 count 0 (even if log p -inf)."""
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), 0.0).sum(-1)


def _term_on(weight, logits, parts):
    """A term runs if its weight is not the number 0, or, with parts=True, if it has logits."""
    return not _is_zero(weight) or (parts and logits is not None)


def kd_loss_reference(
    student,
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
    parts=False,
    backend=None,
):
    """Plain PyTorch `kd_loss` (same arguments, same result), differentiated by autograd."""
    _check(student, teacher, labels, self_teacher, kd_weight, self_weight, reduction)
    s = student.float()
    labels = labels.to(s.device).long()
    valid = labels != ignore_index
    terms = {}  # name -> (weight, per-token value)
    if _term_on(ce_weight, s, parts):
        terms["ce"] = (
            ce_weight,
            -F.log_softmax(s, -1).gather(1, labels.where(valid, 0)[:, None])[:, 0],
        )
    log_q = None
    for name, weight, target in (("kd", kd_weight, teacher), ("self", self_weight, self_teacher)):
        if _term_on(weight, target, parts):
            log_q = F.log_softmax(s / T, -1) if log_q is None else log_q
            terms[name] = weight, T * T * _kl(F.log_softmax(target.detach().float() / T, -1), log_q)
    loss = torch.zeros(s.shape[0], device=s.device)
    for weight, value in terms.values():
        loss = loss + torch.as_tensor(weight, dtype=torch.float32, device=s.device) * value
    loss = _reduce(torch.where(valid, loss, 0.0), valid, reduction)
    if not parts:
        return loss
    return loss, {
        name: _reduce(torch.where(valid, v, 0.0).detach(), valid, "mean")
        for name, (_, v) in terms.items()
    }


def _reduce(loss, valid, reduction):
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / valid.sum().clamp(min=1)


def _check(student, teacher, labels, self_teacher, kd_weight, self_weight, reduction):
    """Shapes and arguments; a one-line ValueError otherwise."""
    if student.dim() != 2:
        raise ValueError(
            f"kd_loss: student logits must be [tokens, vocab], got {tuple(student.shape)}"
        )
    for name, other, weight in (
        ("teacher", teacher, kd_weight),
        ("self_teacher", self_teacher, self_weight),
    ):
        if other is None and not _is_zero(weight):
            raise ValueError(f"kd_loss: a weight is given for {name} but {name} is None")
        if other is not None and other.shape != student.shape:
            raise ValueError(
                f"kd_loss: {name} shape {tuple(other.shape)} != "
                f"student shape {tuple(student.shape)}"
            )
    if labels.shape != student.shape[:1] or labels.is_floating_point():
        raise ValueError(
            f"kd_loss: labels must be integers of shape ({student.shape[0]},), "
            f"got {labels.dtype} {tuple(labels.shape)}"
        )
    if reduction not in REDUCTIONS:
        raise ValueError(f"kd_loss: reduction must be one of {REDUCTIONS}, got {reduction!r}")


# ----------------------------------------------------------------------------------------
# The Triton kernel.
# ----------------------------------------------------------------------------------------


@triton.jit
def _load_block(ptr, cols, mask):
    """A block of one row in fp32.  Lanes past the vocabulary read -1e30: exp() makes them 0,
    yet unlike -inf their differences stay finite (no 0 * NaN in the cross sums)."""
    return tl.where(mask, tl.load(ptr + cols, mask=mask, other=0.0).to(tl.float32), -1e30)


@triton.jit
def _lse(m, z, valid):
    """log-sum-exp from a running max and sum; 0 for an ignored token, whose pass 1 was skipped."""
    return tl.where(valid, m + tl.log(tl.maximum(z, 1e-30)), 0.0)


@triton.jit
def _lse_step(x, m, z):
    """One vocabulary block of x: running max m and sum z = sum exp(x - m), rescaled as m grows."""
    m_new = tl.maximum(m, tl.max(x, 0))
    return m_new, z * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), 0)


@triton.jit
def _kl_term(m, z, a, lse_q, valid, T):
    """(lse of a teacher's softened logits, T^2 KL(p_t || q)) from its sums (_teacher_step)."""
    lse = _lse(m, z, valid)
    return lse, T * T * (a / tl.maximum(z, 1e-30) - lse + lse_q)


@triton.jit
def _store_part(ptr, value, valid, WRITE_PARTS: tl.constexpr):
    """One token's unweighted term for the log (0 for an ignored token), if parts are asked for."""
    if WRITE_PARTS:
        tl.store(ptr, tl.where(valid, value, 0.0))


@triton.jit
def _teacher_step(t, sT, m, z, a):
    """One vocabulary block of a teacher's softened logits t: update its running max m, its
    sum z = sum exp(t - m) and a = sum exp(t - m) * (t - sT), both rescaled when m grows.
    At the end KL(p_t || q) = a / z - lse(t) + lse(sT)."""
    m_new = tl.maximum(m, tl.max(t, 0))
    alpha = tl.exp(m - m_new)
    p = tl.exp(t - m_new)
    z = z * alpha + tl.sum(p, 0)
    a = a * alpha + tl.sum(tl.where(p > 0, p * (t - sT), 0.0), 0)  # p = 0: no 0 * inf
    return m_new, z, a


@triton.jit
def _kd_loss_kernel(
    S,
    TCH,
    SELF,
    LABELS,
    W_CE,
    W_KD,
    W_SELF,
    GRAD_SCALE,
    LOSS,
    PARTS,
    GRAD,
    stride_s,
    stride_t,
    stride_e,
    stride_g,
    V,
    ignore_index,
    inv_T,
    T,
    HAS_CE: tl.constexpr,
    HAS_KD: tl.constexpr,
    HAS_SELF: tl.constexpr,
    WRITE_PARTS: tl.constexpr,
    WRITE_GRAD: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """One program per token: pass 1 gathers the log-sum-exps (the loss, and with WRITE_PARTS each
    unweighted term in PARTS[row, 0:3]), pass 2 writes the gradient.  GRAD may be S itself: pass 2
    reads each element before it overwrites that same element."""
    row = tl.program_id(0).to(tl.int64)
    S += row * stride_s
    TCH += row * stride_t
    SELF += row * stride_e
    GRAD += row * stride_g
    label = tl.load(LABELS + row).to(tl.int32)
    valid = label != ignore_index
    n_vocab = tl.where(valid, V, 0)  # an ignored token skips pass 1 entirely
    offs = tl.arange(0, BLOCK_V)
    # Running max (m) and sum of exp(x - m) (z) for s, s/T, t/T, e/T; the teachers also keep a = sum
    # exp(x - m) (x - s/T). m starts at -1e30, not -inf: an all -inf block rescales by 1, not NaN
    m_s, z_s = -1e30, 0.0
    m_q, z_q = -1e30, 0.0
    m_t, z_t, a_t = -1e30, 0.0, 0.0
    m_e, z_e, a_e = -1e30, 0.0, 0.0
    for start in range(0, n_vocab, BLOCK_V):
        cols = start + offs
        mask = cols < V
        s = _load_block(S, cols, mask)
        if HAS_CE:
            m_s, z_s = _lse_step(s, m_s, z_s)
        if HAS_KD or HAS_SELF:
            sT = s * inv_T
            m_q, z_q = _lse_step(sT, m_q, z_q)
        if HAS_KD:
            m_t, z_t, a_t = _teacher_step(_load_block(TCH, cols, mask) * inv_T, sT, m_t, z_t, a_t)
        if HAS_SELF:
            m_e, z_e, a_e = _teacher_step(_load_block(SELF, cols, mask) * inv_T, sT, m_e, z_e, a_e)

    loss = 0.0
    PARTS += row * 3
    if HAS_CE:
        lse_s = _lse(m_s, z_s, valid)
        w_ce = tl.load(W_CE + row)
        ce = lse_s - tl.load(S + tl.where(valid, label, 0)).to(tl.float32)
        loss += w_ce * ce
        _store_part(PARTS, ce, valid, WRITE_PARTS)
    if HAS_KD or HAS_SELF:
        lse_q = _lse(m_q, z_q, valid)
    if HAS_KD:
        lse_t, kd = _kl_term(m_t, z_t, a_t, lse_q, valid, T)
        w_kd = tl.load(W_KD + row)
        loss += w_kd * kd
        _store_part(PARTS + 1, kd, valid, WRITE_PARTS)
    if HAS_SELF:
        lse_e, kd_self = _kl_term(m_e, z_e, a_e, lse_q, valid, T)
        w_self = tl.load(W_SELF + row)
        loss += w_self * kd_self
        _store_part(PARTS + 2, kd_self, valid, WRITE_PARTS)
    tl.store(LOSS + row, tl.where(valid, loss, 0.0))

    if WRITE_GRAD:
        grad_scale = tl.load(GRAD_SCALE)
        for start in range(0, V, BLOCK_V):
            cols = start + offs
            mask = cols < n_vocab  # an ignored token loads nothing and writes zeros
            s = tl.load(S + cols, mask=mask, other=0.0).to(tl.float32)
            g = tl.zeros([BLOCK_V], tl.float32)
            if HAS_CE:
                g += w_ce * (tl.exp(s - lse_s) - tl.where(cols == label, 1.0, 0.0))
            if HAS_KD or HAS_SELF:
                q = tl.exp(s * inv_T - lse_q)
            if HAS_KD:
                t = tl.load(TCH + cols, mask=mask, other=0.0).to(tl.float32)
                g += (
                    w_kd * T * (q - tl.exp(t * inv_T - lse_t))
                )  # T^2 on the loss, T on the gradient
            if HAS_SELF:
                e = tl.load(SELF + cols, mask=mask, other=0.0).to(tl.float32)
                g += w_self * T * (q - tl.exp(e * inv_T - lse_e))
            g = tl.where(valid, g * grad_scale, 0.0)
            tl.store(GRAD + cols, g.to(GRAD.dtype.element_ty), mask=cols < V)


# ----------------------------------------------------------------------------------------
# Launcher, autograd wrappers and the public functions.
# ----------------------------------------------------------------------------------------

BLOCK_V = 4096  # vocabulary entries per step: 13 steps for Whisper's 51,865


def _row_weights(weight, n, device):
    """A weight given as a number or a [N] tensor, as a contiguous fp32 tensor [N]."""
    w = torch.as_tensor(weight, dtype=torch.float32, device=device)
    if w.dim() == 1 and w.shape[0] != n:
        raise ValueError(f"kd_loss: a weight tensor must have shape ({n},), got {tuple(w.shape)}")
    return w.expand(n).contiguous()


def _last_dim_contiguous(x):
    return x if x is None or x.stride(-1) == 1 else x.contiguous()


def _kd_rows(
    student, teacher, self_teacher, labels, weights, T, ignore_index, grad_scale, grad, parts=None
):
    """Run the kernel: per-token losses [N] (fp32), the gradient written into `grad` and the
    unweighted terms into `parts` [N, 3] (ce, kd, self) if given.

    weights: (ce, kd, self) as fp32 [N] tensors, or None where the term is off.
    grad_scale: fp32 tensor [1] multiplying the gradient (1 / tokens for 'mean').
    grad may be `student` itself (the fused-linear path overwrites its logit chunks)."""
    N, V = student.shape
    loss = torch.empty(N, device=student.device, dtype=torch.float32)
    w_ce, w_kd, w_self = (
        w if w is not None else loss for w in weights
    )  # unused slots: any pointer
    teacher = teacher if teacher is not None else student
    self_teacher = self_teacher if self_teacher is not None else student
    _kd_loss_kernel[(N,)](
        student,
        teacher,
        self_teacher,
        labels,
        w_ce,
        w_kd,
        w_self,
        grad_scale,
        loss,
        parts if parts is not None else loss,
        grad if grad is not None else student,
        student.stride(0),
        teacher.stride(0),
        self_teacher.stride(0),
        grad.stride(0) if grad is not None else 0,
        V,
        ignore_index,
        1.0 / T,
        T,
        HAS_CE=weights[0] is not None,
        HAS_KD=weights[1] is not None,
        HAS_SELF=weights[2] is not None,
        WRITE_PARTS=parts is not None,
        WRITE_GRAD=grad is not None,
        BLOCK_V=min(BLOCK_V, triton.next_power_of_2(V)),
        num_warps=8,
    )
    return loss


def _prepare(
    student,
    teacher,
    labels,
    self_teacher,
    ce_weight,
    kd_weight,
    self_weight,
    ignore_index,
    V,
    parts=False,
):
    """Checked labels and per-token weight tensors (None for a term switched off, see _term_on)."""
    n = labels.shape[0]
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= V))
    if bad.any():
        raise ValueError(
            f"kd_loss: labels must be in [0, {V}) or ignore_index={ignore_index}, "
            f"got {labels[bad][0].item()}"
        )
    weights = tuple(
        _row_weights(w, n, student.device) if _term_on(w, logits, parts) else None
        for w, logits in ((ce_weight, student), (kd_weight, teacher), (self_weight, self_teacher))
    )
    return labels.contiguous(), weights


def _grad_scale(valid, reduction):
    """fp32 [1]: the factor on each token's gradient (1 / non-ignored tokens for 'mean')."""
    if reduction == "mean":
        return (1.0 / valid.sum().clamp(min=1).float()).reshape(1)
    return torch.ones(1, device=valid.device)


def _scale_kept_grads(ctx, grad_output, per_row=False):
    """The gradients kept from the forward pass, times grad_output.

    Scaled in place, to need no second N x V buffer; so a second backward through the same
    loss (retain_graph=True) would scale them twice, and is refused."""
    if ctx.used:
        raise RuntimeError(
            "kd_loss: backward through the same loss twice is not supported "
            "(the gradient kept from the forward pass is scaled in place)"
        )
    ctx.used = True
    grads = ctx.saved_tensors
    if per_row:
        factor = grad_output[:, None]
    elif grad_output.item() == 1.0:  # loss.backward(): nothing to do
        return grads
    else:
        factor = grad_output
    return tuple(None if g is None else g.mul_(factor.to(g.dtype)) for g in grads)


class _KDLoss(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, student, teacher, self_teacher, labels, weights, T, ignore_index, reduction, parts
    ):
        valid = labels != ignore_index
        grad = torch.empty_like(student) if ctx.needs_input_grad[0] else None
        terms = (
            torch.zeros(labels.shape[0], 3, device=student.device)
            if parts
            else student.new_empty(0)
        )
        rows = _kd_rows(
            student,
            teacher,
            self_teacher,
            labels,
            weights,
            T,
            ignore_index,
            _grad_scale(valid, reduction),
            grad,
            terms if parts else None,
        )
        ctx.save_for_backward(grad)
        ctx.rows, ctx.used = reduction == "none", False
        ctx.mark_non_differentiable(terms)
        return _reduce(rows, valid, reduction), terms

    @staticmethod
    def backward(ctx, grad_output, _grad_terms):
        (grad,) = _scale_kept_grads(ctx, grad_output, per_row=ctx.rows)
        return (grad,) + (None,) * 8


def kd_loss(
    student,
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
    parts=False,
    backend=None,
):
    """Cross-entropy plus distillation from a teacher and a self-teacher, fused over the vocabulary.

    student, teacher, self_teacher: logits [N, V] (teacher/self_teacher may be None when their
    weight is 0); labels [N] integers; each weight a number or a [N] tensor; T the temperature.
    Returns the 'mean' (over non-ignored tokens; 0 if none), 'sum' or per-token ('none') loss
    in fp32.  Gradient flows to the student only.  `backend` as in kernels.use_triton.

    parts=True returns (loss, parts) from the same single pass: parts maps 'ce', 'kd' (T^2 KL to
    the teacher) and 'self' (T^2 KL to the self-teacher) to each term's unweighted mean over the
    non-ignored tokens (0-d fp32 tensors, no gradient), for every term whose logits are given
    (CE always); a weight of 0 then keeps a term out of the loss but not out of `parts`.
    """
    _check(student, teacher, labels, self_teacher, kd_weight, self_weight, reduction)
    if not use_triton(student, backend) or student.numel() == 0:
        return kd_loss_reference(
            student,
            teacher,
            labels,
            self_teacher=self_teacher,
            ce_weight=ce_weight,
            kd_weight=kd_weight,
            self_weight=self_weight,
            T=T,
            ignore_index=ignore_index,
            reduction=reduction,
            parts=parts,
        )
    labels, weights = _prepare(
        student,
        teacher,
        labels,
        self_teacher,
        ce_weight,
        kd_weight,
        self_weight,
        ignore_index,
        student.shape[1],
        parts,
    )
    teacher = None if weights[1] is None else _last_dim_contiguous(teacher.detach())
    self_teacher = None if weights[2] is None else _last_dim_contiguous(self_teacher.detach())
    loss, terms = _KDLoss.apply(
        _last_dim_contiguous(student),
        teacher,
        self_teacher,
        labels,
        weights,
        float(T),
        int(ignore_index),
        reduction,
        parts,
    )
    if not parts:
        return loss
    means = terms.sum(0) / (labels != ignore_index).sum().clamp(min=1)
    return loss, {
        name: means[i] for i, name in enumerate(("ce", "kd", "self")) if weights[i] is not None
    }
