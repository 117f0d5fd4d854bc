/* Guest side of the storage benchmark (crates/vmm/tests/bench_storage.rs), built static on the
 * host and handed to the guest on a read-only disk (busybox has no fio).
 *
 *   randread DEVICE COUNT PROCS
 *
 * COUNT 4 KiB O_DIRECT reads at random 4 KiB-aligned offsets of DEVICE (xorshift, fixed seeds),
 * shared by PROCS processes, so that PROCS requests are in flight at a time. Exit 0 when every
 * read returned 4096 bytes. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/fs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: randread DEVICE COUNT PROCS\n");
        return 2;
    }
    long count = atol(argv[2]);
    int procs = atoi(argv[3]);
    if (count <= 0 || procs <= 0 || procs > 256) {
        fprintf(stderr, "randread: bad COUNT or PROCS\n");
        return 2;
    }
    int fd = open(argv[1], O_RDONLY | O_DIRECT);
    if (fd < 0) {
        perror("randread: open");
        return 1;
    }
    uint64_t size = 0;
    if (ioctl(fd, BLKGETSIZE64, &size) < 0) {
        off_t end = lseek(fd, 0, SEEK_END); /* a regular file */
        size = end > 0 ? (uint64_t)end : 0;
    }
    if (size < 4096) {
        fprintf(stderr, "randread: %s is smaller than 4 KiB\n", argv[1]);
        return 1;
    }
    uint64_t blocks = size / 4096;
    for (int p = 0; p < procs; p++) {
        pid_t pid = fork();
        if (pid < 0) {
            perror("randread: fork");
            return 1;
        }
        if (pid == 0) {
            void *buf;
            if (posix_memalign(&buf, 4096, 4096) != 0)
                _exit(1);
            uint64_t x = 0x9e3779b97f4a7c15ULL * (uint64_t)(p + 1);
            for (long i = p; i < count; i += procs) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if (pread(fd, buf, 4096, (off_t)((x % blocks) * 4096)) != 4096) {
                    perror("randread: pread");
                    _exit(1);
                }
            }
            _exit(0);
        }
    }
    int st, bad = 0;
    while (wait(&st) > 0)
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
            bad = 1;
    return bad;
}
