/*
 * A scripted writer for the test of libpowercut itself (power_cut.rs,
 * `the_shim_journals_every_kind_of_write`): each libc call the shim wraps,
 * with syncs between, under DIR. After a rollback, only what a
 * fsync/fdatasync covered may be left: f = "abbaccdd", h = "x", g = "".
 * With a second argument "mmap" it maps a file shared and writable
 * instead, which the rollback must refuse.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

static void check(int ok, const char *what) {
    if (!ok) {
        perror(what);
        exit(1);
    }
}

static int open_in(const char *dir, const char *name, int flags) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(path, flags | O_CREAT, 0644);
    check(fd >= 0, path);
    return fd;
}

static void mapped(const char *dir) {
    int fd = open_in(dir, "m", O_RDWR);
    check(ftruncate(fd, 4096) == 0, "ftruncate");
    char *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    check(p != MAP_FAILED, "mmap");
    memcpy(p, "mapped", 6);
}

int main(int argc, char **argv) {
    check(argc >= 2, "usage: probe DIR [mmap]");
    const char *dir = argv[1];
    if (argc > 2 && strcmp(argv[2], "mmap") == 0) {
        mapped(dir);
        return 0;
    }
    int f = open_in(dir, "f", O_RDWR);
    check(write(f, "aaaa", 4) == 4, "write");
    check(fsync(f) == 0, "fsync");
    check(pwrite(f, "bb", 2, 1) == 2, "pwrite");
    struct iovec two[2] = {{"cc", 2}, {"dd", 2}};
    check(writev(f, two, 2) == 4, "writev");
    /* A sync through another fd of the same file counts. */
    int f2 = open_in(dir, "f", O_RDONLY);
    check(fdatasync(f2) == 0, "fdatasync");
    close(f2);
    check(ftruncate(f, 2) == 0, "ftruncate");
    struct iovec one[1] = {{"zz", 2}};
    check(pwritev(f, one, 1, 10) == 2, "pwritev");
    check(fallocate(f, 0, 0, 20) == 0, "fallocate");
    check(sync_file_range(f, 0, 0, SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER) == 0,
          "sync_file_range");
    int g = open_in(dir, "g", O_WRONLY);
    check(write(g, "gg", 2) == 2, "write g");
    int h = open_in(dir, "h", O_WRONLY | O_APPEND);
    check(write(h, "x", 1) == 1, "write h");
    check(fsync(h) == 0, "fsync h");
    check(pwrite(h, "y", 1, 0) == 1, "pwrite h (appends)");
    return 0;
}
