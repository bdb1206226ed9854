"""A stack of causal depthwise dilated 1-D convolutions (TCNCA's temporal convolutional network) as one op.

Level ``l`` (``l = 0 .. L-1``) convolves every channel with its own ``K``-tap kernel at dilation ``base**l``;
levels are joined by an activation and a residual. The receptive field is ``1 + (K-1)(base**L - 1)/(base-1)``
tokens (``K == base`` tiles it exactly: every lag below ``K**L`` is reached by one path of taps), at
``L·K`` multiply-adds per token and channel: O(T), against O(T log T) for MEGA's FFT-computed EMA.
"""

from __future__ import annotations

import torch

from .._backend import (
    FLOAT_DTYPES,
    check_choice,
    check_varlen,
    check_same_device,
    check_tensor,
    num_sequences,
    resolve_backend,
)

OP = "dilated_conv"
ACTIVATIONS = (None, "silu", "gelu", "relu")

__all__ = [
    "dilated_conv",
    "dilated_conv_step",
    "receptive_field",
    "state_size",
    "level_spans",
    "state_to_ring",
    "ring_to_state",
]


def level_spans(depth: int, kernel_size: int, dilation_base: int) -> list[tuple[int, int, int]]:
    """``[(dilation, history P_l, offset of level l in the state)]`` for every level. Level ``l`` reads its
    input ``P_l = (K-1)·base**l`` tokens back, so its slice of the state holds that many tokens."""
    spans, off = [], 0
    for level in range(depth):
        d = dilation_base**level
        p = (kernel_size - 1) * d
        spans.append((d, p, off))
        off += p
    return spans


def state_size(depth: int, kernel_size: int, dilation_base: int) -> int:
    """S, the tokens of history per channel the stack needs (``receptive_field - 1``)."""
    return sum(p for _, p, _ in level_spans(depth, kernel_size, dilation_base))


def receptive_field(depth: int, kernel_size: int, dilation_base: int) -> int:
    """How many tokens (the current one included) an output can see."""
    return 1 + state_size(depth, kernel_size, dilation_base)


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{OP}: {name} must be an int >= {minimum}, got {value!r}")
    return value


def _check_common(x_name, x, weight, bias, dilation_base, activation, residual, time_dim: bool):
    if time_dim:
        check_tensor(OP, x_name, x, ndim=3, layout="[B, T, D]")
        D = x.shape[2]
    else:
        check_tensor(OP, x_name, x, ndim=2, layout="[B, D]")
        D = x.shape[1]
    check_tensor(OP, "weight", weight, ndim=3, layout="[L, D, K] (levels, channels, taps)")
    L, Dw, K = weight.shape
    if Dw != D or L < 1 or K < 1:
        raise ValueError(
            f"{OP}: weight has shape {list(weight.shape)}, expected [L, D, K] with D = {D} (the channels of "
            f"{x_name}), L >= 1 levels and K >= 1 taps"
        )
    if bias is not None:
        check_tensor(OP, "bias", bias, shape=(L, D), layout="[L, D] (one bias per level and channel)")
    _check_int("dilation_base", dilation_base, 1)
    check_choice(OP, "activation", activation, ACTIVATIONS)
    if not isinstance(residual, bool):
        raise TypeError(f"{OP}: residual must be a bool, got {residual!r}")
    return L, D, K


def dilated_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    dilation_base: int = 2,
    activation: str | None = "silu",
    residual: bool = True,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    cu_seqlens_cpu: torch.Tensor | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run ``L`` causal depthwise dilated convolutions over time, one after another.

    With ``h_0 = x`` and ``d_l = dilation_base**l``, level ``l`` computes per channel

        a_l[t]    = bias[l] + Σ_{j<K} weight[l, :, j] · h_l[t - (K-1-j)·d_l]        (h_l[t < 0] from the state)
        h_{l+1}   = h_l + φ(a_l)   if residual else   φ(a_l)

    where ``φ = activation`` on every level but the last (the last is linear: the caller applies its own
    output nonlinearity), and returns ``y = h_L``. ``weight[..., K-1]`` is the current token's tap, as for
    ``F.conv1d`` on a left-padded input.

    Args:
        x: ``[B, T, D]``, fp32 / bf16 / fp16, any ``T >= 1``.
        weight: ``[L, D, K]``, one ``[D, K]`` kernel per level (any float dtype; computed in fp32).
        bias: optional ``[L, D]``.
        dilation_base: level ``l`` has dilation ``dilation_base**l`` (1 = no dilation).
        activation: ``"silu" | "gelu" | "relu" | None`` between levels.
        residual: add each level's input to its output.
        initial_state: optional ``[N, D, S]`` (``S = state_size(L, K, dilation_base)``, ``N`` = B or the number
            of packed sequences): for every level the ``P_l = (K-1)·d_l`` inputs ``h_l`` before the first token,
            oldest first, levels concatenated (level 0 first). Zeros when omitted. Carries a gradient.
        output_final_state: also return the same window after the last token (fp32), e.g. to continue
            with :func:`dilated_conv_step` after :func:`state_to_ring`.
        cu_seqlens: optional ``[N + 1]`` offsets of packed sequences (B = 1); convolutions never cross them.
        cu_seqlens_cpu: optional host copy of ``cu_seqlens`` (then nothing synchronizes with the device).
        backend: ``"auto" | "triton" | "torch" | "reference"``.

    Returns:
        ``(y [B, T, D] in x's dtype, final_state [N, D, S] fp32 or None)``.
    """
    L, D, K = _check_common("x", x, weight, bias, dilation_base, activation, residual, time_dim=True)
    B, T, _ = x.shape
    if T < 1:
        raise ValueError(f"{OP}: x must have at least one token (T >= 1), got shape {list(x.shape)}")
    if not isinstance(output_final_state, bool):
        raise TypeError(f"{OP}: output_final_state must be a bool, got {output_final_state!r}")
    host = check_varlen(OP, cu_seqlens, B, T, cu_seqlens_cpu)
    N = num_sequences(B, cu_seqlens)
    S = state_size(L, K, dilation_base)
    if initial_state is not None:
        check_tensor(OP, "initial_state", initial_state, shape=(N, D, S),
                     layout=f"[N, D, S] with S = {S} (the history of every level, oldest first)")
    check_same_device(OP, x=x, weight=weight, bias=bias, initial_state=initial_state, cu_seqlens=cu_seqlens)
    backend = resolve_backend(backend, x.device, OP)
    kwargs = dict(dilation_base=dilation_base, activation=activation, residual=residual,
                  initial_state=initial_state, output_final_state=output_final_state, cu_seqlens=cu_seqlens,
                  cu_seqlens_cpu=host)
    if backend == "reference":
        from .reference import dilated_conv_reference

        return dilated_conv_reference(x, weight, bias, **kwargs)
    if backend == "torch":
        from .torch_stream import dilated_conv_torch

        return dilated_conv_torch(x, weight, bias, **kwargs)
    from .triton_fused import dilated_conv_triton

    return dilated_conv_triton(x, weight, bias, **kwargs)


def _ring_index(position: torch.Tensor, spans, shift: int) -> torch.Tensor:
    """``[B, S]`` source index: ring slot of window entry ``i`` of level ``l`` is ``(position + i) mod P_l``."""
    cols = []
    for _, p, off in spans:
        i = torch.arange(p, device=position.device)
        cols.append(off + torch.remainder(position[:, None] * shift + i[None, :], p))
    return torch.cat(cols, dim=1)


def _positions(position, batch: int, device) -> torch.Tensor:
    if isinstance(position, bool):
        raise TypeError(f"{OP}: position must be an int or an int tensor [B], got {position!r}")
    if isinstance(position, int):
        if position < 0:
            raise ValueError(f"{OP}: position must be >= 0, got {position}")
        return torch.full((batch,), position, dtype=torch.long, device=device)
    check_tensor(OP, "position", position, shape=(batch,), dtypes=(torch.int32, torch.int64), layout="[B]")
    return position.to(device=device, dtype=torch.long)


def state_to_ring(state: torch.Tensor, position, kernel_size: int, dilation_base: int) -> torch.Tensor:
    """Window state (oldest first, as :func:`dilated_conv` returns it) after ``position`` tokens -> the ring
    buffer :func:`dilated_conv_step` updates in place: level ``l``'s input at time ``τ`` sits in slot
    ``off_l + τ mod P_l``, so a step writes one slot per level instead of shifting the whole history."""
    spans = level_spans(_depth(state, kernel_size, dilation_base), kernel_size, dilation_base)
    pos = _positions(position, state.shape[0], state.device)
    ring = torch.empty_like(state)
    idx = _ring_index(pos, spans, 1)  # window entry i of level l goes to ring slot idx[:, off_l + i]
    ring.scatter_(2, idx[:, None, :].expand_as(state), state)
    return ring


def ring_to_state(ring: torch.Tensor, position, kernel_size: int, dilation_base: int) -> torch.Tensor:
    """Inverse of :func:`state_to_ring`."""
    spans = level_spans(_depth(ring, kernel_size, dilation_base), kernel_size, dilation_base)
    pos = _positions(position, ring.shape[0], ring.device)
    idx = _ring_index(pos, spans, 1)
    return ring.gather(2, idx[:, None, :].expand_as(ring))


def _depth(state, kernel_size, dilation_base) -> int:
    check_tensor(OP, "state", state, ndim=3, layout="[B, D, S]")
    _check_int("kernel_size", kernel_size, 1)
    _check_int("dilation_base", dilation_base, 1)
    S, depth = state.shape[2], 0
    while state_size(depth, kernel_size, dilation_base) < S:
        depth += 1
        if kernel_size == 1:
            break
    if state_size(depth, kernel_size, dilation_base) != S:
        raise ValueError(f"{OP}: state has {S} history slots, which is no depth's state size for "
                         f"kernel_size={kernel_size}, dilation_base={dilation_base}")
    return depth


def _act(a: torch.Tensor, activation):
    if activation == "silu":
        return torch.nn.functional.silu(a)
    if activation == "gelu":
        return torch.nn.functional.gelu(a)
    if activation == "relu":
        return torch.relu(a)
    return a


@torch.no_grad()
def dilated_conv_step(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    ring: torch.Tensor,
    position,
    *,
    dilation_base: int = 2,
    activation: str | None = "silu",
    residual: bool = True,
) -> torch.Tensor:
    """One decoding step: ``x [B, D]`` is token number ``position`` (int, or ``[B]`` ints) of each sequence;
    ``ring [B, D, S]`` (fp32, from :func:`state_to_ring`, or zeros at position 0) is read and then updated in
    place. Returns ``y [B, D]`` in x's dtype; equals row ``position`` of :func:`dilated_conv` over the whole
    sequence. Not differentiable (decoding)."""
    L, D, K = _check_common("x", x, weight, bias, dilation_base, activation, residual, time_dim=False)
    B = x.shape[0]
    S = state_size(L, K, dilation_base)
    check_tensor(OP, "ring", ring, shape=(B, D, S), dtypes=(torch.float32,),
                 layout=f"[B, D, S] fp32 with S = {S}")
    pos = _positions(position, B, x.device)
    h = x.float()
    w = weight.float()
    for level, (d, p, off) in enumerate(level_spans(L, K, dilation_base)):
        a = h * w[level, :, K - 1]
        if bias is not None:
            a = a + bias[level].float()
        if p > 0:
            for j in range(K - 1):
                slot = off + torch.remainder(pos - (K - 1 - j) * d, p)  # [B]
                a = a + ring.gather(2, slot[:, None, None].expand(B, D, 1))[..., 0] * w[level, :, j]
            slot = off + torch.remainder(pos, p)  # overwrite the oldest entry (read above by tap 0)
            ring.scatter_(2, slot[:, None, None].expand(B, D, 1), h[..., None])
        out = _act(a, activation) if level < L - 1 else a
        h = h + out if residual else out
    return h.to(x.dtype)
