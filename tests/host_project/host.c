/* host.c - a program of a host project that links libloratune through add_subdirectory(). */
#include <stdio.h>
#include <string.h>

#include "loratune.h"

int main(void) {
    if (lt_version_number() != LT_VERSION_NUMBER || strcmp(lt_version_string(), LT_VERSION_STRING)) {
        fprintf(stderr, "host: header %s, library %s\n", LT_VERSION_STRING, lt_version_string());
        return 1;
    }
    lt_context *ctx = NULL;
    if (lt_context_create(NULL, &ctx) != LT_OK) {
        fprintf(stderr, "host: lt_context_create: %s\n", lt_last_error());
        return 1;
    }
    printf("host: libloratune %s, backend %s\n", lt_version_string(), lt_context_backend(ctx));
    lt_context_free(ctx);
    return 0;
}
