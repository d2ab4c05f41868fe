/*
 * Storage faults for the local backend, for the conformance suite
 * (conformance.rs) and the storage-failure tests (storefail.rs): loaded into the real tswatch binary with LD_PRELOAD, it
 * disturbs the C library's file-system calls on paths under
 * $TSWATCH_FAULTFS_DIR (the data directory, canonical), as the proxy in
 * faultkit.rs disturbs the object store's requests on S3. Nothing else
 * changes: tswatch has no hook, and every call it makes is covered.
 *
 *   TSWATCH_FAULTFS_DOWN=FILE   while FILE exists, every open (read or
 *                               write), opendir, rename, link, unlink and
 *                               mkdir under the directory fails with EIO:
 *                               storage is away.
 *   TSWATCH_FAULTFS_LOSE=SUFFIX:FROM:N
 *                               N renames onto a path ending in SUFFIX,
 *                               from the FROM-th (counting from 1), happen,
 *                               then report EIO: the commit is made and its
 *                               caller never learns it.
 *   TSWATCH_FAULTFS_CRASH_AT=N  the process SIGKILLs itself just before its
 *                               N-th mutating call under the directory
 *                               (open for writing or creating, rename,
 *                               link, unlink, mkdir, rmdir).
 *   TSWATCH_FAULTFS_TRACE=FILE  one line per mutating call ("<n> <call>
 *                               <path>") and per injected fault, appended
 *                               to FILE (outside the directory).
 *   TSWATCH_FAULTFS_FULL=FILE   a disk that is almost full: while FILE
 *                               exists it holds the room left, in bytes,
 *                               and a write that would take a regular file
 *                               under the directory past that size fails
 *                               with ENOSPC ("No space left on device"), as
 *                               a full file system does: small files still
 *                               fit while a large output dies part-way.
 *
 * Test-only; built by the test with the C compiler that builds aws-lc-rs.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

/* The C library's own `name`, found once. */
#define REAL(name) \
    static __typeof__(&name) real_##name; \
    if (real_##name == NULL) { \
        real_##name = (__typeof__(&name))dlsym(RTLD_NEXT, #name); \
    }

static long mutations;
static long lost;

/* `path` made absolute against `dirfd` (AT_FDCWD: the working directory)
 * into `out`; the path itself if that cannot be done. */
static const char *absolute(int dirfd, const char *path, char *out, size_t size) {
    if (path == NULL || path[0] == '/') {
        return path;
    }
    char base[PATH_MAX];
    if (dirfd == AT_FDCWD) {
        if (getcwd(base, sizeof base) == NULL) {
            return path;
        }
    } else {
        char link[64];
        snprintf(link, sizeof link, "/proc/self/fd/%d", dirfd);
        ssize_t n = readlink(link, base, sizeof base - 1);
        if (n <= 0) {
            return path;
        }
        base[n] = '\0';
    }
    int n = snprintf(out, size, "%s/%s", base, path);
    return n > 0 && (size_t)n < size ? out : path;
}

/* Whether `path` (relative to `dirfd`) is under the directory. */
static int under(int dirfd, const char *path) {
    const char *dir = getenv("TSWATCH_FAULTFS_DIR");
    if (dir == NULL || path == NULL) {
        return 0;
    }
    char buf[2 * PATH_MAX];
    const char *p = absolute(dirfd, path, buf, sizeof buf);
    size_t len = strlen(dir);
    return strncmp(p, dir, len) == 0 && (p[len] == '/' || p[len] == '\0');
}

/* Appends a line to the trace file, if there is one. */
static void trace(const char *what, const char *path, long n) {
    const char *file = getenv("TSWATCH_FAULTFS_TRACE");
    if (file == NULL) {
        return;
    }
    REAL(open);
    int fd = real_open(file, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) {
        return;
    }
    char line[2 * PATH_MAX + 64];
    int len = snprintf(line, sizeof line, "%ld %s %s\n", n, what, path);
    if (len > 0) {
        ssize_t w = write(fd, line, (size_t)len < sizeof line ? (size_t)len : sizeof line - 1);
        (void)w;
    }
    close(fd);
}

/* Whether storage is away now. */
static int down(void) {
    const char *flag = getenv("TSWATCH_FAULTFS_DOWN");
    return flag != NULL && access(flag, F_OK) == 0;
}

/* Before any call under the directory: 0 to go on, -1 (errno EIO) while
 * storage is away. A mutating call is counted, traced and, if it is the
 * chosen one, never made: the process dies first. */
static int before(int dirfd, const char *path, const char *call, int mutating) {
    if (!under(dirfd, path)) {
        return 0;
    }
    int saved = errno;
    if (down()) {
        errno = EIO;
        return -1;
    }
    if (mutating) {
        long n = __atomic_add_fetch(&mutations, 1, __ATOMIC_SEQ_CST);
        trace(call, path, n);
        const char *at = getenv("TSWATCH_FAULTFS_CRASH_AT");
        if (at != NULL && atol(at) == n) {
            trace("crash", path, n);
            kill(getpid(), SIGKILL);
        }
    }
    errno = saved;
    return 0;
}

static int writes(int flags) {
    return (flags & (O_WRONLY | O_RDWR | O_CREAT | O_TRUNC)) != 0;
}

/* The mode argument of an open call, present only with O_CREAT or O_TMPFILE. */
#define MODE(flags, last) \
    mode_t mode = 0; \
    if ((flags) & (O_CREAT | O_TMPFILE)) { \
        va_list ap; \
        va_start(ap, last); \
        mode = (mode_t)va_arg(ap, int); \
        va_end(ap); \
    }

int open(const char *path, int flags, ...) {
    REAL(open);
    MODE(flags, flags);
    if (before(AT_FDCWD, path, "open", writes(flags)) != 0) {
        return -1;
    }
    return real_open(path, flags, mode);
}

int open64(const char *path, int flags, ...) {
    REAL(open64);
    MODE(flags, flags);
    if (before(AT_FDCWD, path, "open", writes(flags)) != 0) {
        return -1;
    }
    return real_open64(path, flags, mode);
}

int openat(int dirfd, const char *path, int flags, ...) {
    REAL(openat);
    MODE(flags, flags);
    if (before(dirfd, path, "open", writes(flags)) != 0) {
        return -1;
    }
    return real_openat(dirfd, path, flags, mode);
}

int openat64(int dirfd, const char *path, int flags, ...) {
    REAL(openat64);
    MODE(flags, flags);
    if (before(dirfd, path, "open", writes(flags)) != 0) {
        return -1;
    }
    return real_openat64(dirfd, path, flags, mode);
}

DIR *opendir(const char *path) {
    REAL(opendir);
    if (before(AT_FDCWD, path, "opendir", 0) != 0) {
        return NULL;
    }
    return real_opendir(path);
}

/* A rename onto `to`: made, then reported as failed if it is to be lost. */
static int renamed(int result, const char *to) {
    const char *spec = getenv("TSWATCH_FAULTFS_LOSE");
    const char *colon = spec == NULL ? NULL : strchr(spec, ':');
    if (result != 0 || colon == NULL) {
        return result;
    }
    size_t slen = (size_t)(colon - spec), tlen = strlen(to);
    if (tlen < slen || strncmp(to + tlen - slen, spec, slen) != 0) {
        return result;
    }
    char *rest;
    long from = strtol(colon + 1, &rest, 10);
    long count = *rest == ':' ? atol(rest + 1) : 0;
    long n = __atomic_add_fetch(&lost, 1, __ATOMIC_SEQ_CST);
    if (n < from || n >= from + count) {
        return result;
    }
    trace("lost", to, n);
    errno = EIO;
    return -1;
}

int rename(const char *from, const char *to) {
    REAL(rename);
    if (before(AT_FDCWD, to, "rename", 1) != 0) {
        return -1;
    }
    return renamed(real_rename(from, to), to);
}

int renameat(int fromfd, const char *from, int tofd, const char *to) {
    REAL(renameat);
    if (before(tofd, to, "rename", 1) != 0) {
        return -1;
    }
    return renamed(real_renameat(fromfd, from, tofd, to), to);
}

int renameat2(int fromfd, const char *from, int tofd, const char *to, unsigned int flags) {
    REAL(renameat2);
    if (before(tofd, to, "rename", 1) != 0) {
        return -1;
    }
    return renamed(real_renameat2(fromfd, from, tofd, to, flags), to);
}

int link(const char *from, const char *to) {
    REAL(link);
    if (before(AT_FDCWD, to, "link", 1) != 0) {
        return -1;
    }
    return real_link(from, to);
}

int linkat(int fromfd, const char *from, int tofd, const char *to, int flags) {
    REAL(linkat);
    if (before(tofd, to, "link", 1) != 0) {
        return -1;
    }
    return real_linkat(fromfd, from, tofd, to, flags);
}

int unlink(const char *path) {
    REAL(unlink);
    if (before(AT_FDCWD, path, "unlink", 1) != 0) {
        return -1;
    }
    return real_unlink(path);
}

int unlinkat(int dirfd, const char *path, int flags) {
    REAL(unlinkat);
    if (before(dirfd, path, "unlink", 1) != 0) {
        return -1;
    }
    return real_unlinkat(dirfd, path, flags);
}

int rmdir(const char *path) {
    REAL(rmdir);
    if (before(AT_FDCWD, path, "rmdir", 1) != 0) {
        return -1;
    }
    return real_rmdir(path);
}

int mkdir(const char *path, mode_t mode) {
    REAL(mkdir);
    if (before(AT_FDCWD, path, "mkdir", 1) != 0) {
        return -1;
    }
    return real_mkdir(path, mode);
}

int mkdirat(int dirfd, const char *path, mode_t mode) {
    REAL(mkdirat);
    if (before(dirfd, path, "mkdir", 1) != 0) {
        return -1;
    }
    return real_mkdirat(dirfd, path, mode);
}

/* Whether a write of `count` bytes to `fd` (at `offset`, or at the file
 * position when `offset` is negative) must fail for lack of room. */
static int no_room(int fd, off_t offset, size_t count) {
    const char *flag = getenv("TSWATCH_FAULTFS_FULL");
    const char *dir = getenv("TSWATCH_FAULTFS_DIR");
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
