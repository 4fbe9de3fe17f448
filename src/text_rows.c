/* stub */
#include "tokenizer.h"
