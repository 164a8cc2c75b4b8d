/*
 * libpowercut's bookkeeping, included once by shim.c (the policy, the
 * invariants and the journal format are described there): the real libc
 * functions, the journal, which fds are tracked, and the undo record of a
 * change.
 */
#ifndef POWERCUT_SHIM_CORE_H
#define POWERCUT_SHIM_CORE_H

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#define CALL_FSYNC 1
#define CALL_FDATASYNC 2
#define CALL_SYNC_FILE_RANGE 3
#define CALL_SYNCFS 4
#define CALL_SYNC 5
#define FD_CACHE 4096

static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off64_t);
static ssize_t (*real_writev)(int, const struct iovec *, int);
static ssize_t (*real_pwritev)(int, const struct iovec *, int, off_t);
static ssize_t (*real_pwritev64)(int, const struct iovec *, int, off64_t);
static ssize_t (*real_pwritev2)(int, const struct iovec *, int, off_t, int);
static ssize_t (*real_pwritev64v2)(int, const struct iovec *, int, off64_t, int);
static int (*real_open)(const char *, int, ...);
static int (*real_open64)(const char *, int, ...);
static int (*real_openat)(int, const char *, int, ...);
static int (*real_openat64)(int, const char *, int, ...);
static int (*real_close)(int);
static int (*real_ftruncate)(int, off_t);
static int (*real_ftruncate64)(int, off64_t);
static int (*real_fallocate)(int, int, off_t, off_t);
static int (*real_fallocate64)(int, int, off64_t, off64_t);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_sync_file_range)(int, off64_t, off64_t, unsigned int);
static int (*real_syncfs)(int);
static void (*real_sync)(void);
static int (*real_unlink)(const char *);
static int (*real_unlinkat)(int, const char *, int);
static int (*real_rename)(const char *, const char *);
static int (*real_renameat)(int, const char *, int, const char *);
static int (*real_renameat2)(int, const char *, int, const char *, unsigned int);
static void *(*real_mmap)(void *, size_t, int, int, int, off_t);
static void *(*real_mmap64)(void *, size_t, int, int, int, off64_t);

static pthread_once_t once = PTHREAD_ONCE_INIT;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
/* -1: the shim passes everything through (no journal configured). */
static int journal_fd = -1;
static char *dir_env;
static char dir_real[PATH_MAX];
static int trust_sfr;
static uint64_t next_seq;

struct fd_entry {
    int known;
    dev_t dev;
    ino_t ino;
    int tracked;
    char *path;
};
static struct fd_entry fds[FD_CACHE];

#define RESOLVE(name) real_##name = dlsym(RTLD_NEXT, #name)

static void resolve_all(void) {
    RESOLVE(write); RESOLVE(pwrite); RESOLVE(pwrite64); RESOLVE(writev);
    RESOLVE(pwritev); RESOLVE(pwritev64); RESOLVE(pwritev2);
    RESOLVE(pwritev64v2); RESOLVE(open); RESOLVE(open64); RESOLVE(openat);
    RESOLVE(openat64); RESOLVE(close); RESOLVE(ftruncate);
    RESOLVE(ftruncate64); RESOLVE(fallocate); RESOLVE(fallocate64);
    RESOLVE(fsync); RESOLVE(fdatasync); RESOLVE(sync_file_range);
    RESOLVE(syncfs); RESOLVE(sync); RESOLVE(unlink); RESOLVE(unlinkat);
    RESOLVE(rename); RESOLVE(renameat); RESOLVE(renameat2); RESOLVE(mmap);
    RESOLVE(mmap64);
}

static void die(const char *what) {
    char line[512];
    int n = snprintf(line, sizeof line, "libpowercut: %s: %s\n", what, strerror(errno));
    if (n > 0)
        syscall(SYS_write, 2, line, (size_t)n);
    abort();
}

static void put_u64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void put_u32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* Appends one record, whole, to the journal; the caller holds `mu`
 * (or is the initializer). */
static void journal(char tag, const unsigned char *head, size_t head_len,
                    const void *bytes, size_t bytes_len, const char *path) {
    size_t path_len = path ? strlen(path) : 0;
    size_t body = head_len + bytes_len + path_len;
    unsigned char *rec = malloc(5 + body);
    if (!rec)
        die("out of memory for a journal record");
    rec[0] = (unsigned char)tag;
    put_u32(rec + 1, (uint32_t)body);
    memcpy(rec + 5, head, head_len);
    if (bytes_len)
        memcpy(rec + 5 + head_len, bytes, bytes_len);
    if (path_len)
        memcpy(rec + 5 + head_len + bytes_len, path, path_len);
    size_t done = 0, total = 5 + body;
    while (done < total) {
        ssize_t n = real_write(journal_fd, rec + done, total - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            die("cannot write the journal");
        done += (size_t)n;
    }
    free(rec);
}

static void init(void) {
    resolve_all();
    const char *path = getenv("POWERCUT_JOURNAL");
    const char *dir = getenv("POWERCUT_DIR");
    if (!path || !*path || !dir || !*dir)
        return;
    dir_env = strdup(dir);
    const char *trust = getenv("POWERCUT_TRUST_SYNC_FILE_RANGE");
    trust_sfr = trust && strcmp(trust, "1") == 0;
    int fd = real_open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0)
        die("cannot open POWERCUT_JOURNAL");
    journal_fd = fd;
    unsigned char head[8];
    put_u32(head, 1);
    put_u32(head + 4, (uint32_t)getpid());
    journal('H', head, 8, NULL, 0, NULL);
}

static int active(void) {
    pthread_once(&once, init);
    return journal_fd >= 0;
}

/* Whether `path` is POWERCUT_DIR or under it; the directory is resolved
 * once it exists (syncd may create it). Caller holds `mu`. */
static int under_dir(const char *path) {
    if (!dir_real[0] && !realpath(dir_env, dir_real))
        dir_real[0] = 0;
    const char *dir = dir_real[0] ? dir_real : dir_env;
    size_t n = strlen(dir);
    return strncmp(path, dir, n) == 0 && (path[n] == 0 || path[n] == '/');
}

/* Tracked file behind `fd`: returns 1 and fills `st` and `*path`. Caller
 * holds `mu`. The cache is checked against the fd's inode, so an fd number
 * reused behind the shim's back (dup2, a close the shim did not see) is
 * looked at again. */
static int tracked(int fd, struct stat *st, const char **path) {
    static struct fd_entry beyond_cache;
    if (fstat(fd, st) != 0 || !(S_ISREG(st->st_mode) || S_ISDIR(st->st_mode)))
        return 0;
    struct fd_entry *e = (fd >= 0 && fd < FD_CACHE) ? &fds[fd] : &beyond_cache;
    if (e == &beyond_cache || !e->known || e->dev != st->st_dev || e->ino != st->st_ino) {
        char link[64], target[PATH_MAX];
        snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        ssize_t n = readlink(link, target, sizeof target - 1);
        if (n < 0)
            return 0;
        target[n] = 0;
        free(e->path);
        e->path = strdup(target);
        if (!e->path)
            die("out of memory for a path");
        e->known = 1;
        e->dev = st->st_dev;
        e->ino = st->st_ino;
        e->tracked = fd != journal_fd && under_dir(target);
    }
    *path = e->path;
    return e->tracked;
}

/* Whether the fd is a regular file or a directory: the only kinds that are
 * ever tracked. Lets sockets and pipes pass without the mutex. */
static int maybe_tracked(int fd) {
    struct stat st;
    return active() && fstat(fd, &st) == 0 && (S_ISREG(st.st_mode) || S_ISDIR(st.st_mode));
}

/* Journals the undo of a change of [off, off+len) to the tracked file
 * `fd`; caller holds `mu`. */
static void undo(int fd, const struct stat *st, const char *path, uint64_t off, uint64_t len) {
    uint64_t old_size = (uint64_t)st->st_size;
    uint64_t old_len = off < old_size ? old_size - off : 0;
    if (old_len > len)
        old_len = len;
    unsigned char *old = NULL;
    if (old_len) {
        char link[64];
        snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        /* A fresh read-only fd: the writer's own may be write-only. */
        int rfd = real_open(link, O_RDONLY | O_CLOEXEC);
        old = malloc(old_len);
        if (rfd < 0 || !old)
            die("cannot read the bytes a write replaces");
        uint64_t got = 0;
        while (got < old_len) {
            ssize_t n = pread(rfd, old + got, old_len - got, (off_t)(off + got));
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                die("cannot read the bytes a write replaces");
            got += (uint64_t)n;
        }
        real_close(rfd);
    }
    unsigned char head[48];
    put_u64(head, next_seq++);
    put_u64(head + 8, (uint64_t)st->st_dev);
    put_u64(head + 16, (uint64_t)st->st_ino);
    put_u64(head + 24, off);
    put_u64(head + 32, old_size);
    put_u64(head + 40, old_len);
    journal('W', head, sizeof head, old, old_len, path);
    free(old);
}

/* Where a write without an explicit offset lands. */
static uint64_t current_offset(int fd, const struct stat *st) {
    int flags = fcntl(fd, F_GETFL);
    if (flags >= 0 && (flags & O_APPEND))
        return (uint64_t)st->st_size;
    off_t pos = lseek(fd, 0, SEEK_CUR);
    return pos < 0 ? 0 : (uint64_t)pos;
}

/* Linux appends a pwrite on an O_APPEND fd, whatever its offset. */
static uint64_t positioned_offset(int fd, const struct stat *st, int64_t off) {
    int flags = fcntl(fd, F_GETFL);
    if (off < 0 || (flags >= 0 && (flags & O_APPEND)))
        return current_offset(fd, st);
    return (uint64_t)off;
}

static uint64_t iov_len(const struct iovec *iov, int n) {
    uint64_t total = 0;
    for (int i = 0; i < n; i++)
        total += iov[i].iov_len;
    return total;
}

#endif
