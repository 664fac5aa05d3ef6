/* UDP datagrams to 127.0.0.1 as fast as the kernel takes them (sendmmsg batches), or at a fixed rate.
 * usage: blast COUNT RATE PORT [flows]   (RATE 0: full speed)
 * With "flows" every datagram goes to another (address, port) in 127.0.0.0/8, starting at PORT:
 * each is a new conntrack entry, as bench/flow_path.py needs (60,000 ports per address).
 * bench/packet_path.py compiles and runs it. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define BATCH 64
#define PORTS 60000

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* the i-th flow's destination: 127.0.A.B with the port running fastest */
static void flow_address(struct sockaddr_in *to, long i, int first_port) {
    long block = i / PORTS;
    to->sin_port = htons(first_port + i % PORTS);
    to->sin_addr.s_addr = htonl(0x7f000000 | ((1 + block / 250) << 8) | (1 + block % 250));
}

int main(int argc, char **argv) {
    if (argc != 4 && argc != 5) {
        fprintf(stderr, "usage: %s COUNT RATE PORT [flows]\n", argv[0]);
        return 2;
    }
    long count = atol(argv[1]);
    double rate = atof(argv[2]);
    int port = atoi(argv[3]);
    int flows = argc == 5 && strcmp(argv[4], "flows") == 0;
    struct sockaddr_in to[BATCH];
    for (int i = 0; i < BATCH; i++) {
        memset(&to[i], 0, sizeof to[i]);
        to[i].sin_family = AF_INET;
        to[i].sin_port = htons(port);
        to[i].sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    }
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    char payload[32];
    memset(payload, 'x', sizeof payload);
    struct iovec iov = {.iov_base = payload, .iov_len = flows ? 1 : sizeof payload};
    struct mmsghdr msgs[BATCH];
    for (int i = 0; i < BATCH; i++) {
        memset(&msgs[i], 0, sizeof msgs[i]);
        msgs[i].msg_hdr.msg_name = &to[i];
        msgs[i].msg_hdr.msg_namelen = sizeof to[i];
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
        if (flows)
            for (int i = 0; i < n; i++)
                flow_address(&to[i], sent + i, port);
        int done = sendmmsg(fd, msgs, n, 0);
        if (done > 0)
            sent += done;
        else if (flows) /* a refused datagram (no route, a full queue) still made its flow */
            sent += 1;
    }
    double took = now() - start;
    printf("%ld %.0f\n", sent, took > 0 ? sent / took : 0.0);
    return 0;
}
