/*
 * The guest agent's PID 1 side: the session listener and the control channel
 * (docs/agent-protocol.md). Everything here is nonblocking and driven by PID
 * 1's poll loop; each accepted session runs in a forked child (session.c), so
 * a slow or hostile peer can never stall reaping or the workload's output.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "auth.h"
#include "kiln-init.h"

#define CTL_BACKOFF_MIN_MS 50
#define CTL_BACKOFF_MAX_MS 1000
#define EXIT_SEND_MS 1000
#define CTL_CHALLENGE_MS 5000   /* a peer that accepts but never challenges is dropped */

struct agent_cfg agent_cfg = { .port = 10240 };

static int listen_fd = -1;
static int ctl_fd = -1;
#define CTL_IN_MAX 256             /* the host sends a challenge (~80 bytes) and bodiless TIME frames */
static unsigned char ctl_in[5 + CTL_IN_MAX];   /* a frame the host is sending us, so far */
static size_t ctl_in_len;
/* CONNECTED: waiting for the host's challenge; READY: hello sent. */
static enum { CTL_OFF, CTL_IDLE, CTL_CONNECTING, CTL_CONNECTED, CTL_READY } ctl_state = CTL_OFF;
static long long ctl_next_ms;      /* CLOCK_MONOTONIC time of the next attempt */
static int ctl_backoff_ms = CTL_BACKOFF_MIN_MS;
static unsigned ctl_connects;
/* Session children write a clone's new identity here (op identity); PID 1 reads it. */
static int id_pipe[2] = { -1, -1 };

/* ----------------------------------------------------------- wire helpers */

int write_all(int fd, const void *buf, size_t n)
{
	const char *p = buf;

	while (n > 0) {
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);

		if (w < 0 && errno == ENOTSOCK)
			w = write(fd, p, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN) {
				struct pollfd pf = { fd, POLLOUT, 0 };

				poll(&pf, 1, 1000);
				continue;
			}
			return -1;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

int send_frame(int fd, int type, const void *payload, size_t n)
{
	unsigned char h[5] = { n >> 24, n >> 16, n >> 8, n, (unsigned char)type };
	struct iovec iov[2] = { { h, 5 }, { (void *)payload, n } };
	struct msghdr mh = { .msg_iov = iov, .msg_iovlen = n ? 2 : 1 };
	ssize_t w;

	if (n > FRAME_MAX)
		return -1;
	/* One syscall for small frames; write_all() picks up any remainder. */
	do
		w = sendmsg(fd, &mh, MSG_NOSIGNAL);
	while (w < 0 && errno == EINTR);
	if (w < 0) {
		if (errno != EAGAIN)
			return -1;
		w = 0;
	}
	if ((size_t)w < 5)
		return write_all(fd, h + w, 5 - (size_t)w) || write_all(fd, payload, n) ? -1 : 0;
	return write_all(fd, (const char *)payload + (w - 5), n - (size_t)(w - 5));
}

int send_json(int fd, const char *fmt, ...)
{
	char buf[8192];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(buf))
		return -1;
	return send_frame(fd, F_JSON, buf, (size_t)n);
}

void json_escape(char *out, size_t cap, const char *in)
{
	size_t o = 0;

	for (; *in && o + 7 < cap; in++) {
		unsigned char c = (unsigned char)*in;

		if (c == '"' || c == '\\') {
			out[o++] = '\\';
			out[o++] = (char)c;
		} else if (c < 0x20 || c == 0x7f) {
			o += (size_t)snprintf(out + o, cap - o, "\\u%04x", c);
		} else {
			out[o++] = (char)c;
		}
	}
	out[o] = 0;
}

/* ------------------------------------------------------------- listener */

static int vsock_socket(int nonblock)
{
	return socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC | (nonblock ? SOCK_NONBLOCK : 0), 0);
}

int agent_listen(void)
{
	int one = 1, fd;

	if (!agent_cfg.token)
		return -1;
	if (agent_cfg.vsock_port) {
		struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY,
					 .svm_port = (unsigned)agent_cfg.vsock_port };

		fd = vsock_socket(1);
		if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(fd, 64) != 0) {
			report("agent", errno, "vsock listen on port %lu", agent_cfg.vsock_port);
			goto fail;
		}
	} else {
		struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((unsigned short)agent_cfg.port),
					 .sin_addr.s_addr = htonl(INADDR_ANY) };

		fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
		if (fd >= 0)
			setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(fd, 64) != 0) {
			report("agent", errno, "tcp listen on port %lu", agent_cfg.port);
			goto fail;
		}
	}
	listen_fd = fd;
	if (pipe2(id_pipe, O_CLOEXEC | O_NONBLOCK) != 0)
		id_pipe[0] = id_pipe[1] = -1;
	if ((agent_cfg.host || agent_cfg.vsock_port) && ctl_state == CTL_OFF)
		ctl_state = CTL_IDLE;
	return fd;
fail:
	if (fd >= 0)
		close(fd);
	/* Still push, so the host hears why sessions are impossible. */
	if ((agent_cfg.host || agent_cfg.vsock_port) && ctl_state == CTL_OFF)
		ctl_state = CTL_IDLE;
	return -1;
}

void agent_accept(void)
{
	for (;;) {
		int c = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
		pid_t pid;

		if (c < 0)
			return;   /* EAGAIN, or a connection that died in the backlog */
		pid = fork();
		if (pid == 0) {
			close(listen_fd);
			if (id_pipe[0] >= 0)
				close(id_pipe[0]);
			if (ctl_fd >= 0)
				close(ctl_fd);
			session_run(c);
		}
		if (pid < 0)
			report("agent", errno, "fork session");
		close(c);
	}
}

/* ------------------------------------------------------ control channel */

static int ctl_sockaddr(struct sockaddr_storage *ss, socklen_t *len)
{
	memset(ss, 0, sizeof(*ss));
	if (agent_cfg.vsock_port) {
		struct sockaddr_vm *a = (struct sockaddr_vm *)ss;

		a->svm_family = AF_VSOCK;
		a->svm_cid = VMADDR_CID_HOST;
		a->svm_port = (unsigned)agent_cfg.vsock_port;
		*len = sizeof(*a);
		return 0;
	} else {
		struct sockaddr_in *a = (struct sockaddr_in *)ss;
		char host[64];
		const char *colon = strrchr(agent_cfg.host, ':');
		unsigned long port;

		if (!colon || (size_t)(colon - agent_cfg.host) >= sizeof(host) || parse_num(colon + 1, &port) || port > 65535)
			return -1;
		memcpy(host, agent_cfg.host, (size_t)(colon - agent_cfg.host));
		host[colon - agent_cfg.host] = 0;
		a->sin_family = AF_INET;
		a->sin_port = htons((unsigned short)port);
		*len = sizeof(*a);
		return inet_pton(AF_INET, host, &a->sin_addr) == 1 ? 0 : -1;
	}
}

static void ctl_drop(void)
{
	if (ctl_fd >= 0)
		close(ctl_fd);
	ctl_fd = -1;
	ctl_in_len = 0;
	ctl_state = CTL_IDLE;
	ctl_next_ms = now_ms(CLOCK_MONOTONIC) + ctl_backoff_ms;
	ctl_backoff_ms = ctl_backoff_ms * 2 > CTL_BACKOFF_MAX_MS ? CTL_BACKOFF_MAX_MS : ctl_backoff_ms * 2;
}

static void ctl_start(void)
{
	struct sockaddr_storage ss;
	socklen_t len;
	int one = 1;

	if (ctl_sockaddr(&ss, &len) != 0) {
		report("agent", EINVAL, "bad agent_host");
		ctl_state = CTL_OFF;
		return;
	}
	ctl_fd = agent_cfg.vsock_port ? vsock_socket(1) : socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (ctl_fd < 0) {
		ctl_drop();
		return;
	}
	if (!agent_cfg.vsock_port)
		setsockopt(ctl_fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	ctl_connects++;
	ctl_next_ms = now_ms(CLOCK_MONOTONIC) + CTL_CHALLENGE_MS;
	if (connect(ctl_fd, (struct sockaddr *)&ss, len) == 0)
		ctl_state = CTL_CONNECTED;
	else if (errno == EINPROGRESS)
		ctl_state = CTL_CONNECTING;
	else
		ctl_drop();
}

/*
 * The hello answers the host's challenge (docs/agent-protocol.md, "Control channel"): a proof
 * of the token over both nonces, and the token's SHA-256 to say which VM we are. A listener
 * that is not kilnd learns neither the token nor anything that opens a session.
 */
static int ctl_hello(const unsigned char *hn)
{
	unsigned char gn[AUTH_NONCE_BYTES], mac[32], id[32];
	char gn_hex[65], mac_hex[65], id_hex[65];
	struct sha256 sh;
	struct hmac m;

	auth_nonce(gn, hn, AUTH_NONCE_BYTES);
	hmac_init(&m, agent_cfg.token, strlen(agent_cfg.token));
	hmac_update(&m, AUTH_LABEL_HELLO, sizeof(AUTH_LABEL_HELLO));
	hmac_update(&m, hn, AUTH_NONCE_BYTES);
	hmac_update(&m, gn, AUTH_NONCE_BYTES);
	hmac_final(&m, mac);
	sha256_init(&sh);
	sha256_update(&sh, agent_cfg.token, strlen(agent_cfg.token));
	sha256_final(&sh, id);
	hex_encode(gn_hex, gn, sizeof(gn));
	hex_encode(mac_hex, mac, sizeof(mac));
	hex_encode(id_hex, id, sizeof(id));
	return send_json(ctl_fd,
		"{\"type\":\"hello\",\"proto\":%d,\"agent\":\"%s\",\"key_id\":\"%s\",\"nonce\":\"%s\",\"proof\":\"%s\",\"ip\":\"%s\","
		"\"session_port\":%lu,\"vsock_port\":%lu,\"pid\":%d,\"connects\":%u,"
		"\"boot\":{\"init_ms\":%lld,\"net_ms\":%lld,\"root_ms\":%lld,\"listener_ms\":%lld,\"workload_ms\":%lld},"
		"\"uptime_ms\":%lld,\"realtime_us\":%lld}",
		KILN_AGENT_PROTO, KILN_AGENT_VERSION, id_hex, gn_hex, mac_hex, net_ip,
		listen_fd >= 0 && !agent_cfg.vsock_port ? agent_cfg.port : 0, agent_cfg.vsock_port,
		(int)workload, ctl_connects,
		boot_times.init, boot_times.net, boot_times.root, boot_times.listener, boot_times.workload,
		now_ms(CLOCK_BOOTTIME), now_us(CLOCK_REALTIME));
}

/* Advances the control channel's state machine as far as it goes without waiting. */
static void ctl_step(void)
{
	if (ctl_state == CTL_CONNECTED && now_ms(CLOCK_MONOTONIC) >= ctl_next_ms)
		ctl_drop();
	if (ctl_state == CTL_IDLE && now_ms(CLOCK_MONOTONIC) >= ctl_next_ms)
		ctl_start();
}

static void ctl_challenged(const unsigned char *body, size_t n)
{
	unsigned char hn[AUTH_NONCE_BYTES];
	char kv[CTL_IN_MAX + 1];
	const char *nonce = NULL;
	unsigned long proto = 0;

	memcpy(kv, body, n);
	kv[n] = 0;
	for (char *p = kv; p < kv + n; p += strlen(p) + 1) {
		if (!strncmp(p, "proto=", 6) && parse_num(p + 6, &proto))
			proto = 0;
		if (!strncmp(p, "nonce=", 6))
			nonce = p + 6;
	}
	if (proto != KILN_AGENT_PROTO || !nonce || hex_decode(hn, sizeof(hn), nonce) != 0) {
		report("agent", EPROTO, "control channel: bad challenge (host protocol %lu, ours %d)", proto, KILN_AGENT_PROTO);
		ctl_drop();
		return;
	}
	if (ctl_hello(hn) != 0) {
		ctl_drop();
	} else {
		ctl_state = CTL_READY;
		ctl_backoff_ms = CTL_BACKOFF_MIN_MS;
	}
}

/*
 * Opens the control connection as soon as the network is up, while the root is still being
 * mounted: at ready only the hello is left to send (no ARP, no handshake on that path).
 */
void agent_preconnect(void)
{
	if (!agent_cfg.token || !(agent_cfg.host || agent_cfg.vsock_port) || ctl_state != CTL_OFF)
		return;
	ctl_state = CTL_IDLE;
	ctl_start();
}

/* At ready: say hello now if the pre-opened connection is up, before anything else is done. */
void agent_push_now(void)
{
	if (ctl_state == CTL_CONNECTING) {
		struct pollfd p = { ctl_fd, POLLOUT, 0 };

		if (poll(&p, 1, 0) == 1)
			agent_poll_done(&p, 1);   /* → CONNECTED, or dropped on error */
	}
	if (ctl_state == CTL_CONNECTED) {
		struct pollfd p = { ctl_fd, POLLIN, 0 };

		if (poll(&p, 1, 0) == 1)
			agent_poll_done(&p, 1);   /* the challenge, usually here already → hello */
		/* Pre-connected while the root was mounting: the wait for the challenge starts now. */
		if (ctl_state == CTL_CONNECTED)
			ctl_next_ms = now_ms(CLOCK_MONOTONIC) + CTL_CHALLENGE_MS;
		return;
	}
	ctl_step();
}

int agent_identity_fd(void)
{
	return id_pipe[1];
}

/*
 * A restored clone's identity, from a session child: the new token authenticates sessions
 * (forked from us afterwards) and the hello, the env applies to later execs. The control
 * connection the template had is dead (its host side belonged to the template), so it is
 * dropped and re-established at once: the new hello is the clone's readiness push.
 */
static void identity_input(void)
{
	static char rec[4097];
	char *env[64];
	size_t ne = 0;
	ssize_t r = read(id_pipe[0], rec, sizeof(rec) - 1);
	char *token = NULL;

	if (r <= 0)
		return;
	rec[r] = 0;
	for (char *p = rec; p < rec + r; p += strlen(p) + 1) {
		if (!strncmp(p, "token=", 6))
			token = p + 6;
		else if (!strncmp(p, "env=", 4) && ne < sizeof(env) / sizeof(env[0]))
			env[ne++] = p + 4;
	}
	if (!token || !*token)
		return;
	/* Strings stay referenced by PID 1's config for good: copy them out of the buffer. */
	agent_cfg.token = strdup(token);
	for (size_t i = 0; i < ne; i++)
		env[i] = strdup(env[i]);
	workload_env_merge(env, ne);
	if (ctl_state == CTL_OFF)
		return;
	if (ctl_fd >= 0)
		close(ctl_fd);
	ctl_fd = -1;
	ctl_in_len = 0;
	ctl_state = CTL_IDLE;
	ctl_backoff_ms = CTL_BACKOFF_MIN_MS;
	ctl_next_ms = 0;
	ctl_step();
}

int agent_pollfds(struct pollfd *p, int max, int *timeout_ms)
{
	int n = 0;

	ctl_step();
	if (listen_fd >= 0 && n < max)
		p[n++] = (struct pollfd){ listen_fd, POLLIN, 0 };
	if (id_pipe[0] >= 0 && n < max)
		p[n++] = (struct pollfd){ id_pipe[0], POLLIN, 0 };
	if (ctl_state == CTL_IDLE || ctl_state == CTL_CONNECTED) {
		long long wait = ctl_next_ms - now_ms(CLOCK_MONOTONIC);

		if (wait < 0)
			wait = 0;
		if (*timeout_ms < 0 || wait < *timeout_ms)
			*timeout_ms = (int)wait;
	}
	if ((ctl_state == CTL_CONNECTING || ctl_state == CTL_CONNECTED || ctl_state == CTL_READY) && n < max)
		p[n++] = (struct pollfd){ ctl_fd, ctl_state == CTL_CONNECTING ? POLLOUT : POLLIN, 0 };
	return n;
}

/*
 * What the host sends on the control channel: a challenge first (answered by the hello), then
 * bodiless TIME frames, answered at once by PID 1 itself (no connect, no fork), so the round
 * trip the host measures is short and symmetric and maps "ready" onto the host's clock
 * tightly. Any other frame is ignored; one too large for a challenge drops the connection.
 */
static void ctl_input(const char *buf, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		size_t len;

		ctl_in[ctl_in_len++] = (unsigned char)buf[i];
		if (ctl_in_len < 5)
			continue;
		len = (size_t)ctl_in[0] << 24 | (size_t)ctl_in[1] << 16 | (size_t)ctl_in[2] << 8 | ctl_in[3];
		if (len > CTL_IN_MAX) {
			ctl_drop();
			return;
		}
		if (ctl_in_len < 5 + len)
			continue;
		ctl_in_len = 0;
		if (ctl_in[4] == F_CHALLENGE && ctl_state == CTL_CONNECTED) {
			ctl_challenged(ctl_in + 5, len);
			if (ctl_state != CTL_READY)
				return;
		} else if (ctl_in[4] == F_TIME && !len && ctl_state == CTL_READY) {
			send_json(ctl_fd, "{\"type\":\"time\",\"realtime_us\":%lld,\"boottime_us\":%lld,\"ready_boottime_us\":%lld}",
				  now_us(CLOCK_REALTIME), now_us(CLOCK_BOOTTIME), boot_times.ready_us);
		}
	}
}

void agent_poll_done(struct pollfd *p, int n)
{
	for (int i = 0; i < n; i++) {
		if (!p[i].revents)
			continue;
		if (p[i].fd == listen_fd) {
			agent_accept();
		} else if (p[i].fd == id_pipe[0]) {
			identity_input();
		} else if (p[i].fd == ctl_fd && ctl_state == CTL_CONNECTING) {
			int err = 0;
			socklen_t len = sizeof(err);

			getsockopt(ctl_fd, SOL_SOCKET, SO_ERROR, &err, &len);
			if (err) {
				ctl_drop();
			} else {
				ctl_state = CTL_CONNECTED;   /* the host's challenge comes next */
				ctl_next_ms = now_ms(CLOCK_MONOTONIC) + CTL_CHALLENGE_MS;
			}
		} else if (p[i].fd == ctl_fd) {
			char buf[512];
			ssize_t r = recv(ctl_fd, buf, sizeof(buf), MSG_DONTWAIT);

			if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR))
				ctl_drop();
			else if (r > 0)
				ctl_input(buf, (size_t)r);
		}
	}
}

/* Bounded by EXIT_SEND_MS in total: the VM powers off right after. */
void agent_send_exit(int status)
{
	long long deadline = now_ms(CLOCK_MONOTONIC) + EXIT_SEND_MS;
	struct pollfd pf;

	if (ctl_state == CTL_OFF)
		return;
	while (ctl_state != CTL_READY && ctl_state != CTL_OFF) {
		long long left = deadline - now_ms(CLOCK_MONOTONIC);

		if (left <= 0)
			break;
		if (ctl_state == CTL_IDLE)
			ctl_next_ms = 0;
		ctl_step();
		if (ctl_state == CTL_CONNECTING || ctl_state == CTL_CONNECTED) {
			pf = (struct pollfd){ ctl_fd, ctl_state == CTL_CONNECTING ? POLLOUT : POLLIN, 0 };
			if (poll(&pf, 1, (int)left) <= 0)
				break;
			agent_poll_done(&pf, 1);
		} else if (ctl_state == CTL_IDLE) {
			struct timespec nap = { 0, 20 * 1000000 };

			nanosleep(&nap, NULL);
		}
	}
	if (ctl_state != CTL_READY)
		return;
	if (WIFSIGNALED(status))
		send_json(ctl_fd, "{\"type\":\"exit\",\"signal\":%d,\"uptime_ms\":%lld}", WTERMSIG(status), now_ms(CLOCK_BOOTTIME));
	else
		send_json(ctl_fd, "{\"type\":\"exit\",\"code\":%d,\"uptime_ms\":%lld}", WEXITSTATUS(status), now_ms(CLOCK_BOOTTIME));
	/* The host closes once it has the message; wait for that (or the deadline)
	 * so poweroff does not drop it from our send queue. */
	shutdown(ctl_fd, SHUT_WR);
	pf = (struct pollfd){ ctl_fd, POLLIN, 0 };
	for (;;) {
		long long left = deadline - now_ms(CLOCK_MONOTONIC);
		char buf[256];

		if (left <= 0 || poll(&pf, 1, (int)left) <= 0 || recv(ctl_fd, buf, sizeof(buf), MSG_DONTWAIT) <= 0)
			break;
	}
	close(ctl_fd);
	ctl_fd = -1;
	ctl_state = CTL_OFF;
}
