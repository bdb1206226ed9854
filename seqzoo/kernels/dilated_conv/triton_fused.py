"""The dilated convolution stack in Triton: every level in one kernel, forward and backward.

A program owns tiles of ``BT`` output tokens of one sequence (``BT`` ≈ the receptive field, so the halo at
most doubles the work) and a block of ``BD`` channels, and loops over its tiles (a persistent grid, which
bounds the scratch memory). Level ``l`` of a tile ``[t0, t1)`` produces ``h_{l+1}`` on
``[t0 - H_{l+1}, t1)``, where ``H_{l+1} = Σ_{m>l} P_m`` is the halo the later levels still need, reading
``h_l`` (``x`` for level 0, the program's fp32 scratch otherwise, the initial state before the sequence
start) at the K tap offsets. Two scratch buffers alternate between levels; a barrier separates levels.

forward ``_fwd``: writes ``y`` on the tile, each level's input ``h_l`` on the tile to ``hs`` (for the
    backward, when a gradient is needed), and the final window state from the sequence's last tile.
backward ``_bwd``: anti-causal, so the halo is to the right. From the last level down, on
    ``[t0, t1 + Σ_{m≤l} P_m)``: ``a_l`` is recomputed from the saved ``h_l``, ``da = g·φ'(a_l)`` goes to scratch
    and, on the tile itself, into the program's ``∂w``/``∂bias`` partial sums (reduced over programs in
    torch: deterministic, no atomics); then ``g_l[τ] = Σ_j w_j da[τ + s_j] (+ g[τ]) (+ ∂final)`` overwrites
    ``g`` in scratch. The first tile of a sequence also produces ``g_l`` at ``τ ∈ [-P_l, 0)``: the gradient
    of the initial state.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._backend import interpreter_active, next_power_of_2
from .._chunk import uniform_cu_seqlens, varlen_chunk_tables
from . import level_spans

ACT_CODES = {None: 0, "silu": 1, "gelu": 2, "relu": 3}
BS = 32  # rows per step inside a tile
NUM_WARPS = 4


@triton.jit
def _act(a, ACT: tl.constexpr):
    if ACT == 1:
        return a * tl.sigmoid(a)
    elif ACT == 2:
        return 0.5 * a * (1.0 + tl.erf(a * 0.7071067811865476))
    elif ACT == 3:
        return tl.maximum(a, 0.0)
    else:
        return a


@triton.jit
def _act_grad(a, ACT: tl.constexpr):
    if ACT == 1:
        s = tl.sigmoid(a)
        return s * (1.0 + a * (1.0 - s))
    elif ACT == 2:
        return 0.5 * (1.0 + tl.erf(a * 0.7071067811865476)) + a * tl.exp(-0.5 * a * a) * 0.3989422804014327
    elif ACT == 3:
        return tl.where(a > 0.0, 1.0, 0.0)
    else:
        return tl.full(a.shape, 1.0, tl.float32)


@triton.jit
def _load_h(src_ptr, src_row0, h0, i_n, r, m, cols, m_d, off, P, S, D, FROM_X: tl.constexpr,
            HAS_H0: tl.constexpr, BD: tl.constexpr):
    """h_l at times ``r`` ([BS]) for the tile's channels: from ``x``/``hs`` (row ``src_row0 + r``, stride D) or
    the scratch (row ``r - src_row0``, stride BD) for ``r >= 0``, from the initial state for ``r < 0``."""
    o_d = tl.arange(0, BD)
    ok = m & (r >= 0)
    if FROM_X:
        v = tl.load(src_ptr + (src_row0 + r[:, None]) * D + cols[None, :], mask=ok[:, None] & m_d[None, :],
                    other=0.0).to(tl.float32)
    else:
        v = tl.load(src_ptr + (r[:, None] - src_row0) * BD + o_d[None, :], mask=ok[:, None] & m_d[None, :],
                    other=0.0)
    if HAS_H0:
        early = m & (r < 0) & (r >= -P)
        v += tl.load(h0 + i_n * D * S + cols[None, :] * S + (off + P + r[:, None]),
                     mask=early[:, None] & m_d[None, :], other=0.0).to(tl.float32)
    return v


@triton.jit
def _fwd(x, w, b, h0, y, hs, ht, scr, cu, tab, geo, NT, NPROG, BT, SCR, HS_STRIDE, S, D,
         L: tl.constexpr, K: tl.constexpr, ACT: tl.constexpr, RESIDUAL: tl.constexpr, HAS_B: tl.constexpr,
         HAS_H0: tl.constexpr, SAVE: tl.constexpr, STORE_FINAL: tl.constexpr, BS: tl.constexpr,
         BD: tl.constexpr):
    pid, i_d = tl.program_id(0), tl.program_id(1)
    NDB = tl.num_programs(1)
    cols = i_d * BD + tl.arange(0, BD)
    m_d = cols < D
    o_d = tl.arange(0, BD)
    buf0 = scr + ((pid.to(tl.int64) * NDB + i_d) * 2) * SCR * BD  # this program's two [SCR, BD] buffers
    H1 = tl.load(geo + 3).to(tl.int64)  # halo the levels after level 0 need: scratch rows before a tile
    for i_t in range(pid, NT, NPROG):
        i_n = tl.load(tab + 2 * i_t).to(tl.int64)
        bos = tl.load(cu + i_n).to(tl.int64)
        n_len = tl.load(cu + i_n + 1).to(tl.int64) - bos
        t0 = tl.load(tab + 2 * i_t + 1).to(tl.int64) * BT
        t1 = tl.minimum(t0 + BT, n_len)
        row0 = t0 - H1  # the time of scratch row 0
        for l in tl.static_range(L):
            d = tl.load(geo + 4 * l).to(tl.int64)
            P = tl.load(geo + 4 * l + 1).to(tl.int64)
            off = tl.load(geo + 4 * l + 2).to(tl.int64)
            Hn = tl.load(geo + 4 * l + 3).to(tl.int64)  # halo still needed after this level
            src = buf0 + ((l + 1) % 2) * SCR * BD  # h_l (levels >= 1)
            dst = buf0 + (l % 2) * SCR * BD  # h_{l+1}
            if STORE_FINAL:
                if t1 == n_len:  # the sequence's last tile: the window of level l's last P_l inputs
                    for s in range(0, P, BS):
                        i = s + tl.arange(0, BS)
                        r = n_len - P + i
                        m = i < P
                        if l == 0:
                            v = _load_h(x, bos, h0, i_n, r, m, cols, m_d, off, P, S, D, True, HAS_H0, BD)
                        else:
                            v = _load_h(src, row0, h0, i_n, r, m, cols, m_d, off, P, S, D, False, HAS_H0, BD)
                        tl.store(ht + i_n * D * S + cols[None, :] * S + (off + i[:, None]), v,
                                 mask=m[:, None] & m_d[None, :])
            for s in range(tl.maximum(t0 - Hn, 0), t1, BS):
                r = s + tl.arange(0, BS)
                m = r < t1
                acc = tl.zeros([BS, BD], dtype=tl.float32)
                if HAS_B:
                    acc += tl.load(b + l * D + cols, mask=m_d, other=0.0)[None, :]
                for j in tl.static_range(K):
                    rj = r - (K - 1 - j) * d
                    if l == 0:
                        hv = _load_h(x, bos, h0, i_n, rj, m, cols, m_d, off, P, S, D, True, HAS_H0, BD)
                    else:
                        hv = _load_h(src, row0, h0, i_n, rj, m, cols, m_d, off, P, S, D, False, HAS_H0, BD)
                    acc += hv * tl.load(w + l * D * K + cols * K + j, mask=m_d, other=0.0)[None, :]
                if l == 0:
                    cur = _load_h(x, bos, h0, i_n, r, m, cols, m_d, off, P, S, D, True, HAS_H0, BD)
                else:
                    cur = _load_h(src, row0, h0, i_n, r, m, cols, m_d, off, P, S, D, False, HAS_H0, BD)
                if SAVE:
                    if l > 0:  # the level's input on the tile itself, for the backward
                        own = m & (r >= t0)
                        tl.store(hs + (l - 1) * HS_STRIDE + (bos + r[:, None]) * D + cols[None, :], cur,
                                 mask=own[:, None] & m_d[None, :])
                if l < L - 1:
                    out = _act(acc, ACT)
                else:
                    out = acc
                if RESIDUAL:
                    out += cur
                if l < L - 1:
                    tl.store(dst + (r[:, None] - row0) * BD + o_d[None, :], out, mask=m[:, None] & m_d[None, :])
                else:
                    tl.store(y + (bos + r[:, None]) * D + cols[None, :], out.to(y.dtype.element_ty),
                             mask=m[:, None] & m_d[None, :])
            tl.debug_barrier()


@triton.jit
def _bwd(x, w, b, h0, hs, dy, dht, dx, dh0, dwp, dbp, scr, cu, tab, geo, NT, NPROG, BT, SCR, HS_STRIDE, PMAX, S, D,
         L: tl.constexpr, K: tl.constexpr, BK: tl.constexpr, ACT: tl.constexpr, RESIDUAL: tl.constexpr,
         HAS_B: tl.constexpr, HAS_H0: tl.constexpr, HAS_DHT: tl.constexpr, BS: tl.constexpr, BD: tl.constexpr):
    pid, i_d = tl.program_id(0), tl.program_id(1)
    NDB = tl.num_programs(1)
    cols = i_d * BD + tl.arange(0, BD)
    m_d = cols < D
    o_d = tl.arange(0, BD)
    o_k = tl.arange(0, BK)
    g_buf = scr + ((pid.to(tl.int64) * NDB + i_d) * 2) * SCR * BD  # g = dLoss/dh_{l+1}, then dLoss/dh_l
    da_buf = g_buf + SCR * BD  # dLoss/da_l
    for i_t in range(pid, NT, NPROG):
        i_n = tl.load(tab + 2 * i_t).to(tl.int64)
        bos = tl.load(cu + i_n).to(tl.int64)
        n_len = tl.load(cu + i_n + 1).to(tl.int64) - bos
        t0 = tl.load(tab + 2 * i_t + 1).to(tl.int64) * BT
        t1 = tl.minimum(t0 + BT, n_len)
        row0 = t0 - PMAX  # the time of scratch row 0
        for li in tl.static_range(L):
            l = L - 1 - li  # runtime level index; compile-time branches test li (a constexpr)
            d = tl.load(geo + 4 * l).to(tl.int64)
            P = tl.load(geo + 4 * l + 1).to(tl.int64)
            off = tl.load(geo + 4 * l + 2).to(tl.int64)
            hi_a = tl.minimum(t1 + off + P, n_len)  # da_l is needed on [t0, hi_a)
            hi_g = tl.minimum(t1 + off, n_len)  # dLoss/dh_l is needed on [t0, hi_g) (and before 0: the state)
            if li == L - 1:
                h_src = x
            else:
                h_src = hs + (L - 2 - li) * HS_STRIDE
            # 1. da_l = g * phi'(a_l), and this tile's share of dw_l, db_l
            b_dw = tl.zeros([BK, BD], dtype=tl.float32)
            b_db = tl.zeros([BD], dtype=tl.float32)
            for s in range(t0, hi_a, BS):
                r = s + tl.arange(0, BS)
                m = r < hi_a
                mm = m[:, None] & m_d[None, :]
                if li == 0:
                    g = tl.load(dy + (bos + r[:, None]) * D + cols[None, :], mask=mm, other=0.0).to(tl.float32)
                else:
                    g = tl.load(g_buf + (r[:, None] - row0) * BD + o_d[None, :], mask=mm, other=0.0)
                if ACT != 0 and li > 0:
                    a = tl.zeros([BS, BD], dtype=tl.float32)
                    if HAS_B:
                        a += tl.load(b + l * D + cols, mask=m_d, other=0.0)[None, :]
                    for j in tl.static_range(K):
                        hv = _load_h(h_src, bos, h0, i_n, r - (K - 1 - j) * d, m, cols, m_d, off, P, S, D, True,
                                     HAS_H0, BD)
                        a += hv * tl.load(w + l * D * K + cols * K + j, mask=m_d, other=0.0)[None, :]
                    da = g * _act_grad(a, ACT)
                else:
                    da = g
                tl.store(da_buf + (r[:, None] - row0) * BD + o_d[None, :], da, mask=mm)
                da_own = tl.where((m & (r < t1))[:, None], da, 0.0)
                b_db += tl.sum(da_own, axis=0)
                for j in tl.static_range(K):
                    hv = _load_h(h_src, bos, h0, i_n, r - (K - 1 - j) * d, m, cols, m_d, off, P, S, D, True,
                                 HAS_H0, BD)
                    b_dw += tl.where(o_k[:, None] == j, tl.sum(da_own * hv, axis=0)[None, :], 0.0)
            p_dw = dwp + ((pid.to(tl.int64) * L + l) * K + o_k[:, None]) * D + cols[None, :]
            m_dw = (o_k[:, None] < K) & m_d[None, :]
            tl.store(p_dw, tl.load(p_dw, mask=m_dw, other=0.0) + b_dw, mask=m_dw)
            p_db = dbp + (pid.to(tl.int64) * L + l) * D + cols
            tl.store(p_db, tl.load(p_db, mask=m_d, other=0.0) + b_db, mask=m_d)
            tl.debug_barrier()
            # 2. dLoss/dh_l[τ] = Σ_j w_j da_l[τ + s_j] (+ g[τ]) (+ dLoss/d final window)
            lo = t0
            if HAS_H0:
                lo = tl.where(t0 == 0, -P, t0)
            for s in range(lo, hi_g, BS):
                r = s + tl.arange(0, BS)
                m = r < hi_g
                dh = tl.zeros([BS, BD], dtype=tl.float32)
                for j in tl.static_range(K):
                    rr = r + (K - 1 - j) * d
                    ok = m & (rr >= t0) & (rr < hi_a)
                    dh += tl.load(da_buf + (rr[:, None] - row0) * BD + o_d[None, :],
                                  mask=ok[:, None] & m_d[None, :], other=0.0) * \
                        tl.load(w + l * D * K + cols * K + j, mask=m_d, other=0.0)[None, :]
                ok = m & (r >= t0)
                if RESIDUAL:
                    if li == 0:
                        dh += tl.load(dy + (bos + r[:, None]) * D + cols[None, :], mask=ok[:, None] & m_d[None, :],
                                      other=0.0).to(tl.float32)
                    else:
                        dh += tl.load(g_buf + (r[:, None] - row0) * BD + o_d[None, :],
                                      mask=ok[:, None] & m_d[None, :], other=0.0)
                if HAS_DHT:
                    i = r - (n_len - P)
                    okf = m & (i >= 0) & (i < P)
                    dh += tl.load(dht + i_n * D * S + cols[None, :] * S + (off + i[:, None]),
                                  mask=okf[:, None] & m_d[None, :], other=0.0)
                if li == L - 1:
                    own = ok & (r < t1)
                    tl.store(dx + (bos + r[:, None]) * D + cols[None, :], dh.to(dx.dtype.element_ty),
                             mask=own[:, None] & m_d[None, :])
                else:
                    tl.store(g_buf + (r[:, None] - row0) * BD + o_d[None, :], dh, mask=ok[:, None] & m_d[None, :])
                if HAS_H0:
                    early = m & (r < 0)
                    tl.store(dh0 + i_n * D * S + cols[None, :] * S + (off + P + r[:, None]), dh,
                             mask=early[:, None] & m_d[None, :])
            tl.debug_barrier()


def _geometry(L, K, base, device):
    spans = level_spans(L, K, base)
    S = sum(p for _, p, _ in spans)
    rows = [(d, p, off, S - off - p) for d, p, off in spans]  # (dilation, P_l, offset, halo after level l)
    return torch.tensor(rows, dtype=torch.int32, device=device).reshape(-1).contiguous(), S, \
        max([p for _, p, _ in spans] + [0])


def _programs(n_tiles: int, n_dblocks: int, device) -> int:
    """Persistent grid size along time: enough programs to fill the GPU (~4 per SM over all channel blocks),
    never more than there are tiles. Each program holds ``2·(BT + halo)·BD`` fp32 of scratch (~2 MB at the
    tcnca defaults), so this also caps the scratch (~1 GB on 132 SMs). The interpreter runs 2 programs, so
    the loop over tiles is exercised in the tests."""
    if interpreter_active() or device.type != "cuda":
        cap = 2
    else:
        cap = max(1, 4 * torch.cuda.get_device_properties(device).multi_processor_count // n_dblocks)
    return max(1, min(n_tiles, cap))


class _DilatedConvTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, h0, base, activation, residual, cu_seqlens, cu_host, store_final):
        B, T, D = x.shape
        L, _, K = weight.shape
        geo, S, pmax = _geometry(L, K, base, x.device)
        BT = max(64, triton.cdiv(S, BS) * BS)  # tile ≈ receptive field: the halo at most doubles the work
        if cu_seqlens is None:  # a dense batch is B packed sequences of length T (tables built on the host)
            cu_cpu = uniform_cu_seqlens(B, T)
            cu, tab, _ = varlen_chunk_tables(cu_cpu.to(x.device), BT, cu_cpu)
        else:
            cu, tab, _ = varlen_chunk_tables(cu_seqlens, BT, cu_host)
        N, NT = cu.numel() - 1, tab.shape[0]
        BD = 16 if D <= 16 else 32
        NDB = triton.cdiv(D, BD)
        NPROG = _programs(NT, NDB, x.device)
        x = x.contiguous()
        w = weight.float().contiguous()
        b = bias.float().contiguous() if bias is not None else None
        hf = h0.float().contiguous() if h0 is not None else None
        save = any(ctx.needs_input_grad[:4]) and L > 1
        y = torch.empty_like(x)
        hs = x.new_empty(L - 1, B * T, D, dtype=torch.float32) if save else None
        if store_final:  # an empty packed sequence has no tile: its final state is its initial state
            ht = hf.clone() if hf is not None else x.new_zeros(N, D, S, dtype=torch.float32)
        else:
            ht = None
        H1 = S - (K - 1)
        SCR = H1 + BT
        scr = x.new_empty(NPROG, NDB, 2, SCR, BD, dtype=torch.float32)
        meta = dict(L=L, K=K, ACT=ACT_CODES[activation], RESIDUAL=residual, HAS_B=b is not None,
                    HAS_H0=hf is not None, BS=BS, BD=BD)
        if NT > 0:
            _fwd[(NPROG, NDB)](x, w, b, hf, y, hs, ht, scr, cu, tab, geo, NT, NPROG, BT, SCR, B * T * D, S, D,
                               SAVE=save, STORE_FINAL=store_final, num_warps=NUM_WARPS, **meta)
        ctx.save_for_backward(x, w, b, hf, hs, cu, tab, geo)
        ctx.sizes = (NT, NPROG, NDB, BT, S, pmax, N)
        ctx.meta = meta
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype, None if h0 is None else h0.dtype)
        return y, ht

    @staticmethod
    def backward(ctx, dy, dht):
        x, w, b, hf, hs, cu, tab, geo = ctx.saved_tensors
        NT, NPROG, NDB, BT, S, pmax, N = ctx.sizes
        meta = ctx.meta
        B, T, D = x.shape
        L, _, K = w.shape
        dy = dy.contiguous()
        dht = dht.float().contiguous() if dht is not None else None
        dx = torch.empty_like(x)
        dh0 = None
        if hf is not None:  # an empty packed sequence: the initial state only reaches the final state
            dh0 = dht.clone() if dht is not None else torch.zeros_like(hf)
        dwp = x.new_zeros(NPROG, L, K, D, dtype=torch.float32)
        dbp = x.new_zeros(NPROG, L, D, dtype=torch.float32)
        SCR = pmax + BT + S
        scr = x.new_empty(NPROG, NDB, 2, SCR, meta["BD"], dtype=torch.float32)
        if NT > 0:
            _bwd[(NPROG, NDB)](x, w, b, hf, hs, dy, dht, dx, dh0, dwp, dbp, scr, cu, tab, geo, NT, NPROG, BT, SCR,
                               B * T * D, pmax, S, D, BK=max(2, next_power_of_2(K)), HAS_DHT=dht is not None,
                               num_warps=NUM_WARPS, **meta)
        w_dt, b_dt, h_dt = ctx.dtypes
        dw = dwp.sum(0).transpose(1, 2).to(w_dt)  # [L, D, K]
        db = dbp.sum(0).to(b_dt) if b_dt is not None else None
        return (dx, dw, db, None if h_dt is None else dh0.to(h_dt), None, None, None, None, None, None)


def dilated_conv_triton(x, weight, bias=None, *, dilation_base=2, activation="silu", residual=True,
                        initial_state=None, output_final_state=False, cu_seqlens=None, cu_seqlens_cpu=None):
    return _DilatedConvTriton.apply(x, weight, bias, initial_state, dilation_base, activation, residual,
                                    cu_seqlens, cu_seqlens_cpu, output_final_state)
