/* A static probe for the isolation tests, run inside FROM-scratch containers.
 *
 *   probe tcp HOST PORT TIMEOUT_MS  prints open | refused | timeout | unreachable | error:N
 *                                   and exits 0 whatever the answer (a crash is never "closed")
 *   probe serve PORT                answers every HTTP request with "probe-ok\n", forever
 *   probe hog                       allocates and touches memory until killed
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int tcp(const char *host, int port, int timeout_ms) {
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)port);
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1) {
        fprintf(stderr, "probe: %s is not an IPv4 address\n", host);
        return 2;
    }
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (s < 0) { printf("error:%d\n", errno); return 0; }
    fcntl(s, F_SETFL, O_NONBLOCK);
    int err = 0;
    if (connect(s, (struct sockaddr *)&a, sizeof a) < 0) {
        if (errno != EINPROGRESS) {
            err = errno;
        } else {
            struct pollfd p = {.fd = s, .events = POLLOUT};
            int n = poll(&p, 1, timeout_ms);
            if (n == 0) {
                err = ETIMEDOUT;
            } else if (n < 0) {
                err = errno;
            } else {
                socklen_t len = sizeof err;
                getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &len);
            }
        }
    }
    close(s);
    if (err == 0) puts("open");
    else if (err == ECONNREFUSED) puts("refused");
    else if (err == ETIMEDOUT) puts("timeout");
    else if (err == ENETUNREACH || err == EHOSTUNREACH) puts("unreachable");
    else printf("error:%d\n", err);
    return 0;
}

static int serve(int port) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)port);
    a.sin_addr.s_addr = htonl(INADDR_ANY);
    if (bind(s, (struct sockaddr *)&a, sizeof a) < 0 || listen(s, 16) < 0) {
        perror("probe: bind/listen");
        return 1;
    }
    printf("serving on %d\n", port);
    fflush(stdout);
    static const char reply[] =
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 9\r\n\r\nprobe-ok\n";
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c < 0) continue;
        char buf[2048];
        struct pollfd p = {.fd = c, .events = POLLIN};
        if (poll(&p, 1, 2000) > 0) (void)read(c, buf, sizeof buf);
        (void)write(c, reply, sizeof reply - 1);
        close(c);
    }
}

static volatile char *keep[1 << 16];

static int hog(void) {
    for (unsigned i = 0;; i = (i + 1) % (1 << 16)) {
        volatile char *p = malloc(1 << 20);
        if (p == NULL) continue;
        for (int j = 0; j < (1 << 20); j += 4096) p[j] = 1; /* touch every page */
        keep[i] = p;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 5 && strcmp(argv[1], "tcp") == 0)
        return tcp(argv[2], atoi(argv[3]), atoi(argv[4]));
    if (argc == 3 && strcmp(argv[1], "serve") == 0) return serve(atoi(argv[2]));
    if (argc == 2 && strcmp(argv[1], "hog") == 0) return hog();
    fprintf(stderr, "usage: probe tcp HOST PORT TIMEOUT_MS | probe serve PORT | probe hog\n");
    return 2;
}
