/* flooder.c -- a bounded UDP flood for tests and benchmarks (wgfast/lab/flood.py compiles it).
 *
 *   flooder SRC_IP DST_IP DST_PORT RATE SECONDS NSOCKS FILE
 *
 * Sends the datagrams of FILE (records of u16 length + bytes, little-endian) in turn, from
 * NSOCKS sockets bound to SRC_IP (one ephemeral port each), with sendmmsg, paced to RATE per
 * second for SECONDS (or until SIGTERM), and never more than RATE * SECONDS in all.  Prints
 * the count sent and the seconds it took. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64

static volatile sig_atomic_t stop;
static void on_term(int sig) { (void)sig; stop = 1; }

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    if (argc != 8) {
        fprintf(stderr, "usage: flooder SRC DST PORT RATE SECONDS NSOCKS FILE\n");
        return 2;
    }
    double rate = atof(argv[4]), secs = atof(argv[5]);
    int nsocks = atoi(argv[6]);
    FILE *f = fopen(argv[7], "rb");
    if (!f || rate <= 0 || secs <= 0 || nsocks < 1 || nsocks > 1024)
        return 2;
    static uint8_t msgs[4096][160];
    static uint16_t lens[4096];
    int nmsgs = 0;
    uint8_t hdr[2];
    while (nmsgs < 4096 && fread(hdr, 1, 2, f) == 2) {
        lens[nmsgs] = (uint16_t)(hdr[0] | hdr[1] << 8);
        if (lens[nmsgs] > 160 || fread(msgs[nmsgs], 1, lens[nmsgs], f) != lens[nmsgs])
            return 2;
        nmsgs++;
    }
    fclose(f);
    if (!nmsgs)
        return 2;
    struct sockaddr_in src = {.sin_family = AF_INET}, dst = {.sin_family = AF_INET};
    inet_pton(AF_INET, argv[1], &src.sin_addr);
    inet_pton(AF_INET, argv[2], &dst.sin_addr);
    dst.sin_port = htons((uint16_t)atoi(argv[3]));
    int *fds = calloc(nsocks, sizeof(int));
    for (int i = 0; i < nsocks; i++) {
        fds[i] = socket(AF_INET, SOCK_DGRAM, 0);
        int buf = 4 << 20;
        setsockopt(fds[i], SOL_SOCKET, SO_SNDBUF, &buf, sizeof(buf));
        if (fds[i] < 0 || bind(fds[i], (struct sockaddr *)&src, sizeof(src)) ||
            connect(fds[i], (struct sockaddr *)&dst, sizeof(dst)))
            return 3;
    }
    struct mmsghdr mm[BATCH];
    struct iovec iov[BATCH];
    uint64_t limit = (uint64_t)(rate * secs), sent = 0, k = 0;
    signal(SIGTERM, on_term);
    double t0 = now();
    int s = 0;
    while (sent < limit && !stop) {
        double t = now() - t0;
        if (t >= secs)
            break;
        uint64_t due = (uint64_t)(rate * t) + BATCH;
        if (sent >= due) {
            struct timespec ns = {0, 50000};
            nanosleep(&ns, NULL);
            continue;
        }
        int n = BATCH;
        if (limit - sent < (uint64_t)n)
            n = (int)(limit - sent);
        for (int i = 0; i < n; i++, k++) {
            iov[i].iov_base = msgs[k % nmsgs];
            iov[i].iov_len = lens[k % nmsgs];
            memset(&mm[i], 0, sizeof(mm[i]));
            mm[i].msg_hdr.msg_iov = &iov[i];
            mm[i].msg_hdr.msg_iovlen = 1;
        }
        int r = sendmmsg(fds[s], mm, n, MSG_DONTWAIT);
        s = (s + 1) % nsocks;
        if (r > 0)
            sent += (uint64_t)r;
    }
    printf("%llu %.3f\n", (unsigned long long)sent, now() - t0);
    return 0;
}
