/* The cheapest possible "server" for the DNS benchmark's ceiling: every datagram sent straight back with the QR
 * bit set, in recvmmsg/sendmmsg batches, no lookup at all. Its queries/s under the same dnsperf is what loopback
 * and the load generator allow on this machine; no real server can beat it. Not a DNS server: benchmark only. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define BATCH 64
#define SLOT 4096

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s PORT\n", argv[0]);
        return 2;
    }
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[1]))};
    inet_pton(AF_INET, "127.0.0.1", &address.sin_addr);
    if (fd < 0 || bind(fd, (struct sockaddr *)&address, sizeof address) != 0) {
        perror("udp_ceiling");
        return 1;
    }
    static char buffers[BATCH][SLOT];
    static struct sockaddr_in senders[BATCH];
    struct iovec iov[BATCH];
    struct mmsghdr messages[BATCH];
    for (;;) {
        for (int i = 0; i < BATCH; i++) {
            iov[i].iov_base = buffers[i];
            iov[i].iov_len = SLOT;
            memset(&messages[i].msg_hdr, 0, sizeof messages[i].msg_hdr);
            messages[i].msg_hdr.msg_iov = &iov[i];
            messages[i].msg_hdr.msg_iovlen = 1;
            messages[i].msg_hdr.msg_name = &senders[i];
            messages[i].msg_hdr.msg_namelen = sizeof senders[i];
        }
        int count = recvmmsg(fd, messages, BATCH, MSG_WAITFORONE, NULL);
        if (count <= 0)
            continue;
        for (int i = 0; i < count; i++) {
            if (messages[i].msg_len > 2)
                buffers[i][2] |= 0x80;
            iov[i].iov_len = messages[i].msg_len;
        }
        sendmmsg(fd, messages, (unsigned)count, 0);
    }
}
