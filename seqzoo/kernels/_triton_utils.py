"""Triton helpers shared by the kernels (imported only where Triton is used).

Index helpers return int64: a product like ``chunk * H * K * V`` passes 2^31 at about half a million tokens
(H 16, K = V 128), so every base offset a kernel forms from them is 64-bit. Dense inputs are indexed
directly (``bos = n * T``), so a dense call builds no tables and makes no host transfer.
"""

import triton
import triton.language as tl

from ._backend import interpreter_active

# Triton's CPU interpreter (3.9 at least) computes tl.dot on bf16 operands wrongly; under the interpreter the
# operands are widened to fp32 first (exact for bf16/fp16 values). Compiled kernels multiply in the input dtype.
INTERPRETED = tl.constexpr(interpreter_active())


@triton.jit
def dot(a, b):
    """a @ b with an fp32 accumulator; fp32 operands multiply in full precision (no TF32)."""
    if INTERPRETED:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    elif a.dtype == tl.float32:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def dot_f32(a, b, PRECISION: tl.constexpr = "ieee"):
    """a @ b for fp32 operands in ``PRECISION`` ("ieee": exact fp32 FMAs; "tf32x3": tensor-core 3xTF32, close
    to fp32; "tf32"). The interpreter always multiplies exactly."""
    if INTERPRETED:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def chunk_locate(chunk_tab, cu_seqlens, i_c, BT: tl.constexpr, T=0, IS_VARLEN: tl.constexpr = True):
    """Program ``i_c`` of a chunk-parallel kernel: ``(sequence n, its first token bos, its end eos, the chunk's
    index within the sequence)``, all int64 so that token and state offsets never wrap at 2^31.

    Packed sequences (``IS_VARLEN``): ``chunk_tab[i_c] = (n, chunk)`` and ``cu_seqlens`` give them.
    Dense ``[B, T]`` inputs need no table at all: ``n = i_c // ceil(T / BT)``, ``bos = n * T``."""
    if IS_VARLEN:
        i_n = tl.load(chunk_tab + 2 * i_c.to(tl.int64)).to(tl.int64)
        i_t = tl.load(chunk_tab + 2 * i_c.to(tl.int64) + 1).to(tl.int64)
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
    else:
        T64 = T + tl.zeros([], dtype=tl.int64)  # T may be a constexpr 1 or an int32 argument
        nt = (T64 + BT - 1) // BT
        i_n = i_c.to(tl.int64) // nt
        i_t = i_c.to(tl.int64) - i_n * nt
        bos = i_n * T64
        eos = bos + T64
    return i_n, bos, eos, i_t


@triton.jit
def chunk_span(chunk_tab, cu_seqlens, i_c, BT: tl.constexpr, T=0, IS_VARLEN: tl.constexpr = True):
    """Program ``i_c`` of a chunked kernel: the sequence index, the chunk's first token and its length (< BT
    for a sequence's last chunk), all int64. Packed sequences read ``chunk_tab[i_c] = (sequence, chunk)``;
    dense inputs (``IS_VARLEN=False``) pass ``T`` instead and need no table (see :func:`chunk_locate`)."""
    i_n, bos, eos, i_t = chunk_locate(chunk_tab, cu_seqlens, i_c, BT, T, IS_VARLEN)
    t0 = bos + i_t * BT
    length = tl.minimum(eos - t0, BT)
    return i_n, t0, length


@triton.jit
def seq_span(cu_seqlens, chunk_offsets, i_n, BT: tl.constexpr, T=0, IS_VARLEN: tl.constexpr = True):
    """Sequence ``i_n`` of a sequential (per-sequence) kernel: ``(bos, eos, boc)``, its first token, its end and
    the index of its first chunk in per-chunk buffers, all int64. Dense inputs: ``bos = n * T``,
    ``boc = n * ceil(T / BT)`` with no table; packed ones read ``cu_seqlens`` and ``chunk_offsets``."""
    if IS_VARLEN:
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
        boc = tl.load(chunk_offsets + i_n).to(tl.int64)
    else:
        T64 = T + tl.zeros([], dtype=tl.int64)  # T may be a constexpr 1 or an int32 argument
        bos = i_n.to(tl.int64) * T64
        eos = bos + T64
        boc = i_n.to(tl.int64) * ((T64 + BT - 1) // BT)
    return bos, eos, boc
