/* ../shared data in the tests. A lone clone has none: a test program that
 * needs some checks for it first and, when it is missing, prints one line
 * naming the data and how to provide it (CVLLM_SHARED) and exits 77, which
 * ctest reports as SKIP (cv_add_test sets SKIP_RETURN_CODE 77). CI has
 * ../shared, and .ci/run fails when anything was skipped there.
 *
 * Programs whose other tests need nothing from ../shared run those and
 * skip only the rest: cv_test_have_shared() per test, then
 * `return cv_test_exit(failed);` so that the program still reports SKIP. */
#ifndef CV_TESTS_COMMON_SHARED_DATA_H
#define CV_TESTS_COMMON_SHARED_DATA_H

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

enum { CV_TEST_SKIP = 77 };

/* $CVLLM_SHARED, default ../shared (tests run from the source root). */
static inline const char *cv_test_shared_root(void)
{
    const char *s = getenv("CVLLM_SHARED");
    return s && s[0] ? s : "../shared";
}

static bool cv_test_skipped_some;

/* Whether $CVLLM_SHARED/rel exists; when not, prints the SKIP line (once
 * per program) and remembers that something was skipped. */
static inline bool cv_test_have_shared(const char *rel)
{
    char path[4096];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", cv_test_shared_root(), rel);
    if (stat(path, &st) == 0) return true;
    if (!cv_test_skipped_some)
        printf("SKIP: needs %s (not found); set CVLLM_SHARED to the shared data directory "
               "(models/, tokenizers/)\n",
               path);
    cv_test_skipped_some = true;
    return false;
}

/* For programs that need rel throughout: exits 77 when it is missing. */
static inline void cv_test_need_shared(const char *rel)
{
    if (!cv_test_have_shared(rel)) exit(CV_TEST_SKIP);
}

/* The exit status of a program that skipped some of its tests. */
static inline int cv_test_exit(int failed)
{
    return failed ? failed : cv_test_skipped_some ? CV_TEST_SKIP : 0;
}

#endif
