/* The temporal shift's index arithmetic: which input word each output word copies.
 *
 * Shared by the CUDA kernel (temporal_shift.cu) and its host-side test (shift_index_host.c,
 * compiled as plain C by the crate's build script), so that the arithmetic the GPU runs is
 * tested on every machine. Plain C: no CUDA header, no C++. */
#ifndef TSM_TEMPORAL_SHIFT_CUH
#define TSM_TEMPORAL_SHIFT_CUH

#include <stdint.h>

#ifdef __CUDACC__
#define TSM_HD static inline __host__ __device__
#else
#define TSM_HD static inline
#endif

/* n / d for n < 2^31 as a multiply-high, an add and a shift (Granlund & Montgomery, the form
 * PyTorch's IntDivider uses): integer division is a long instruction sequence on GPUs and the
 * kernel needs three per word. s is the least s with 2^s >= d, m = 2^32 (2^s - d) / d + 1; set
 * up by the host (Rust: FastDiv::new). */
typedef struct {
    uint32_t d, m, s;
} TsmFastDiv;

TSM_HD uint32_t tsm_umulhi(uint32_t a, uint32_t b) {
#ifdef __CUDA_ARCH__
    return __umulhi(a, b);
#else
    return (uint32_t)(((uint64_t)a * b) >> 32);
#endif
}

TSM_HD uint32_t tsm_div(TsmFastDiv f, uint32_t n) {
    return (tsm_umulhi(n, f.m) + n) >> f.s;
}

/* One launch: a run of whole clips of [T, C, plane] words, the same field order as the Rust
 * struct ShiftIndex (repr(C)), passed by value to the kernel. */
typedef struct {
    uint32_t words;      /* words in the launch, < 2^31 */
    TsmFastDiv plane;    /* words per (frame, channel) plane */
    TsmFastDiv channels; /* C */
    TsmFastDiv num_seg;  /* T */
    uint32_t c1, c2;     /* channels [0, c1) move forward in time, [c1, c2) backward */
    uint32_t reverse;    /* 1: the opposite shift (the gradient) */
} TsmShiftIndex;

/* The input word that output word i copies, or -1 where it is a zero (its source frame lies
 * outside the clip). Paddle's direction: channels below c1 at frame t come from frame t - 1. */
TSM_HD int64_t tsm_shift_source(TsmShiftIndex p, uint32_t i) {
    uint32_t plane = tsm_div(p.plane, i);
    uint32_t frame = tsm_div(p.channels, plane);
    uint32_t ch = plane - frame * p.channels.d;
    uint32_t t = frame - tsm_div(p.num_seg, frame) * p.num_seg.d;
    uint32_t frame_words = p.channels.d * p.plane.d;
    int from_previous;
    if (ch >= p.c2) {
        return i;
    }
    from_previous = (ch < p.c1) != (p.reverse != 0);
    if (from_previous) {
        return t > 0 ? (int64_t)i - frame_words : -1;
    }
    return t + 1 < p.num_seg.d ? (int64_t)i + frame_words : -1;
}

#endif
