/* Loopback ports for programs that start servers (tests, benchmarks). */
#ifndef CV_BASE_NET_H
#define CV_BASE_NET_H

#include "base/error.h"

/* n distinct TCP ports on 127.0.0.1 that nothing was bound to when asked
 * (the kernel's picks; another process may still take one before the
 * caller binds it). Returns 0, or -1 with err naming the failed call. */
int cv_free_loopback_ports(int *ports, int n, cv_error *err);

#endif
