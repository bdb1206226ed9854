"""Chunked selective scan in plain PyTorch: the CPU path, differentiated by autograd.

The decay ``exp(Δ_t A)`` differs per state column, so the scan has no matmul form; instead a two-level scan
cuts the sequential work from T steps to about 2√T:

1. inside every chunk of ``C`` tokens, all chunks at once, the recurrence from a zero state (``C`` steps on
   ``[N_seq, NC, D, N]`` slices);
2. across chunks, the state entering each chunk: ``S ← exp(A Σ_chunk Δ) ⊙ S + (chunk's local end state)``
   (``NC`` steps on ``[N_seq, D, N]``);
3. every token's state is its local state plus ``exp(A · cumΔ_t) ⊙ S_in`` (one elementwise pass), and
   ``y_t = C_t · x_t`` one reduction over N.

Sequences are zero-padded to a multiple of ``C``: a padded step has ``Δ = 0``, so it neither decays nor writes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .._backend import next_power_of_2
from .._chunk import pack_varlen, pad_time, unpack_varlen
from .reference import discretize_delta


def default_chunk(T: int) -> int:
    """About √T (a power of two, at most 64): balances the in-chunk steps against the chunk-boundary steps."""
    return max(1, min(64, next_power_of_2(math.isqrt(max(T - 1, 0)) + 1)))


def _scan(u, delta, A, B, C, h0, chunk):
    """Core on padded fp32 tensors, Tp a multiple of ``chunk``: u, delta [Ns, Tp, D] (delta 0 on padding);
    A [D, N]; B, C [Ns, Tp, G, N]; h0 [Ns, D, N]. Returns y [Ns, Tp, D] (no D term) and the final state."""
    Ns, Tp, Dm = u.shape
    G, N = B.shape[2], B.shape[3]
    Dg, NC = Dm // G, Tp // chunk
    logd = (delta[..., None] * A).view(Ns, NC, chunk, Dm, N)  # log-decay per token and state column
    decay = torch.exp(logd)
    w = ((delta * u).view(Ns, Tp, G, Dg, 1) * B.view(Ns, Tp, G, 1, N)).view(Ns, NC, chunk, Dm, N)  # Δ u B
    # 1. local scan inside every chunk, from a zero state
    # (unbind, not indexing: the backward of many selects would write as many full-size zero tensors)
    w_j, decay_j = w.unbind(2), decay.unbind(2)
    s = w_j[0]
    local = [s]
    for j in range(1, chunk):
        s = decay_j[j] * s + w_j[j]
        local.append(s)
    local = torch.stack(local, 2)  # [Ns, NC, C, D, N]
    from_start = torch.exp(logd.cumsum(2))  # decay from the chunk start through token j (≤ 1)
    # 2. the state entering each chunk
    S, h_in = h0, []
    for total, end in zip(from_start[:, :, -1].unbind(1), local[:, :, -1].unbind(1)):
        h_in.append(S)
        S = total * S + end
    h_in = torch.stack(h_in, 1)  # [Ns, NC, D, N]
    # 3. every token's state, and y = C · x
    x = local + from_start * h_in[:, :, None]  # [Ns, NC, C, D, N]
    y = (x.view(Ns, Tp, G, Dg, N) * C.view(Ns, Tp, G, 1, N)).sum(-1).view(Ns, Tp, Dm)
    return y, S


def selective_scan_torch(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                         initial_state=None, output_final_state=False, cu_seqlens=None, chunk_size=None):
    """Inputs already checked by the public function. Returns (y in u's dtype, final state fp32 or None)."""
    Bsz, T, Dm = u.shape
    N = A.shape[1]
    dl = discretize_delta(delta, delta_bias, delta_softplus)  # [B, T, D] fp32
    uf, Bf, Cf = u.float(), B.float(), C.float()
    if cu_seqlens is None:
        Ns = Bsz
        chunk = chunk_size or default_chunk(T)
        up, dp, Bp, Cp = (pad_time(t, chunk) for t in (uf, dl, Bf, Cf))
    else:
        Ns = cu_seqlens.numel() - 1
        chunk = chunk_size or default_chunk(T // max(Ns, 1))
        up, dp, Bp, Cp = (unpack_varlen(t, cu_seqlens, multiple=chunk) for t in (uf, dl, Bf, Cf))
    h0 = uf.new_zeros(Ns, Dm, N) if initial_state is None else initial_state.float()
    y, final = _scan(up, dp, A.float(), Bp, Cp, h0, chunk)
    y = y[:, :T] if cu_seqlens is None else pack_varlen(y, cu_seqlens)  # [B, T, D]
    if D is not None:
        y = y + D.float() * uf
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(u.dtype), (final if output_final_state else None)
