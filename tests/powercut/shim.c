/*
 * libpowercut: an LD_PRELOAD shim that journals what a power cut could undo.
 *
 * Policy. A power cut may lose every byte of a file written since that
 * file's last fsync/fdatasync (through any fd of the file); sync_file_range
 * does NOT count (it flushes neither the drive cache nor the metadata that
 * finds the data), syncfs/sync count for every file. Only files under the
 * directory POWERCUT_DIR are tracked. Before each tracked change of
 * [off, off+len) -- write, pwrite, writev, pwritev, ftruncate, fallocate --
 * the shim appends an undo record (file id, offset, the old bytes of that
 * range that existed, the old file size) to the journal POWERCUT_JOURNAL,
 * and only then does the change. A sync appends a "synced" record once it
 * returned. After a kill -9, undoing (newest first) every write of a file
 * recorded after its last sync gives a data directory a power cut could
 * have left (tests/powercut/rollback.rs).
 *
 * Metadata is treated as durable at once: creating, renaming and unlinking
 * files and O_TRUNC at open are never undone (acknowledged writes are about
 * data; a file whose creation is kept while its unsynced data is undone is
 * the harsher of the two outcomes anyway). mprotect of a shared mapping and
 * copy_file_range/sendfile/splice into tracked files are not modelled; a
 * writable shared mmap of a tracked file is recorded (tag 'M') and makes the
 * rollback fail loudly, since writes through it escape the model.
 *
 * Invariants.
 * - A change's undo record is in the journal (a completed plain write to a
 *   journal fd the shim opened itself, never tracked) before the change is
 *   made: the test kills the process, it does not cut the machine's power,
 *   so the page cache keeps the journal.
 * - One mutex serializes all bookkeeping of tracked files and is held from
 *   reading the old bytes until the real change returned, so the old bytes
 *   of a record are exactly what the change overwrote.
 * - Records carry a sequence number; a sync record holds the number the
 *   next change would have got when the sync was called: every change
 *   below it completed before the sync began and is covered by it.
 * - Writes to fds that are not regular files or directories (sockets,
 *   pipes, eventfds: also the writes signal handlers make) never take the
 *   mutex.
 *
 * Journal format (all integers little-endian): records of
 *   u8 tag, u32 body length, body
 * 'H' version u32 = 1, pid u32
 * 'W' seq u64, dev u64, ino u64, off u64, old_size u64, old_len u64,
 *     old bytes [old_len], path (rest of body)
 * 'S' seq u64, dev u64, ino u64, call u8, path     (file synced)
 * 'A' seq u64, call u8                            (every file synced)
 * 'R' dev u64, ino u64, path                      (sync_file_range, untrusted)
 * 'G' seq u64, dev u64, ino u64, path             (inode unlinked/replaced)
 * 'M' dev u64, ino u64, path                      (writable shared mmap)
 * call: 1 fsync, 2 fdatasync, 3 sync_file_range (trusted), 4 syncfs, 5 sync.
 * A kill may cut the journal's last record short: that change never ran.
 *
 * POWERCUT_TRUST_SYNC_FILE_RANGE=1 counts sync_file_range as a sync of its
 * file: the control run showing that the harness itself loses nothing.
 *
 * This file holds the wrappers; shim_core.h the bookkeeping they share.
 * Build: cc -shared -fPIC -O2 -o libpowercut.so shim.c -ldl
 */
#define _GNU_SOURCE
#include "shim_core.h"

/* The shape of every write wrapper: undo record, then the real write, both
 * under `mu`. `OFF` is evaluated with `st` set. */
#define WRAP_WRITE(REAL_CALL, LEN, OFF)                                       \
    do {                                                                      \
        if (!maybe_tracked(fd))                                               \
            return REAL_CALL;                                                 \
        pthread_mutex_lock(&mu);                                              \
        struct stat st;                                                       \
        const char *path;                                                     \
        if (!tracked(fd, &st, &path)) {                                       \
            pthread_mutex_unlock(&mu);                                        \
            return REAL_CALL;                                                 \
        }                                                                     \
        undo(fd, &st, path, (OFF), (LEN));                                    \
        ssize_t r_ = REAL_CALL;                                               \
        int e_ = errno;                                                       \
        pthread_mutex_unlock(&mu);                                            \
        errno = e_;                                                           \
        return r_;                                                            \
    } while (0)

ssize_t write(int fd, const void *buf, size_t n) {
    active();
    WRAP_WRITE(real_write(fd, buf, n), n, current_offset(fd, &st));
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) {
    active();
    WRAP_WRITE(real_pwrite(fd, buf, n, off), n, positioned_offset(fd, &st, off));
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off64_t off) {
    active();
    WRAP_WRITE(real_pwrite64(fd, buf, n, off), n, positioned_offset(fd, &st, off));
}

ssize_t writev(int fd, const struct iovec *iov, int cnt) {
    active();
    WRAP_WRITE(real_writev(fd, iov, cnt), iov_len(iov, cnt), current_offset(fd, &st));
}

ssize_t pwritev(int fd, const struct iovec *iov, int cnt, off_t off) {
    active();
    WRAP_WRITE(real_pwritev(fd, iov, cnt, off), iov_len(iov, cnt),
               positioned_offset(fd, &st, off));
}

ssize_t pwritev64(int fd, const struct iovec *iov, int cnt, off64_t off) {
    active();
    WRAP_WRITE(real_pwritev64(fd, iov, cnt, off), iov_len(iov, cnt),
               positioned_offset(fd, &st, off));
}

/* RWF_APPEND and offset -1 both mean "at the end"/"at the cursor". */
static uint64_t v2_offset(int fd, const struct stat *st, int64_t off, int flags) {
#ifdef RWF_APPEND
    if (flags & RWF_APPEND)
        return (uint64_t)st->st_size;
#endif
    (void)flags;
    return positioned_offset(fd, st, off);
}

ssize_t pwritev2(int fd, const struct iovec *iov, int cnt, off_t off, int flags) {
    active();
    WRAP_WRITE(real_pwritev2(fd, iov, cnt, off, flags), iov_len(iov, cnt),
               v2_offset(fd, &st, off, flags));
}

ssize_t pwritev64v2(int fd, const struct iovec *iov, int cnt, off64_t off, int flags) {
    active();
    WRAP_WRITE(real_pwritev64v2(fd, iov, cnt, off, flags), iov_len(iov, cnt),
               v2_offset(fd, &st, off, flags));
}

/* A size change: shrinking replaces [new, old) by nothing, growing keeps
 * the bytes (only the old size needs restoring). */
#define WRAP_TRUNCATE(REAL_CALL)                                              \
    do {                                                                      \
        if (!maybe_tracked(fd))                                               \
            return REAL_CALL;                                                 \
        pthread_mutex_lock(&mu);                                              \
        struct stat st;                                                       \
        const char *path;                                                     \
        if (!tracked(fd, &st, &path) || len < 0) {                            \
            pthread_mutex_unlock(&mu);                                        \
            return REAL_CALL;                                                 \
        }                                                                     \
        uint64_t old_ = (uint64_t)st.st_size, new_ = (uint64_t)len;           \
        if (new_ < old_)                                                      \
            undo(fd, &st, path, new_, old_ - new_);                           \
        else                                                                  \
            undo(fd, &st, path, old_, 0);                                     \
        int r_ = REAL_CALL;                                                   \
        int e_ = errno;                                                       \
        pthread_mutex_unlock(&mu);                                            \
        errno = e_;                                                           \
        return r_;                                                            \
    } while (0)

int ftruncate(int fd, off_t len) {
    active();
    WRAP_TRUNCATE(real_ftruncate(fd, len));
}

int ftruncate64(int fd, off64_t len) {
    active();
    WRAP_TRUNCATE(real_ftruncate64(fd, len));
}

/* Punching or zeroing replaces the range's bytes; collapsing or inserting
 * moves data, which the model has no record for; plain allocation may only
 * grow the file. */
static void fallocate_undo(int fd, int mode, uint64_t off, uint64_t len) {
    struct stat st;
    const char *path;
    if (!tracked(fd, &st, &path))
        return;
#if defined(FALLOC_FL_COLLAPSE_RANGE) && defined(FALLOC_FL_INSERT_RANGE)
    if (mode & (FALLOC_FL_COLLAPSE_RANGE | FALLOC_FL_INSERT_RANGE)) {
        unsigned char head[16];
        put_u64(head, (uint64_t)st.st_dev);
        put_u64(head + 8, (uint64_t)st.st_ino);
        journal('M', head, sizeof head, NULL, 0, path);
        return;
    }
#endif
#if defined(FALLOC_FL_PUNCH_HOLE) && defined(FALLOC_FL_ZERO_RANGE)
    if (mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE)) {
        undo(fd, &st, path, off, len);
        return;
    }
#endif
    (void)off, (void)len;
    undo(fd, &st, path, (uint64_t)st.st_size, 0);
}

#define WRAP_FALLOCATE(REAL_CALL)                                             \
    do {                                                                      \
        if (!maybe_tracked(fd))                                               \
            return REAL_CALL;                                                 \
        pthread_mutex_lock(&mu);                                              \
        if (off >= 0 && len >= 0)                                             \
            fallocate_undo(fd, mode, (uint64_t)off, (uint64_t)len);           \
        int r_ = REAL_CALL;                                                   \
        int e_ = errno;                                                       \
        pthread_mutex_unlock(&mu);                                            \
        errno = e_;                                                           \
        return r_;                                                            \
    } while (0)

int fallocate(int fd, int mode, off_t off, off_t len) {
    active();
    WRAP_FALLOCATE(real_fallocate(fd, mode, off, len));
}

int fallocate64(int fd, int mode, off64_t off, off64_t len) {
    active();
    WRAP_FALLOCATE(real_fallocate64(fd, mode, off, len));
}

/* The sequence number a sync covers up to: taken when the sync is called. */
static int sync_start(int fd, uint64_t *seq) {
    if (!maybe_tracked(fd))
        return 0;
    pthread_mutex_lock(&mu);
    struct stat st;
    const char *path;
    int is_tracked = tracked(fd, &st, &path);
    *seq = next_seq;
    pthread_mutex_unlock(&mu);
    return is_tracked;
}

/* Records a sync that returned successfully. */
static void sync_done(int fd, uint64_t seq, unsigned char call) {
    pthread_mutex_lock(&mu);
    struct stat st;
    const char *path;
    if (tracked(fd, &st, &path)) {
        unsigned char head[25];
        put_u64(head, seq);
        put_u64(head + 8, (uint64_t)st.st_dev);
        put_u64(head + 16, (uint64_t)st.st_ino);
        head[24] = call;
        journal('S', head, sizeof head, NULL, 0, path);
    }
    pthread_mutex_unlock(&mu);
}

static void sync_all_done(uint64_t seq, unsigned char call) {
    pthread_mutex_lock(&mu);
    unsigned char head[9];
    put_u64(head, seq);
    head[8] = call;
    journal('A', head, sizeof head, NULL, 0, NULL);
    pthread_mutex_unlock(&mu);
}

#define WRAP_SYNC(REAL_CALL, CALL)                                            \
    do {                                                                      \
        uint64_t seq_ = 0;                                                    \
        int tracked_ = sync_start(fd, &seq_);                                 \
        int r_ = REAL_CALL;                                                   \
        int e_ = errno;                                                       \
        if (tracked_ && r_ == 0)                                              \
            sync_done(fd, seq_, (CALL));                                      \
        errno = e_;                                                           \
        return r_;                                                            \
    } while (0)

int fsync(int fd) {
    active();
    WRAP_SYNC(real_fsync(fd), CALL_FSYNC);
}

int fdatasync(int fd) {
    active();
    WRAP_SYNC(real_fdatasync(fd), CALL_FDATASYNC);
}

int sync_file_range(int fd, off64_t off, off64_t n, unsigned int flags) {
    if (active() && trust_sfr)
        WRAP_SYNC(real_sync_file_range(fd, off, n, flags), CALL_SYNC_FILE_RANGE);
    int r = real_sync_file_range(fd, off, n, flags);
    int e = errno;
    if (maybe_tracked(fd)) {
        pthread_mutex_lock(&mu);
        struct stat st;
        const char *path;
        if (tracked(fd, &st, &path)) {
            unsigned char head[16];
            put_u64(head, (uint64_t)st.st_dev);
            put_u64(head + 8, (uint64_t)st.st_ino);
            journal('R', head, sizeof head, NULL, 0, path);
        }
        pthread_mutex_unlock(&mu);
    }
    errno = e;
    return r;
}

int syncfs(int fd) {
    if (!active())
        return real_syncfs(fd);
    pthread_mutex_lock(&mu);
    uint64_t seq = next_seq;
    pthread_mutex_unlock(&mu);
    int r = real_syncfs(fd);
    int e = errno;
    if (r == 0)
        sync_all_done(seq, CALL_SYNCFS);
    errno = e;
    return r;
}

void sync(void) {
    if (!active()) {
        real_sync();
        return;
    }
    pthread_mutex_lock(&mu);
    uint64_t seq = next_seq;
    pthread_mutex_unlock(&mu);
    real_sync();
    sync_all_done(seq, CALL_SYNC);
}

/* Caches what a new fd is, so that later writes find it at once. */
static int opened(int fd) {
    if (fd >= 0 && maybe_tracked(fd)) {
        int e = errno;
        pthread_mutex_lock(&mu);
        struct stat st;
        const char *path;
        tracked(fd, &st, &path);
        pthread_mutex_unlock(&mu);
        errno = e;
    }
    return fd;
}

static int wants_mode(int flags) {
    return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE;
}

#define WRAP_OPEN(REAL, ...)                                                  \
    do {                                                                      \
        mode_t mode = 0;                                                      \
        if (wants_mode(flags)) {                                              \
            va_list ap;                                                       \
            va_start(ap, flags);                                              \
            mode = (mode_t)va_arg(ap, int);                                   \
            va_end(ap);                                                       \
        }                                                                     \
        active();                                                             \
        return opened(REAL(__VA_ARGS__, flags, mode));                        \
    } while (0)

int open(const char *path, int flags, ...) { WRAP_OPEN(real_open, path); }
int open64(const char *path, int flags, ...) { WRAP_OPEN(real_open64, path); }
int openat(int dirfd, const char *path, int flags, ...) { WRAP_OPEN(real_openat, dirfd, path); }
int openat64(int dirfd, const char *path, int flags, ...) {
    WRAP_OPEN(real_openat64, dirfd, path);
}

int close(int fd) {
    if (active() && fd >= 0 && fd < FD_CACHE && fd != journal_fd) {
        pthread_mutex_lock(&mu);
        fds[fd].known = 0;
        pthread_mutex_unlock(&mu);
    }
    return real_close(fd);
}

/* An inode whose last name goes away (unlinked, or replaced by a rename)
 * ends: its unsynced records must not be undone into a later file that
 * gets the same inode number. */
static void gone(int dirfd, const char *path) {
    struct stat st;
    if (fstatat(dirfd, path, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode) ||
        st.st_nlink != 1)
        return;
    char target[PATH_MAX];
    char *abs = NULL;
    if (path[0] == '/' || dirfd == AT_FDCWD) {
        abs = realpath(path, NULL);
    } else {
        char link[64];
        snprintf(link, sizeof link, "/proc/self/fd/%d", dirfd);
        ssize_t n = readlink(link, target, sizeof target - 1);
        if (n >= 0) {
            target[n] = 0;
            size_t used = strlen(target);
            snprintf(target + used, sizeof target - used, "/%s", path);
            abs = strdup(target);
        }
    }
    if (!abs)
        return;
    pthread_mutex_lock(&mu);
    if (under_dir(abs)) {
        unsigned char head[24];
        put_u64(head, next_seq);
        put_u64(head + 8, (uint64_t)st.st_dev);
        put_u64(head + 16, (uint64_t)st.st_ino);
        journal('G', head, sizeof head, NULL, 0, abs);
    }
    pthread_mutex_unlock(&mu);
    free(abs);
}

int unlink(const char *path) {
    if (active())
        gone(AT_FDCWD, path);
    return real_unlink(path);
}

int unlinkat(int dirfd, const char *path, int flags) {
    if (active() && !(flags & AT_REMOVEDIR))
        gone(dirfd, path);
    return real_unlinkat(dirfd, path, flags);
}

int rename(const char *from, const char *to) {
    if (active())
        gone(AT_FDCWD, to);
    return real_rename(from, to);
}

int renameat(int from_dir, const char *from, int to_dir, const char *to) {
    if (active())
        gone(to_dir, to);
    return real_renameat(from_dir, from, to_dir, to);
}

int renameat2(int from_dir, const char *from, int to_dir, const char *to, unsigned int flags) {
    if (active())
        gone(to_dir, to);
    return real_renameat2(from_dir, from, to_dir, to, flags);
}

/* Writes through a shared writable mapping bypass every wrapper. */
static void mapped(int fd, int prot, int flags) {
    if (fd < 0 || !(prot & PROT_WRITE) || !(flags & MAP_SHARED) || !maybe_tracked(fd))
        return;
    pthread_mutex_lock(&mu);
    struct stat st;
    const char *path;
    if (tracked(fd, &st, &path)) {
        unsigned char head[16];
        put_u64(head, (uint64_t)st.st_dev);
        put_u64(head + 8, (uint64_t)st.st_ino);
        journal('M', head, sizeof head, NULL, 0, path);
    }
    pthread_mutex_unlock(&mu);
}

/* dlsym may map memory before the real mmap is known: then the raw call. */
void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    if (real_mmap && journal_fd >= 0)
        mapped(fd, prot, flags);
    if (!real_mmap)
        return (void *)syscall(SYS_mmap, addr, len, prot, flags, fd, off);
    return real_mmap(addr, len, prot, flags, fd, off);
}

void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off64_t off) {
    if (real_mmap64 && journal_fd >= 0)
        mapped(fd, prot, flags);
    if (!real_mmap64)
        return (void *)syscall(SYS_mmap, addr, len, prot, flags, fd, off);
    return real_mmap64(addr, len, prot, flags, fd, off);
}
