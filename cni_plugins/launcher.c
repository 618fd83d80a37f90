/*
 * Berth's native CNI launcher: the same job as cni_plugins/launcher.py, without an interpreter's start-up.
 *
 * A runtime execs a plugin for every container; the Python launcher alone costs the interpreter's bare start-up
 * (about 10 ms here, as much as the Go reference's whole ADD). This program forwards the call to the local CNI
 * daemon over the same wire format, and hands anything it cannot finish to the Python launcher, which runs the
 * plugin in process:
 *   - no daemon (connect fails), or one it cannot trust: exec the Python launcher at once, stdin untouched.
 *     Trusted means: every directory from / to the socket's (as given and resolved) owned by root or this user and
 *     writable by nobody else (sticky directories above the last allowed), the socket owned likewise, the peer's
 *     SO_PEERCRED uid root or this user, and the daemon's greeting naming this very build;
 *   - daemon answers skew/busy, or does not accept in time: exec it with the stdin already read (via a memfd);
 *   - daemon dies after accepting: ADD reports "try again" (code 11), other commands (idempotent) fall back;
 *   - daemon accepted and then stalls past the reply deadline (BERTH_CNI_REPLY_TIMEOUT, default 60 s): code 11,
 *     never a second run of the call beside one that may still be running.
 * Frames are capped as on the daemon's side (stdin 16 MiB, environment 1 MiB, each reply field 16 MiB).
 * Built by `berth install-cni` with the system C compiler when there is one; it needs only libc.
 * BERTH_BUILD_ID, BERTH_FALLBACK_DIR and BERTH_VERSION_REPLY come from a header `berth install-cni` writes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAGIC "BERTHCNI"
#define PROTOCOL_VERSION 2
#define MAX_STDIN (16u << 20)
#define MAX_ENV (1u << 20)
#define MAX_NAME 256u
#define MAX_OUTPUT (16u << 20)
#define TRY_AGAIN_LATER 11
#ifndef BERTH_DEFAULT_SOCKET
#define BERTH_DEFAULT_SOCKET "/run/berth/cni.sock"
#endif

extern char **environ;

struct buffer { char *data; size_t len, cap; };

static void append(struct buffer *b, const void *data, size_t len) {
    if (b->len + len > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + len) cap *= 2;
        char *grown = realloc(b->data, cap);
        if (!grown) { perror("berth launcher"); exit(1); }
        b->data = grown;
        b->cap = cap;
    }
    memcpy(b->data + b->len, data, len);
    b->len += len;
}

static void append_field(struct buffer *b, const void *data, size_t len) {
    unsigned char size[4] = {len >> 24, len >> 16, len >> 8, len};
    append(b, size, 4);
    append(b, data, len);
}

static const char *plugin_name(const char *argv0) {
    const char *slash = strrchr(argv0, '/');
    return slash ? slash + 1 : argv0;
}

/* Replace this process with the Python launcher, which runs the plugin in process. */
static void fall_back(const char *plugin, char **argv, const struct buffer *stdin_read) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", BERTH_FALLBACK_DIR, plugin);
    if (stdin_read) {
        int fd = memfd_create("berth-cni-stdin", 0);
        if (fd < 0 || write(fd, stdin_read->data, stdin_read->len) != (ssize_t)stdin_read->len ||
            lseek(fd, 0, SEEK_SET) != 0 || dup2(fd, 0) < 0) {
            perror("berth launcher: cannot replay stdin");
            exit(1);
        }
        close(fd);
    }
    setenv("BERTH_CNI_DAEMON", "off", 1);
    argv[0] = path;
    execv(path, argv);
    fprintf(stderr, "berth launcher: cannot exec %s: %s\n", path, strerror(errno));
    printf("{\"cniVersion\": \"1.1.0\", \"code\": 999, \"msg\": \"berth launcher cannot run %s\"}", plugin);
    exit(1);
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* 0 on success, -1 on EOF or error, -2 when the deadline (a now() time) passed: the whole read is bounded. */
static int recv_exact(int fd, void *out, size_t len, double deadline) {
    char *p = out;
    while (len) {
        double left = deadline - now();
        if (left <= 0) return -2;
        struct pollfd pfd = {fd, POLLIN, 0};
        int ready = poll(&pfd, 1, (int)(left * 1000) + 1);
        if (ready < 0 && errno == EINTR) continue;
        if (ready < 0) return -1;
        if (ready == 0) return -2;
        ssize_t n = recv(fd, p, len, 0);
        if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (n <= 0) return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int recv_field(int fd, struct buffer *out, size_t limit, double deadline) {
    unsigned char size[4];
    int rc = recv_exact(fd, size, 4, deadline);
    if (rc) return rc;
    size_t len = ((size_t)size[0] << 24) | ((size_t)size[1] << 16) | ((size_t)size[2] << 8) | size[3];
    if (len > limit) return -1;
    out->len = 0;
    if (len) {
        append(out, "", 0);
        char *tmp = malloc(len);
        if (!tmp) return -1;
        if ((rc = recv_exact(fd, tmp, len, deadline))) { free(tmp); return rc; }
        append(out, tmp, len);
        free(tmp);
    }
    return 0;
}

static int trusted_uid(uid_t uid) { return uid == 0 || uid == geteuid(); }

/* Whether every directory from / down to dir is owned by a trusted user and writable by no one else (a sticky
 * directory is allowed above the last one: nobody can rename what another user made there). */
static int trusted_chain(const char *dir) {
    char path[PATH_MAX];
    if (strlen(dir) >= sizeof path || dir[0] != '/') return 0;
    strcpy(path, dir);
    for (int last = 1;; last = 0) {
        struct stat st;
        if (stat(path[0] ? path : "/", &st) != 0 || !trusted_uid(st.st_uid)) return 0;
        if ((st.st_mode & (S_IWGRP | S_IWOTH)) && (last || !(st.st_mode & S_ISVTX))) return 0;
        if (!path[0] || strcmp(path, "/") == 0) return 1;
        char *slash = strrchr(path, '/');
        *slash = 0;  /* "/a/b" -> "/a" -> "" (the root) */
    }
}

static int trusted_socket(const char *socket_path) {
    char given[PATH_MAX], resolved[PATH_MAX];
    if (strlen(socket_path) >= sizeof given || socket_path[0] != '/') return 0;
    strcpy(given, socket_path);
    *strrchr(given, '/') = 0;
    if (!trusted_chain(given[0] ? given : "/")) return 0;
    if (!realpath(socket_path, resolved)) return 0;
    struct stat st;
    if (lstat(resolved, &st) != 0 || !S_ISSOCK(st.st_mode) || !trusted_uid(st.st_uid)) return 0;
    *strrchr(resolved, '/') = 0;
    return trusted_chain(resolved[0] ? resolved : "/");
}

static int trusted_peer(int fd) {
    struct ucred cred;
    socklen_t len = sizeof cred;
    return getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 && trusted_uid(cred.uid);
}

/* The daemon speaks first: MAGIC, version, its build id. Only this build's daemon may run our call. */
static int greeting_ok(int fd, double deadline) {
    char header[sizeof MAGIC];
    struct buffer build = {0};
    if (recv_exact(fd, header, sizeof MAGIC, deadline) || memcmp(header, MAGIC, sizeof MAGIC - 1) != 0 ||
        (unsigned char)header[sizeof MAGIC - 1] != PROTOCOL_VERSION)
        return 0;
    int ok = recv_field(fd, &build, MAX_NAME, deadline) == 0 && build.len == strlen(BERTH_BUILD_ID) &&
             memcmp(build.data, BERTH_BUILD_ID, build.len) == 0;
    free(build.data);
    return ok;
}

static double reply_timeout(void) {
    const char *text = getenv("BERTH_CNI_REPLY_TIMEOUT");
    double value = text && *text ? strtod(text, NULL) : 0;
    return value > 0 && value <= 3600 ? value : 60;
}

static int try_again(const char *message) {
    printf("{\"cniVersion\": \"1.1.0\", \"code\": %d, \"msg\": \"%s\", \"details\": \"the runtime's DEL or "
           "retry cleans up anything it left\"}", TRY_AGAIN_LATER, message);
    return 1;
}

static void set_timeout(int fd, int seconds) {
    struct timeval tv = {seconds, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

static void write_all(int fd, const char *data, size_t len) {
    while (len) {
        ssize_t n = write(fd, data, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return;
        data += n;
        len -= (size_t)n;
    }
}

int main(int argc, char **argv) {
    const char *plugin = plugin_name(argv[0]);
    const char *command = getenv("CNI_COMMAND");
    const char *daemon = getenv("BERTH_CNI_DAEMON");
    if (argc == 1 && command && strcmp(command, "VERSION") == 0) {
        fputs(BERTH_VERSION_REPLY, stdout);
        return 0;
    }
    if (argc > 1 || !command || !*command || (daemon && strcmp(daemon, "off") == 0))
        fall_back(plugin, argv, NULL);

    const char *socket_path = getenv("BERTH_CNI_SOCKET");
    if (!socket_path || !*socket_path) socket_path = BERTH_DEFAULT_SOCKET;
    struct sockaddr_un address = {.sun_family = AF_UNIX};
    if (strlen(socket_path) >= sizeof address.sun_path || !trusted_socket(socket_path))
        fall_back(plugin, argv, NULL);
    strcpy(address.sun_path, socket_path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0) set_timeout(fd, 1);
    if (fd < 0 || connect(fd, (struct sockaddr *)&address, sizeof address) != 0)
        fall_back(plugin, argv, NULL);  /* no daemon: stdin is still unread */
    double accept_by = now() + 2;
    if (!trusted_peer(fd) || !greeting_ok(fd, accept_by)) {
        close(fd);
        fall_back(plugin, argv, NULL);  /* someone else's listener, or another build: never send it the call */
    }

    struct buffer in = {0}, request = {0}, env = {0};
    char chunk[65536];
    for (;;) {
        ssize_t n = read(0, chunk, sizeof chunk);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        append(&in, chunk, (size_t)n);
        if (in.len > MAX_STDIN) break;  /* over the cap: run in process, which refuses it with code 6 */
    }
    append(&in, "", 0);
    for (char **e = environ; *e; e++) append(&env, *e, strlen(*e) + 1);
    append(&env, "", 0);
    if (in.len > MAX_STDIN || env.len > MAX_ENV) {
        close(fd);
        fall_back(plugin, argv, &in);
    }
    append(&request, MAGIC, strlen(MAGIC));
    unsigned char version = PROTOCOL_VERSION;
    append(&request, &version, 1);
    append_field(&request, BERTH_BUILD_ID, strlen(BERTH_BUILD_ID));
    append_field(&request, plugin, strlen(plugin));
    append_field(&request, env.data, env.len);
    append_field(&request, in.data, in.len);

    set_timeout(fd, 2);
    char status = 0;
    if (send(fd, request.data, request.len, MSG_NOSIGNAL) != (ssize_t)request.len ||
        recv_exact(fd, &status, 1, accept_by) || status != 'A') {
        close(fd);
        fall_back(plugin, argv, &in);  /* not accepted: nothing ran in the daemon */
    }
    double reply_by = now() + reply_timeout();
    struct buffer code = {0}, out = {0}, err = {0};
    int rc = recv_field(fd, &code, 4, reply_by);
    if (!rc && code.len != 4) rc = -1;
    if (!rc) rc = recv_field(fd, &out, MAX_OUTPUT, reply_by);
    if (!rc) rc = recv_field(fd, &err, MAX_OUTPUT, reply_by);
    if (rc) {
        close(fd);
        if (rc == -2) return try_again("the Berth CNI daemon did not answer in time; try again later");
        if (strcmp(command, "ADD") != 0) fall_back(plugin, argv, &in);
        return try_again("the Berth CNI daemon stopped during ADD; try again");
    }
    write_all(1, out.data, out.len);
    write_all(2, err.data, err.len);
    unsigned char *c = (unsigned char *)code.data;
    return (int)(((uint32_t)c[0] << 24) | ((uint32_t)c[1] << 16) | ((uint32_t)c[2] << 8) | c[3]);
}
