/*
 * Berth's native CNI launcher: the same job as cni_plugins/launcher.py, without an interpreter's start-up.
 *
 * A runtime execs a plugin for every container; the Python launcher alone costs the interpreter's bare start-up
 * (about 10 ms here, as much as the Go reference's whole ADD). This program forwards the call to the local CNI
 * daemon over the same wire format, and hands anything it cannot finish to the Python launcher, which runs the
 * plugin in process:
 *   - no daemon (connect fails): exec the Python launcher at once, stdin untouched;
 *   - daemon answers skew/busy, or does not accept in time: exec it with the stdin already read (via a memfd);
 *   - daemon dies after accepting: ADD reports "try again" (code 11), other commands (idempotent) fall back.
 * Built by `berth install-cni` with the system C compiler when there is one; it needs only libc.
 * BERTH_BUILD_ID, BERTH_FALLBACK_DIR and BERTH_VERSION_REPLY come from a header `berth install-cni` writes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#define MAGIC "BERTHCNI"
#define PROTOCOL_VERSION 1
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

static int recv_exact(int fd, void *out, size_t len) {
    char *p = out;
    while (len) {
        ssize_t n = recv(fd, p, len, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int recv_field(int fd, struct buffer *out) {
    unsigned char size[4];
    if (recv_exact(fd, size, 4)) return -1;
    size_t len = ((size_t)size[0] << 24) | ((size_t)size[1] << 16) | ((size_t)size[2] << 8) | size[3];
    out->len = 0;
    if (len) {
        append(out, "", 0);
        char *tmp = malloc(len);
        if (!tmp || recv_exact(fd, tmp, len)) { free(tmp); return -1; }
        append(out, tmp, len);
        free(tmp);
    }
    return 0;
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
    if (strlen(socket_path) >= sizeof address.sun_path) fall_back(plugin, argv, NULL);
    strcpy(address.sun_path, socket_path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0) set_timeout(fd, 1);
    if (fd < 0 || connect(fd, (struct sockaddr *)&address, sizeof address) != 0)
        fall_back(plugin, argv, NULL);  /* no daemon: stdin is still unread */

    struct buffer in = {0}, request = {0}, env = {0};
    char chunk[65536];
    for (;;) {
        ssize_t n = read(0, chunk, sizeof chunk);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        append(&in, chunk, (size_t)n);
    }
    append(&in, "", 0);
    for (char **e = environ; *e; e++) append(&env, *e, strlen(*e) + 1);
    append(&env, "", 0);
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
        recv_exact(fd, &status, 1) || status != 'A') {
        close(fd);
        fall_back(plugin, argv, &in);  /* not accepted: nothing ran in the daemon */
    }
    set_timeout(fd, 300);
    struct buffer code = {0}, out = {0}, err = {0};
    if (recv_field(fd, &code) || code.len != 4 || recv_field(fd, &out) || recv_field(fd, &err)) {
        close(fd);
        if (strcmp(command, "ADD") != 0) fall_back(plugin, argv, &in);
        fputs("{\"cniVersion\": \"1.1.0\", \"code\": 11, \"msg\": \"the Berth CNI daemon stopped during ADD; "
              "try again\", \"details\": \"the runtime's DEL or retry cleans up anything it left\"}", stdout);
        return 1;
    }
    write_all(1, out.data, out.len);
    write_all(2, err.data, err.len);
    unsigned char *c = (unsigned char *)code.data;
    return (int)(((uint32_t)c[0] << 24) | ((uint32_t)c[1] << 16) | ((uint32_t)c[2] << 8) | c[3]);
}
