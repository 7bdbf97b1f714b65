/* libFuzzer target: the pickle interpreter of pytorch_model.bin on
 * arbitrary bytes. It must return a state dict or an error, never crash,
 * loop or call anything; a result's tensors are well formed. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model/torch_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cv_pkl_state st;
    cv_error err = {.msg = ""};
    if (cv_pkl_load(data, size, "fuzz.pkl", &st, &err) == 0) {
        for (size_t i = 0; i < st.n_tensors; i++) {
            const cv_pkl_tensor *t = &st.tensors[i];
            if (!t->name || !t->storage_key || !t->dtype || t->n_dims < 0 ||
                t->n_dims > CV_PKL_MAX_DIMS)
                abort();
        }
        cv_pkl_free(&st);
    } else if (!err.msg[0] || st.tensors) {
        abort(); /* every failure names what was wrong and leaves nothing behind */
    }
    return 0;
}
