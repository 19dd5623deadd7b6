/* The checks of the C tests (capi_test.c, capi_cuda_test.c): a failed check prints where, what
 * and the library's last error, and counts; each program reports the count at its end. */
#ifndef ELECTRA_TEST_CHECK_H
#define ELECTRA_TEST_CHECK_H

#include <stdio.h>

static int failures = 0;

#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        if (!(cond)) {                                                     \
            fprintf(stderr, "FAILED %s:%d: ", __FILE__, __LINE__);         \
            fprintf(stderr, __VA_ARGS__);                                  \
            fprintf(stderr, " (last error: %s)\n", electra_last_error());  \
            failures++;                                                    \
        }                                                                  \
    } while (0)

#define OK(call) CHECK((call) == ELECTRA_STATUS_OK, "%s", #call)

#endif
