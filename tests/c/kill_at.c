/* A fault injector for tests/kill_points.rs, loaded with LD_PRELOAD into `electra`: counts the
 * calls of rename(2) and fsync(2), the points where the engine commits a file, and kills the
 * process with SIGKILL (no handler runs, nothing is flushed) just before the call numbered
 * ELECTRA_KILL_AT, or, with ELECTRA_KILL_AFTER set, just after it. With neither set, it only
 * counts, and prints the count on stderr at exit (ELECTRA_KILL_COUNT set). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static long calls;

static void point(int after) {
    const char *at = getenv("ELECTRA_KILL_AT");
    if (at && atol(at) == calls && (getenv("ELECTRA_KILL_AFTER") != NULL) == after) {
        raise(SIGKILL);
    }
}

static void report(void) {
    if (getenv("ELECTRA_KILL_COUNT")) fprintf(stderr, "kill points: %ld\n", calls);
}

__attribute__((constructor)) static void init(void) { atexit(report); }

int rename(const char *from, const char *to) {
    static int (*real)(const char *, const char *);
    if (!real) real = (int (*)(const char *, const char *))dlsym(RTLD_NEXT, "rename");
    calls++;
    point(0);
    int r = real(from, to);
    point(1);
    return r;
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    calls++;
    point(0);
    int r = real(fd);
    point(1);
    return r;
}
