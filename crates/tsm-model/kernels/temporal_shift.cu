// Paddle's temporal shift on [N*T, C, H, W], forward and (reverse = 1) backward: an
// out-of-place gather, each output word written once from the word tsm_shift_source names.
//
// The shift only moves values, so the kernels are instantiated per access width, not per
// dtype: the host picks the widest word (16, 8, 4 or 2 bytes) that divides a (frame, channel)
// plane's bytes and the operands' offsets, so f32, f16, bf16 and f64 all take 16-byte accesses
// whenever H*W allows it (56x56 and 28x28 in f32, 14x14 and 7x7 need 4-byte words in f32).

#include "temporal_shift.cuh"

struct __align__(16) Word16 {
    uint32_t v[4];
};
struct __align__(8) Word8 {
    uint32_t v[2];
};

// Launched with 256-thread blocks (enough resident warps per SM to keep loads in flight; any
// block size is correct) and one word per thread; the grid-stride loop keeps any grid correct.
template <typename W>
__device__ void shift_words(const W* __restrict__ src, W* __restrict__ dst, TsmShiftIndex p) {
    for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < p.words;
         i += blockDim.x * gridDim.x) {
        int64_t s = tsm_shift_source(p, i);
        dst[i] = s >= 0 ? src[s] : W{};
    }
}

extern "C" __global__ void temporal_shift_w16(const Word16* src, Word16* dst, TsmShiftIndex p) {
    shift_words(src, dst, p);
}

extern "C" __global__ void temporal_shift_w8(const Word8* src, Word8* dst, TsmShiftIndex p) {
    shift_words(src, dst, p);
}

extern "C" __global__ void temporal_shift_w4(const uint32_t* src, uint32_t* dst, TsmShiftIndex p) {
    shift_words(src, dst, p);
}

extern "C" __global__ void temporal_shift_w2(const uint16_t* src, uint16_t* dst, TsmShiftIndex p) {
    shift_words(src, dst, p);
}
