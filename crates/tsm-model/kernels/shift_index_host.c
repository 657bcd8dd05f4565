/* The kernel's index arithmetic (temporal_shift.cuh) run on the host, for tsm-model's tests:
 * the same gather as temporal_shift.cu, one word at a time. */
#include <string.h>

#include "temporal_shift.cuh"

void tsm_shift_words_host(const TsmShiftIndex* p, const uint8_t* src, uint8_t* dst,
                          uint32_t word_bytes) {
    uint32_t i;
    for (i = 0; i < p->words; i++) {
        int64_t s = tsm_shift_source(*p, i);
        if (s >= 0) {
            memcpy(dst + (size_t)i * word_bytes, src + (size_t)s * word_bytes, word_bytes);
        } else {
            memset(dst + (size_t)i * word_bytes, 0, word_bytes);
        }
    }
}

uint32_t tsm_div_host(TsmFastDiv f, uint32_t n) {
    return tsm_div(f, n);
}
