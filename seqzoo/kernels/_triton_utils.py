"""Triton helpers shared by the kernels (imported only where Triton is used)."""

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
def chunk_span(chunk_tab, cu_seqlens, i_c, BT: tl.constexpr):
    """Program ``i_c`` of a chunked kernel over packed sequences: ``chunk_tab[i_c] = (sequence, chunk)``.
    Returns the sequence index, the chunk's first token and its length (< BT for a sequence's last chunk)."""
    i_n = tl.load(chunk_tab + 2 * i_c).to(tl.int64)
    c = tl.load(chunk_tab + 2 * i_c + 1).to(tl.int64)
    t0 = tl.load(cu_seqlens + i_n).to(tl.int64) + c * BT
    length = tl.minimum(tl.load(cu_seqlens + i_n + 1).to(tl.int64) - t0, BT)
    return i_n, t0, length
