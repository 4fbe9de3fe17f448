/*
 * adapter_impl.h - private to the adapter folder: how create, load and the PiSSA / OLoRA init build an
 * adapter. Not included from outside src/adapter/.
 */
#ifndef LT_ADAPTER_IMPL_H
#define LT_ADAPTER_IMPL_H

#include "adapter/adapter.h"

/* Create the adapter tensors (zeros) for the given params; used by create and load (adapter/adapter.c). */
lt_status lt_adapter_alloc(lt_model *model, const lt_adapter_params *p, lt_adapter **out, lt_error *err);

/* adapter/full.c: checks of full_finetune / modules_to_save against the model; the trained tensors'
 * float count (pass 0, sets n_ptensors and the floats of Gemma compute norms) and binding (pass 1: the
 * views point into params from `base` on, filled with the model's values). */
lt_status lt_adapter_full_check(const lt_model *m, const lt_adapter_params *p, lt_error *err);
size_t lt_adapter_extra_count(lt_adapter *a, size_t *norm_floats);
lt_status lt_adapter_extra_bind(lt_adapter *a, size_t base, lt_error *err);

/* The model's values of trained tensor t (the checkpoint's: Gemma norms as w, not 1 + w); NULL when the
 * model has no f32 copy (a quantized LM head: dequantized by the caller). */
const float *lt_adapter_model_tensor(const lt_model *m, const lt_ptensor *t);

/* PiSSA / OLoRA (adapter/lora_init.c): decompose every targeted module's base weight and set A = A0, B = B0. */
lt_status lt_lora_decompose_init(lt_adapter *a, lt_error *err);

/* The thin SVD (LAPACK sgesdd) of W (out, in) row-major: U (out, k), S (k, descending), Vt (k, in) row-major,
 * k = min(out, in) (adapter/lora_init.c; PiSSA, adapter combination and LoRA extraction use it). */
lt_status lt_svd(const float *W, int out, int in, float *S, float *U, float *Vt, lt_error *err);

#endif /* LT_ADAPTER_IMPL_H */
