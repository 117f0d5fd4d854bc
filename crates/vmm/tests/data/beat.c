/* Guest side of the live-migration benchmark (crates/vmm/tests/bench_migrate_linux.rs), built
 * static on the host and handed to the guest on a read-only disk.
 *
 *   beat DIRTY_MIB
 *
 * Writes one '.' to stdout (the serial console) every millisecond, forever: the host timestamps
 * the bytes as they arrive, so the gap between the last byte from the source and the first from
 * the destination is the downtime as the guest's own activity shows it (the guest's clocks cannot
 * show it: kvmclock continues from its saved value). With DIRTY_MIB > 0 it also writes one word
 * to every page of a DIRTY_MIB buffer in each millisecond (a memory-dirtying guest). */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    long mib = argc > 1 ? atol(argv[1]) : 0;
    if (mib < 0 || mib > 4096)
        return 2;
    size_t len = (size_t)mib << 20;
    volatile uint64_t *buf = len ? malloc(len) : NULL;
    if (len && !buf)
        return 3;
    if (len)
        memset((void *)buf, 1, len);
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    for (uint64_t n = 0;; n++) {
        for (size_t off = 0; off < len; off += 4096)
            buf[off / 8] = n;
        if (write(1, ".", 1) < 0)
            return 4;
        next.tv_nsec += 1000000;
        if (next.tv_nsec >= 1000000000) {
            next.tv_nsec -= 1000000000;
            next.tv_sec++;
        }
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
    }
}
