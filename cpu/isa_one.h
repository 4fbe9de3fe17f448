/*
 * isa_one.h - one copy of LT_ISA_BODY for the instruction set that isa_each.h has just described
 * (LT_ISA, LT_ISA_LEVEL, LT_W and, except for the baseline, LT_ISA_TARGET), inside a target region
 * for LT_ISA_TARGET. No include guard; only isa_each.h includes it.
 */
#define LT_ISA_PRAGMA_(x) _Pragma(#x)
#define LT_ISA_PRAGMA(x) LT_ISA_PRAGMA_(x)

#ifdef LT_ISA_TARGET
#ifdef __clang__
LT_ISA_PRAGMA(clang attribute push(__attribute__((target(LT_ISA_TARGET))), apply_to = function))
#else
#pragma GCC push_options
LT_ISA_PRAGMA(GCC target(LT_ISA_TARGET))
#endif
#endif

#include LT_ISA_BODY

#ifdef LT_ISA_TARGET
#ifdef __clang__
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif

#undef LT_ISA
#undef LT_ISA_LEVEL
#undef LT_W
#undef LT_ISA_TARGET
#undef LT_ISA_PRAGMA
#undef LT_ISA_PRAGMA_
