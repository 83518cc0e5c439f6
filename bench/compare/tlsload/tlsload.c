/*
 * tlsload: new TLS connections per second through an HTTP proxy, made
 * with OpenSSL, the TLS library of the plugin runtime's clients (Python
 * 2.7 and 3, curl). Each connection: CONNECT ORIGIN through PROXY (or
 * TCP straight to ORIGIN when PROXY is "-"), a full TLS handshake
 * (no session cache, no tickets) verifying the chain against CAFILE,
 * one GET PATH that must be answered 200, close_notify, close.
 *
 * WORKERS processes make connections one after the other, as that many
 * single-threaded plugin processes would (one process with threads
 * would measure OpenSSL 3.0's lock contention, which they do not have).
 *
 * usage: tlsload PROXY ORIGIN CAFILE PATH WORKERS SECONDS
 * prints: "<connections> <seconds> <cpu seconds of the workers>"
 *
 * Built by bench/run.sh (cc tlsload.c -lssl -lcrypto); run by
 * bench/compare's interception measure.
 */
#define _GNU_SOURCE /* strcasestr */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *proxy, *origin, *path;
static SSL_CTX *ctx;

static void die(const char *what) {
	fprintf(stderr, "tlsload: %s\n", what);
	ERR_print_errors_fp(stderr);
	exit(1);
}

static int dial(const char *hostport) {
	char host[64];
	const char *colon = strrchr(hostport, ':');
	if (!colon || colon - hostport >= (long)sizeof host) die("address is not HOST:PORT");
	memcpy(host, hostport, colon - hostport);
	host[colon - hostport] = 0;
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(colon + 1))};
	if (inet_pton(AF_INET, host, &a.sin_addr) != 1) die("address is not an IPv4 literal");
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0) die("socket");
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	/* Every read and write is bounded: a proxy that stops answering
	 * fails the run instead of holding it. */
	struct timeval tv = {10, 0};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
	if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) die("connect");
	return fd;
}

/* head reads until the end of an HTTP head; returns its length, the bytes
 * read in *got. */
static int head(int fd, SSL *s, char *buf, int cap, int *got) {
	*got = 0;
	for (;;) {
		int n = s ? SSL_read(s, buf + *got, cap - 1 - *got) : (int)read(fd, buf + *got, cap - 1 - *got);
		if (n <= 0) die("read: connection ended before the head did");
		*got += n;
		buf[*got] = 0;
		char *e = strstr(buf, "\r\n\r\n");
		if (e) return (int)(e - buf) + 4;
		if (*got >= cap - 1) die("head too long");
	}
}

static void one(void) {
	char buf[4096];
	int got;
	int fd;
	if (strcmp(proxy, "-") == 0) {
		fd = dial(origin);
	} else {
		fd = dial(proxy);
		int n = snprintf(buf, sizeof buf, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", origin, origin);
		if (n < 0 || n >= (int)sizeof buf) die("CONNECT too long");
		if (write(fd, buf, n) != n) die("write CONNECT");
		int h = head(fd, NULL, buf, sizeof buf, &got);
		if (strncmp(buf, "HTTP/1.1 200", 12) != 0 && strncmp(buf, "HTTP/1.0 200", 12) != 0) die("CONNECT not answered 200");
		if (got != h) die("bytes after the CONNECT's answer");
	}
	SSL *s = SSL_new(ctx);
	SSL_set_fd(s, fd);
	if (SSL_connect(s) != 1) die("TLS handshake");
	if (SSL_get_verify_result(s) != X509_V_OK) die("certificate not verified");
	int n = snprintf(buf, sizeof buf, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", path, origin);
	if (n < 0 || n >= (int)sizeof buf) die("GET too long");
	if (SSL_write(s, buf, n) != n) die("write GET");
	int h = head(fd, s, buf, sizeof buf, &got);
	if (strncmp(buf, "HTTP/1.1 200", 12) != 0) die("GET not answered 200");
	char *cl = strcasestr(buf, "\r\ncontent-length:");
	if (!cl || cl >= buf + h - 2) die("answer without Content-Length"); /* in the head, not the body */
	long want = strtol(cl + 17, NULL, 10);
	for (long have = got - h; have < want;) {
		int r = SSL_read(s, buf, sizeof buf);
		if (r <= 0) die("read body");
		have += r;
	}
	SSL_shutdown(s);
	SSL_free(s);
	close(fd);
}

static double now(void) {
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
	if (argc != 7) {
		fprintf(stderr, "usage: tlsload PROXY ORIGIN CAFILE PATH WORKERS SECONDS\n");
		return 2;
	}
	proxy = argv[1], origin = argv[2], path = argv[4];
	int workers = atoi(argv[5]);
	double secs = atof(argv[6]);
	ctx = SSL_CTX_new(TLS_client_method());
	if (!ctx || SSL_CTX_load_verify_locations(ctx, argv[3], NULL) != 1) die("CA file");
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
	const unsigned char alpn[] = "\x08http/1.1";
	SSL_CTX_set_alpn_protos(ctx, alpn, sizeof alpn - 1);
	if (workers < 1 || workers > 256) die("workers: 1 to 256");
	int fds[2];
	if (pipe(fds) != 0) die("pipe");
	double start = now();
	for (int i = 0; i < workers; i++) {
		pid_t pid = fork();
		if (pid < 0) die("fork");
		if (pid == 0) {
			long n = 0;
			while (now() - start < secs) {
				one();
				n++;
			}
			if (write(fds[1], &n, sizeof n) != sizeof n) die("write count");
			_exit(0);
		}
	}
	close(fds[1]);
	long done = 0, n;
	while (read(fds[0], &n, sizeof n) == sizeof n) done += n;
	int status, failed = 0;
	while (wait(&status) > 0) failed |= !WIFEXITED(status) || WEXITSTATUS(status) != 0;
	if (failed) die("a worker failed");
	double el = now() - start;
	struct rusage ru;
	getrusage(RUSAGE_CHILDREN, &ru);
	printf("%ld %.3f %.3f\n", done, el,
	       ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6);
	return 0;
}
