/*
 * A disk that is almost full, for the storage-failure tests (storefail.rs),
 * without root: loaded into the real tswatch binary with LD_PRELOAD, it
 * makes the C library's write calls fail with ENOSPC ("No space left on
 * device"), exactly as a full file system does, for regular files under
 * $TSWATCH_ENOSPC_DIR, while the file $TSWATCH_ENOSPC_FLAG exists. The
 * flag file holds the room left, in bytes: a write that would take a file
 * past that size fails, so small files still fit while a large output dies
 * part-way, and removing the flag frees the disk. Nothing else changes:
 * tswatch's own code has no hook, and every write it makes is covered.
 *
 * Test-only; built by the test with the C compiler that builds aws-lc-rs.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

/* Whether a write of `count` bytes to `fd` (at `offset`, or at the file
 * position when `offset` is negative) must fail for lack of room. */
static int no_room(int fd, off_t offset, size_t count) {
    const char *flag = getenv("TSWATCH_ENOSPC_FLAG");
    const char *dir = getenv("TSWATCH_ENOSPC_DIR");
    if (flag == NULL || dir == NULL || count == 0) {
        return 0;
    }
    int saved = errno;
    int full = 0;
    FILE *f = fopen(flag, "r");
    if (f != NULL) {
        long long room = 0;
        if (fscanf(f, "%lld", &room) != 1) {
            room = 0;
        }
        fclose(f);
        struct stat st;
        char link[64], path[PATH_MAX];
        snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        ssize_t n = readlink(link, path, sizeof path - 1);
        size_t len = strlen(dir);
        if (n > 0 && fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) {
            path[n] = '\0';
            if (strncmp(path, dir, len) == 0 && path[len] == '/') {
                off_t at = offset;
                if (at < 0) {
                    int fl = fcntl(fd, F_GETFL);
                    at = (fl >= 0 && (fl & O_APPEND)) ? st.st_size : lseek(fd, 0, SEEK_CUR);
                }
                full = at < 0 || (long long)at + (long long)count > room;
            }
        }
    }
    errno = saved;
    return full;
}

/* The C library's own `name`, found once. */
#define REAL(name) \
    static __typeof__(&name) real_##name; \
    if (real_##name == NULL) { \
        real_##name = (__typeof__(&name))dlsym(RTLD_NEXT, #name); \
    }

ssize_t write(int fd, const void *buf, size_t count) {
    REAL(write);
    if (no_room(fd, -1, count)) {
        errno = ENOSPC;
        return -1;
    }
    return real_write(fd, buf, count);
}

static size_t total(const struct iovec *iov, int iovcnt) {
    size_t sum = 0;
    for (int i = 0; i < iovcnt; i++) {
        sum += iov[i].iov_len;
    }
    return sum;
}

ssize_t writev(int fd, const struct iovec *iov, int iovcnt) {
    REAL(writev);
    if (no_room(fd, -1, total(iov, iovcnt))) {
        errno = ENOSPC;
        return -1;
    }
    return real_writev(fd, iov, iovcnt);
}

ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset) {
    REAL(pwrite);
    if (no_room(fd, offset, count)) {
        errno = ENOSPC;
        return -1;
    }
    return real_pwrite(fd, buf, count, offset);
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off_t offset) {
    REAL(pwrite64);
    if (no_room(fd, offset, count)) {
        errno = ENOSPC;
        return -1;
    }
    return real_pwrite64(fd, buf, count, offset);
}
