/* See net.h. */
#include "base/net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdbool.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* One port the kernel picks for 127.0.0.1, released again. */
static int one_port(cv_error *err)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return cv_errorf(err, "socket: %s", strerror(errno));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    int rc = bind(fd, (struct sockaddr *)&a, sizeof a) < 0 ||
                     getsockname(fd, (struct sockaddr *)&a, &len) < 0
                 ? cv_errorf(err, "binding a loopback port: %s", strerror(errno))
                 : ntohs(a.sin_port);
    close(fd);
    return rc;
}

int cv_free_loopback_ports(int *ports, int n, cv_error *err)
{
    for (int i = 0; i < n; i++) {
        bool again;
        do {
            if ((ports[i] = one_port(err)) < 0) return -1;
            again = false;
            for (int j = 0; j < i; j++)
                again |= ports[j] == ports[i];
        } while (again);
    }
    return 0;
}
