/* UDP datagrams to 127.0.0.1 as fast as the kernel takes them (sendmmsg batches), or at a fixed rate.
 * usage: blast COUNT RATE PORT   (RATE 0: full speed).  bench/packet_path.py compiles and runs it. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define BATCH 64

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s COUNT RATE PORT\n", argv[0]);
        return 2;
    }
    long count = atol(argv[1]);
    double rate = atof(argv[2]);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[3]))};
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    char payload[32];
    memset(payload, 'x', sizeof payload);
    struct iovec iov = {.iov_base = payload, .iov_len = sizeof payload};
    struct mmsghdr msgs[BATCH];
    for (int i = 0; i < BATCH; i++) {
        memset(&msgs[i], 0, sizeof msgs[i]);
        msgs[i].msg_hdr.msg_name = &to;
        msgs[i].msg_hdr.msg_namelen = sizeof to;
        msgs[i].msg_hdr.msg_iov = &iov;
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    double start = now();
    long sent = 0;
    while (sent < count) {
        int n = count - sent < BATCH ? (int)(count - sent) : BATCH;
        if (rate > 0) {
            n = n < 8 ? n : 8; /* small steps keep a fixed rate even */
            double due = start + sent / rate;
            while (now() < due) {
            }
        }
        int done = sendmmsg(fd, msgs, n, 0);
        if (done > 0)
            sent += done;
    }
    double took = now() - start;
    printf("%ld %.0f\n", sent, took > 0 ? sent / took : 0.0);
    return 0;
}
