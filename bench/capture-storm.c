// SPDX-License-Identifier: Apache-2.0
/*
 * Loopback connection storm for bench/capture.ts: connect, accept, close both ends, as fast as
 * one process can, against its own listener on 127.0.0.1. Bounded twice: it stops after
 * `seconds` or after `max` connections, whichever comes first, and prints how many it made.
 *
 *   capture-storm <seconds> <max-connections>
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	struct sockaddr_in addr = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(addr);
	double seconds, start, end;
	long max, made = 0;
	int lfd;

	if (argc != 3) {
		fprintf(stderr, "usage: %s <seconds> <max-connections>\n", argv[0]);
		return 2;
	}
	seconds = atof(argv[1]);
	max = atol(argv[2]);
	if (seconds <= 0 || seconds > 60 || max <= 0) {
		fprintf(stderr, "capture-storm: seconds must be in (0, 60], max > 0\n");
		return 2;
	}

	lfd = socket(AF_INET, SOCK_STREAM, 0);
	if (lfd < 0 || bind(lfd, (struct sockaddr *)&addr, sizeof(addr)) ||
	    listen(lfd, 1024) || getsockname(lfd, (struct sockaddr *)&addr, &len)) {
		perror("capture-storm: failed to listen");
		return 1;
	}

	start = now();
	end = start + seconds;
	while (made < max) {
		int c, a;

		/* the clock is read every 64 connections: cheap, and still bounded in time */
		if ((made & 63) == 0 && now() >= end)
			break;
		c = socket(AF_INET, SOCK_STREAM, 0);
		if (c < 0) {
			perror("capture-storm: failed to create socket");
			return 1;
		}
		if (connect(c, (struct sockaddr *)&addr, sizeof(addr))) {
			/* ephemeral ports used up (TIME-WAIT): stop early, the rate is still right */
			if (errno == EADDRNOTAVAIL) {
				fprintf(stderr, "capture-storm: out of ephemeral ports after %ld\n", made);
				close(c);
				break;
			}
			perror("capture-storm: failed to connect");
			return 1;
		}
		a = accept(lfd, NULL, NULL);
		if (a < 0) {
			perror("capture-storm: failed to accept");
			return 1;
		}
		close(c); /* client first: FIN-WAIT/TIME-WAIT on the client, LAST-ACK on the server */
		close(a);
		made++;
	}
	close(lfd);
	printf("%ld %.6f\n", made, now() - start);
	return 0;
}
