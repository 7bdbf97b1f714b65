/* RoPE inverse frequencies of a model config, exactly as HF computes them
 * (the default, linear and llama3 rope types); shared by every backend. */
#include <math.h>
#include <stdbool.h>

#include "model/model.h"

void cv_rope_inv_freq(const cv_model_config *cfg, float *inv_freq)
{
    const int half = cfg->head_dim / 2;
    for (int i = 0; i < half; i++) {
        /* HF: 1 / base ** (arange(0, dim, 2).float() / dim), in fp32. */
        float expo = (float)(2 * i) / (float)cfg->head_dim;
        inv_freq[i] = 1.0f / powf(cfg->rope_theta, expo);
    }
    if (cfg->rope_type == CV_ROPE_LINEAR) {
        for (int i = 0; i < half; i++)
            inv_freq[i] /= cfg->rope_factor;
    } else if (cfg->rope_type == CV_ROPE_LLAMA3) {
        /* HF _compute_llama3_parameters: long wavelengths are slowed down by
         * factor, short ones kept, the band between interpolated. */
        const float factor = cfg->rope_factor, lo = cfg->rope_low_freq_factor,
                    hi = cfg->rope_high_freq_factor;
        const float old_ctx = (float)cfg->rope_original_max_position;
        const float low_wavelen = old_ctx / lo, high_wavelen = old_ctx / hi;
        for (int i = 0; i < half; i++) {
            float f = inv_freq[i];
            float wavelen = 2.0f * (float)M_PI / f;
            float scaled = wavelen > low_wavelen ? f / factor : f;
            bool medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
            if (medium) {
                float smooth = (old_ctx / wavelen - lo) / (hi - lo);
                scaled = (1.0f - smooth) * scaled / factor + smooth * scaled;
            }
            inv_freq[i] = scaled;
        }
    }
}
