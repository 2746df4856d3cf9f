/*
 * One agent session, in a child forked from PID 1 (docs/agent-protocol.md).
 * The first frame authenticates and names the operation; the connection
 * carries that one operation and is closed. Blocking I/O is fine here: only
 * this session waits on its peer.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <linux/random.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include "auth.h"
#include "kiln-init.h"

#define AUTH_TIMEOUT_MS 5000
#define IO_CHUNK (64 * 1024)
#define MAX_ARGS 4096
#define STDIN_HOLD (2 * FRAME_MAX)

static int conn;
static unsigned char frame[FRAME_MAX + 1];   /* +1: payloads are NUL-terminated for parsing */

struct request {
	const char *op, *cwd, *path;
	const char *hostname, *new_token, *entropy;   /* identity */
	unsigned long long realtime_us;
	int has_realtime;
	char *argv[MAX_ARGS + 1];
	char *env[MAX_ARGS + 1];
	size_t argc, envc;
	unsigned long proto, uid, gid, mode, timeout_ms, grace_ms;
	int has_uid, has_gid, has_mode, has_grace, mkdirs;
};

static void __attribute__((noreturn)) finish(void)
{
	shutdown(conn, SHUT_WR);
	close(conn);
	_exit(0);
}

static void __attribute__((noreturn)) fail(const char *code, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void __attribute__((noreturn)) fail(const char *code, int err, const char *fmt, ...)
{
	char msg[512], esc[1100];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	json_escape(esc, sizeof(esc), msg);
	send_json(conn, "{\"type\":\"error\",\"code\":\"%s\",\"errno\":%d,\"message\":\"%s\"}", code, err, esc);
	finish();
}

static int read_full(int fd, void *buf, size_t n)
{
	char *p = buf;

	while (n > 0) {
		ssize_t r = read(fd, p, n);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		p += r;
		n -= (size_t)r;
	}
	return 0;
}

/* -1: connection closed, broken or oversized frame (the session ends). */
static long read_frame(int *type)
{
	unsigned char h[5];
	uint32_t len;

	if (read_full(conn, h, 5) != 0)
		return -1;
	len = (uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 | (uint32_t)h[2] << 8 | h[3];
	if (len > FRAME_MAX)
		return -1;
	if (read_full(conn, frame, len) != 0)
		return -1;
	frame[len] = 0;
	*type = h[4];
	return (long)len;
}

/* `buf` must outlive the request: later frames reuse the frame buffer. */
static void parse_request(struct request *rq, char *buf, long len)
{
	char *p = buf, *end = buf + len, *next;

	memset(rq, 0, sizeof(*rq));
	for (; p < end; p = next) {
		char *v = strchr(p, '=');
		unsigned long *num = NULL;

		next = p + strlen(p) + 1;
		if (!*p)
			continue;
		if (!v)
			fail("bad_request", EINVAL, "entry without '='");
		*v++ = 0;
		if (!strcmp(p, "op"))
			rq->op = v;
		else if (!strcmp(p, "proto"))
			num = &rq->proto;
		else if (!strcmp(p, "argv") && rq->argc < MAX_ARGS)
			rq->argv[rq->argc++] = v;
		else if (!strcmp(p, "argv"))
			fail("bad_request", E2BIG, "too many arguments");
		else if (!strcmp(p, "env") && rq->envc < MAX_ARGS)
			rq->env[rq->envc++] = v;
		else if (!strcmp(p, "env"))
			fail("bad_request", E2BIG, "too many environment entries");
		else if (!strcmp(p, "cwd"))
			rq->cwd = v;
		else if (!strcmp(p, "path"))
			rq->path = v;
		else if (!strcmp(p, "uid"))
			num = &rq->uid, rq->has_uid = 1;
		else if (!strcmp(p, "gid"))
			num = &rq->gid, rq->has_gid = 1;
		else if (!strcmp(p, "mode"))
			num = &rq->mode, rq->has_mode = 1;
		else if (!strcmp(p, "timeout_ms"))
			num = &rq->timeout_ms;
		else if (!strcmp(p, "grace_ms"))
			num = &rq->grace_ms, rq->has_grace = 1;
		else if (!strcmp(p, "mkdirs"))
			rq->mkdirs = !strcmp(v, "1");
		else if (!strcmp(p, "hostname"))
			rq->hostname = v;
		else if (!strcmp(p, "new_token"))
			rq->new_token = v;
		else if (!strcmp(p, "entropy"))
			rq->entropy = v;
		else if (!strcmp(p, "realtime_us")) {
			char *end;

			errno = 0;
			rq->realtime_us = strtoull(v, &end, 10);
			if (errno || *end || end == v)
				fail("bad_request", EINVAL, "bad number for realtime_us");
			rq->has_realtime = 1;
		}
		if (num && parse_num(v, num))
			fail("bad_request", EINVAL, "bad number for %s", p);
	}
}

/* ----------------------------------------------------------------- exec */

struct outpipe {
	int fd, type;
};

static void pump_out(struct outpipe *o, int all)
{
	static char buf[IO_CHUNK];
	int avail = 0;

	/* After the process exits, take only what is already in the pipe: a
	 * background child may hold it open and keep writing forever. */
	if (all && ioctl(o->fd, FIONREAD, &avail) != 0)
		avail = 0;
	do {
		ssize_t r = read(o->fd, buf, all && avail < IO_CHUNK ? (size_t)(avail ? avail : 1) : sizeof(buf));

		if (r < 0 && (errno == EAGAIN || errno == EINTR))
			return;
		if (r <= 0) {
			close(o->fd);
			o->fd = -1;
			return;
		}
		if (send_frame(conn, o->type, buf, (size_t)r) != 0)
			_exit(1);
		avail -= (int)r;
	} while (all && avail > 0);
}

static void __attribute__((noreturn)) exec_child(struct request *rq, char **env, int in, int out, int err, int status_w)
{
	sigset_t none;
	int e;

	setsid();
	dup2(in, 0);
	dup2(out, 1);
	dup2(err, 2);
	for (int sig = 1; sig < NSIG; sig++)
		signal(sig, SIG_DFL);
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	if (chdir(rq->cwd) != 0)
		goto fail;
	if ((rq->uid || rq->gid) && setgroups(0, NULL) != 0)
		goto fail;
	if (rq->gid && setgid((gid_t)rq->gid) != 0)
		goto fail;
	if (rq->uid && setuid((uid_t)rq->uid) != 0)
		goto fail;
	exec_search(rq->argv, env);
fail:
	e = errno;
	write_all(status_w, &e, sizeof(e));
	_exit(127);
}

static char **merged_env(struct request *rq)
{
	char **base = workload_env();
	size_t nb = 0, n = 0;
	char **out;

	while (base[nb])
		nb++;
	out = calloc(nb + rq->envc + 1, sizeof(char *));
	if (!out)
		fail("io", ENOMEM, "out of memory");
	/* The request's entries win over the workload's. */
	for (size_t i = 0; i < rq->envc; i++)
		out[n++] = rq->env[i];
	for (size_t i = 0; i < nb; i++) {
		size_t klen = strcspn(base[i], "=");
		int shadowed = 0;

		for (size_t j = 0; j < rq->envc && !shadowed; j++)
			shadowed = !strncmp(rq->env[j], base[i], klen) && rq->env[j][klen] == '=';
		if (!shadowed)
			out[n++] = base[i];
	}
	out[n] = NULL;
	return out;
}

static void __attribute__((noreturn)) op_exec(struct request *rq)
{
	int in[2], out[2], err[2], st[2], e = 0, status = 0, timed_out = 0, exited = 0;
	int pidfd, tfd = -1;
	pid_t pid;
	struct outpipe o1, o2;
	static char inbuf[STDIN_HOLD];
	size_t in_len = 0, in_off = 0;
	int in_eof = 0, conn_open = 1;
	const char *wcwd;
	unsigned long wuid, wgid;
	char **env;

	if (rq->argc == 0)
		fail("bad_request", EINVAL, "exec without argv");
	rq->argv[rq->argc] = NULL;
	workload_identity(&wcwd, &wuid, &wgid);
	if (!rq->cwd)
		rq->cwd = wcwd;
	if (!rq->has_uid)
		rq->uid = wuid;
	if (!rq->has_gid)
		rq->gid = wgid;
	env = merged_env(rq);
	if (pipe2(in, O_CLOEXEC) || pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC) || pipe2(st, O_CLOEXEC))
		fail("io", errno, "pipe");
	pid = fork();
	if (pid < 0)
		fail("io", errno, "fork");
	if (pid == 0)
		exec_child(rq, env, in[0], out[1], err[1], st[1]);
	close(in[0]);
	close(out[1]);
	close(err[1]);
	close(st[1]);
	/* The status pipe closes on a successful exec (CLOEXEC) or carries errno. */
	if (read_full(st[0], &e, sizeof(e)) == 0) {
		waitpid(pid, NULL, 0);
		fail("exec_failed", e, "%s: %s", rq->argv[0], strerror(e));
	}
	close(st[0]);
	send_json(conn, "{\"type\":\"started\",\"pid\":%d}", (int)pid);

	fcntl(in[1], F_SETFL, O_NONBLOCK);
	fcntl(out[0], F_SETFL, O_NONBLOCK);
	fcntl(err[0], F_SETFL, O_NONBLOCK);
	o1 = (struct outpipe){ out[0], F_STDOUT };
	o2 = (struct outpipe){ err[0], F_STDERR };
	pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	if (rq->timeout_ms) {
		struct itimerspec it = { .it_value = { (time_t)(rq->timeout_ms / 1000), (long)(rq->timeout_ms % 1000) * 1000000 } };

		tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
		if (tfd >= 0)
			timerfd_settime(tfd, 0, &it, NULL);
	}

	while (!exited) {
		struct pollfd p[6];
		int np = 0, ic = -1, i1 = -1, i2 = -1, ip = -1, it = -1;

		if (conn_open && in_len - in_off <= STDIN_HOLD - FRAME_MAX - 5)
			ic = np, p[np++] = (struct pollfd){ conn, POLLIN, 0 };
		if (in[1] >= 0 && in_len > in_off)
			p[np++] = (struct pollfd){ in[1], POLLOUT, 0 };
		if (o1.fd >= 0)
			i1 = np, p[np++] = (struct pollfd){ o1.fd, POLLIN, 0 };
		if (o2.fd >= 0)
			i2 = np, p[np++] = (struct pollfd){ o2.fd, POLLIN, 0 };
		if (pidfd >= 0)
			ip = np, p[np++] = (struct pollfd){ pidfd, POLLIN, 0 };
		if (tfd >= 0)
			it = np, p[np++] = (struct pollfd){ tfd, POLLIN, 0 };
		if (poll(p, np, pidfd >= 0 ? -1 : 20) < 0 && errno != EINTR)
			break;

		if (i1 >= 0 && p[i1].revents)
			pump_out(&o1, 0);
		if (i2 >= 0 && p[i2].revents)
			pump_out(&o2, 0);
		if (ic >= 0 && p[ic].revents) {
			int type;
			long n = read_frame(&type);

			if (n < 0) {
				/* The host went away: nobody wants this process any more. */
				conn_open = 0;
				kill(-pid, SIGKILL);
				kill(pid, SIGKILL);
			} else if (type == F_STDIN && in[1] >= 0) {
				if (in_off == in_len)
					in_off = in_len = 0;
				if (in_off > 0 && in_len + (size_t)n > sizeof(inbuf)) {
					memmove(inbuf, inbuf + in_off, in_len - in_off);
					in_len -= in_off;
					in_off = 0;
				}
				memcpy(inbuf + in_len, frame, (size_t)n);
				in_len += (size_t)n;
			} else if (type == F_EOF) {
				in_eof = 1;
			} else if (type == F_SIGNAL) {
				unsigned long sig = 0;

				if (!strncmp((char *)frame, "signal=", 7) && !parse_num((char *)frame + 7, &sig) && sig > 0 && sig < NSIG)
					if (kill(-pid, (int)sig) != 0)
						kill(pid, (int)sig);
			}
		}
		if (in[1] >= 0 && in_len > in_off) {
			ssize_t w = write(in[1], inbuf + in_off, in_len - in_off);

			if (w > 0)
				in_off += (size_t)w;
			else if (w < 0 && errno != EAGAIN && errno != EINTR) {
				/* The process closed its stdin: drop the rest. */
				close(in[1]);
				in[1] = -1;
				in_off = in_len = 0;
			}
		}
		if (in[1] >= 0 && in_eof && in_off == in_len) {
			close(in[1]);
			in[1] = -1;
		}
		if (it >= 0 && p[it].revents) {
			uint64_t ticks;

			if (read(tfd, &ticks, sizeof(ticks)) > 0) {
				timed_out = 1;
				kill(-pid, SIGKILL);
				kill(pid, SIGKILL);
			}
		}
		if ((ip >= 0 && p[ip].revents) || pidfd < 0) {
			if (waitpid(pid, &status, WNOHANG) == pid)
				exited = 1;
		}
	}
	if (o1.fd >= 0)
		pump_out(&o1, 1);
	if (o2.fd >= 0)
		pump_out(&o2, 1);
	if (!conn_open)
		_exit(0);
	if (WIFSIGNALED(status))
		send_json(conn, "{\"type\":\"exit\",\"signal\":%d,\"timed_out\":%s}", WTERMSIG(status), timed_out ? "true" : "false");
	else
		send_json(conn, "{\"type\":\"exit\",\"code\":%d,\"timed_out\":%s}", WEXITSTATUS(status), timed_out ? "true" : "false");
	finish();
}

/* ------------------------------------------------------------ put / get */

static int mkdir_p(char *dir)
{
	for (char *s = dir + 1; *s; s++) {
		if (*s != '/')
			continue;
		*s = 0;
		if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
			*s = '/';
			return -1;
		}
		*s = '/';
	}
	return mkdir(dir, 0755) != 0 && errno != EEXIST ? -1 : 0;
}

static void __attribute__((noreturn)) op_put(struct request *rq)
{
	char dir[4096], tmp[4200];
	unsigned long long total = 0;
	int fd, dfd;

	if (!rq->path || rq->path[0] != '/' || strlen(rq->path) >= sizeof(dir))
		fail("bad_request", EINVAL, "put needs an absolute path");
	snprintf(dir, sizeof(dir), "%s", rq->path);
	*strrchr(dir, '/') = 0;
	if (!dir[0])
		strcpy(dir, "/");
	if (rq->mkdirs && mkdir_p(dir) != 0)
		fail("io", errno, "mkdir %s", dir);
	snprintf(tmp, sizeof(tmp), "%s/.kiln-put.%d", strcmp(dir, "/") ? dir : "", (int)getpid());
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0)
		fail(errno == ENOENT ? "not_found" : "io", errno, "create %s", tmp);
	send_json(conn, "{\"type\":\"ready\"}");
	for (;;) {
		int type;
		long n = read_frame(&type);

		if (n < 0 || (type != F_DATA && type != F_EOF)) {
			unlink(tmp);
			if (n < 0)
				_exit(0);
			fail("bad_request", EPROTO, "unexpected frame during put");
		}
		if (type == F_EOF)
			break;
		if (write_all(fd, frame, (size_t)n) != 0) {
			int e = errno;

			unlink(tmp);
			fail("io", e, "write %s", rq->path);
		}
		total += (unsigned long long)n;
	}
	if (fchmod(fd, rq->has_mode ? (mode_t)(rq->mode & 07777) : 0644) != 0 ||
	    ((rq->has_uid || rq->has_gid) && fchown(fd, rq->has_uid ? (uid_t)rq->uid : (uid_t)-1,
						      rq->has_gid ? (gid_t)rq->gid : (gid_t)-1) != 0) ||
	    fsync(fd) != 0 || close(fd) != 0 || rename(tmp, rq->path) != 0) {
		int e = errno;

		unlink(tmp);
		fail("io", e, "finish %s", rq->path);
	}
	dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd >= 0) {
		fsync(dfd);
		close(dfd);
	}
	send_json(conn, "{\"type\":\"done\",\"bytes\":%llu}", total);
	finish();
}

static void __attribute__((noreturn)) op_get(struct request *rq)
{
	static char buf[IO_CHUNK];
	unsigned long long total = 0;
	struct stat sb;
	int fd;

	if (!rq->path || rq->path[0] != '/')
		fail("bad_request", EINVAL, "get needs an absolute path");
	fd = open(rq->path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		fail(errno == ENOENT ? "not_found" : "io", errno, "open %s", rq->path);
	if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode))
		fail("bad_request", EISDIR, "%s is not a regular file", rq->path);
	send_json(conn, "{\"type\":\"file\",\"size\":%lld,\"mode\":%u}", (long long)sb.st_size, (unsigned)(sb.st_mode & 07777));
	for (;;) {
		ssize_t r = read(fd, buf, sizeof(buf));

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			fail("io", errno, "read %s", rq->path);
		if (r == 0)
			break;
		if (send_frame(conn, F_DATA, buf, (size_t)r) != 0)
			_exit(0);
		total += (unsigned long long)r;
	}
	send_json(conn, "{\"type\":\"done\",\"bytes\":%llu}", total);
	finish();
}

/* ---------------------------------------------------- status, time, logs */

static long long meminfo_kb(const char *text, const char *key)
{
	const char *p = strstr(text, key);

	return p ? atoll(p + strlen(key)) : -1;
}

static void __attribute__((noreturn)) op_status(void)
{
	char load[128] = "", mem[4096] = "";
	double l1 = 0, l5 = 0, l15 = 0;
	int fd;
	ssize_t n;

	if ((fd = open("/proc/loadavg", O_RDONLY | O_CLOEXEC)) >= 0) {
		n = read(fd, load, sizeof(load) - 1);
		load[n > 0 ? n : 0] = 0;
		close(fd);
		sscanf(load, "%lf %lf %lf", &l1, &l5, &l15);
	}
	if ((fd = open("/proc/meminfo", O_RDONLY | O_CLOEXEC)) >= 0) {
		n = read(fd, mem, sizeof(mem) - 1);
		mem[n > 0 ? n : 0] = 0;
		close(fd);
	}
	send_json(conn,
		"{\"type\":\"status\",\"agent\":\"%s\",\"proto\":%d,\"uptime_ms\":%lld,\"ip\":\"%s\","
		"\"workload\":{\"pid\":%d,\"running\":%s},\"load\":[%.2f,%.2f,%.2f],"
		"\"mem\":{\"total_kb\":%lld,\"available_kb\":%lld}}",
		KILN_AGENT_VERSION, KILN_AGENT_PROTO, now_ms(CLOCK_BOOTTIME), net_ip,
		(int)workload, workload > 0 ? "true" : "false", l1, l5, l15,
		meminfo_kb(mem, "MemTotal:"), meminfo_kb(mem, "MemAvailable:"));
	finish();
}

static ssize_t read_small(const char *path, char *buf, size_t cap)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return -1;
	n = read(fd, buf, cap - 1);
	close(fd);
	buf[n > 0 ? n : 0] = 0;
	return n;
}

/*
 * Counters, not rates: the host takes two samples and divides. CPU times are in
 * clock ticks (`clk_tck` per second); the workload's are its own plus those of
 * its reaped children (/proc/<pid>/stat fields 14-17), its memory the resident set.
 */
static void __attribute__((noreturn)) op_stats(void)
{
	char stat[1024] = "", mem[4096] = "", path[64], pstat[1024] = "", statm[256] = "";
	unsigned long long c[8] = { 0 }, ut = 0, st = 0, cut = 0, cst = 0, rss_pages = 0;
	long page_kb = sysconf(_SC_PAGESIZE) / 1024;
	int running = 0;

	if (read_small("/proc/stat", stat, sizeof(stat)) > 0)
		sscanf(stat, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &c[0], &c[1], &c[2], &c[3], &c[4], &c[5], &c[6], &c[7]);
	read_small("/proc/meminfo", mem, sizeof(mem));
	if (workload > 0) {
		snprintf(path, sizeof(path), "/proc/%d/stat", (int)workload);
		if (read_small(path, pstat, sizeof(pstat)) > 0) {
			/* The command name may hold spaces and parens: fields restart after the last ')'. */
			char *p = strrchr(pstat, ')');

			if (p && sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %llu %llu", &ut, &st, &cut, &cst) == 4)
				running = 1;
		}
		snprintf(path, sizeof(path), "/proc/%d/statm", (int)workload);
		if (read_small(path, statm, sizeof(statm)) > 0)
			sscanf(statm, "%*u %llu", &rss_pages);
	}
	send_json(conn,
		"{\"type\":\"stats\",\"uptime_ms\":%lld,\"clk_tck\":%ld,\"ncpu\":%ld,"
		"\"cpu\":{\"user\":%llu,\"nice\":%llu,\"system\":%llu,\"idle\":%llu,\"iowait\":%llu,"
		"\"irq\":%llu,\"softirq\":%llu,\"steal\":%llu},"
		"\"mem\":{\"total_kb\":%lld,\"available_kb\":%lld,\"free_kb\":%lld},"
		"\"workload\":{\"pid\":%d,\"running\":%s,\"utime\":%llu,\"stime\":%llu,\"rss_kb\":%llu}}",
		now_ms(CLOCK_BOOTTIME), sysconf(_SC_CLK_TCK), sysconf(_SC_NPROCESSORS_ONLN),
		c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7],
		meminfo_kb(mem, "MemTotal:"), meminfo_kb(mem, "MemAvailable:"), meminfo_kb(mem, "MemFree:"),
		running ? (int)workload : 0, running ? "true" : "false", ut + cut, st + cst, rss_pages * (unsigned long long)page_kb);
	finish();
}

static void __attribute__((noreturn)) op_time(void)
{
	/* ready_boottime_us lets the host place "guest ready" on its own clock (bench/readiness). */
	send_json(conn, "{\"type\":\"time\",\"realtime_us\":%lld,\"boottime_us\":%lld,\"ready_boottime_us\":%lld}",
		  now_us(CLOCK_REALTIME), now_us(CLOCK_BOOTTIME), boot_times.ready_us);
	finish();
}

static void __attribute__((noreturn)) op_logs(void)
{
	unsigned long long have = log_total < LOG_RING ? log_total : LOG_RING;
	size_t start = (size_t)((log_total - have) % LOG_RING);
	size_t first = have < LOG_RING - start ? (size_t)have : LOG_RING - start;

	send_json(conn, "{\"type\":\"logs\",\"total\":%llu,\"bytes\":%llu}", log_total, have);
	if ((first && send_frame(conn, F_DATA, log_ring + start, first) != 0) ||
	    (have > first && send_frame(conn, F_DATA, log_ring, (size_t)have - first) != 0))
		_exit(0);
	send_json(conn, "{\"type\":\"done\",\"bytes\":%llu}", have);
	finish();
}

static void __attribute__((noreturn)) op_shutdown(struct request *rq)
{
	union sigval v = { .sival_int = (int)(rq->has_grace ? rq->grace_ms : stop_grace_default) };

	/* PID 1 takes a queued SIGTERM as "@kiln:stop grace_ms=<value>". Under systemd
	 * (classic VMs) SIGTERM would make it re-execute itself; it powers off on SIGRTMIN+4.
	 * PID 1 may get through the stop and its kill(-1, SIGTERM) before this child is scheduled
	 * again: ignore that SIGTERM so "done" still goes out (SIGKILL follows a second later). */
	signal(SIGTERM, SIG_IGN);
	if (agent_only ? kill(1, agent_shutdown_signal) != 0 : sigqueue(1, SIGTERM, v) != 0)
		fail("io", errno, "signal init");
	send_json(conn, "{\"type\":\"done\"}");
	finish();
}


/* ------------------------------------------------------------- identity */

static int hexval(char c)
{
	return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* Mixes host-provided random bytes into the guest's pool, credited, and forces a CRNG
 * reseed: a restored clone would otherwise replay its template's random stream. */
static int reseed_rng(const char *hex, int *reseeded)
{
	size_t n = strlen(hex) / 2;
	struct { int entropy_count, buf_size; unsigned char buf[512]; } info;
	int fd, rc = 0;

	*reseeded = 0;
	if (strlen(hex) % 2 || n == 0 || n > sizeof(info.buf))
		return EINVAL;
	for (size_t i = 0; i < n; i++) {
		int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);

		if (hi < 0 || lo < 0)
			return EINVAL;
		info.buf[i] = (unsigned char)(hi << 4 | lo);
	}
	info.entropy_count = (int)(n * 8);
	info.buf_size = (int)n;
	fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return errno;
	if (ioctl(fd, RNDADDENTROPY, &info) != 0)
		rc = errno;
	else if (ioctl(fd, RNDRESEEDCRNG) == 0)
		*reseeded = 1;
	/* Older kernels lack RNDRESEEDCRNG; a credited RNDADDENTROPY still reseeds once the pool fills. */
	close(fd);
	explicit_bzero(&info, sizeof(info));
	return rc;
}

/* Drops every neighbour entry (SIOCDARP each row of /proc/net/arp): the clone's
 * gateway and peers may answer from other MACs than the template's did. */
static int flush_arp(void)
{
	FILE *f = fopen("/proc/net/arp", "re");
	char line[256];
	int s, count = 0;

	if (!f)
		return -1;
	s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (!fgets(line, sizeof(line), f))   /* header */
		line[0] = 0;
	while (s >= 0 && fgets(line, sizeof(line), f)) {
		char ipstr[64], hw[64], mask[64], dev[IFNAMSIZ];
		unsigned type, flags;
		struct arpreq r;
		struct sockaddr_in *sin = (struct sockaddr_in *)&r.arp_pa;

		if (sscanf(line, "%63s 0x%x 0x%x %63s %63s %15s", ipstr, &type, &flags, hw, mask, dev) != 6)
			continue;
		memset(&r, 0, sizeof(r));
		sin->sin_family = AF_INET;
		if (inet_pton(AF_INET, ipstr, &sin->sin_addr) != 1)
			continue;
		snprintf(r.arp_dev, sizeof(r.arp_dev), "%s", dev);
		if (ioctl(s, SIOCDARP, &r) == 0)
			count++;
	}
	if (s >= 0)
		close(s);
	fclose(f);
	return count;
}

/*
 * A restored clone becomes itself: new hostname, clock, RNG state and ARP cache here (they
 * are global to the guest), and a new agent token and env for PID 1, which it takes over
 * its identity pipe and then re-handshakes on the control channel with the new token.
 */
static void __attribute__((noreturn)) op_identity(struct request *rq)
{
	static char rec[4096];
	size_t len = 0;
	int reseeded = 0, err, flushed;

	if (!rq->new_token || !*rq->new_token || !rq->entropy || !rq->has_realtime)
		fail("bad_request", EINVAL, "identity needs new_token, entropy and realtime_us");
	if (rq->hostname && sethostname(rq->hostname, strlen(rq->hostname)) != 0)
		fail("io", errno, "sethostname");
	err = reseed_rng(rq->entropy, &reseeded);
	if (err)
		fail(err == EINVAL ? "bad_request" : "io", err, "reseed the RNG");
	{
		struct timespec ts = { (time_t)(rq->realtime_us / 1000000), (long)(rq->realtime_us % 1000000) * 1000 };

		if (clock_settime(CLOCK_REALTIME, &ts) != 0)
			fail("io", errno, "set the clock");
	}
	flushed = flush_arp();
	len += (size_t)snprintf(rec + len, sizeof(rec) - len, "token=%s", rq->new_token) + 1;
	for (size_t i = 0; i < rq->envc; i++) {
		size_t n = strlen(rq->env[i]) + 5;

		if (len + n > sizeof(rec) || !strchr(rq->env[i], '='))
			fail("bad_request", E2BIG, "identity env too large or malformed");
		len += (size_t)snprintf(rec + len, sizeof(rec) - len, "env=%s", rq->env[i]) + 1;
	}
	/* ≤ PIPE_BUF: one atomic write PID 1 reads whole. */
	if (agent_identity_fd() < 0 || write(agent_identity_fd(), rec, len) != (ssize_t)len)
		fail("io", errno, "hand the identity to init");
	send_json(conn, "{\"type\":\"identity\",\"reseeded\":%s,\"arp_flushed\":%d,\"realtime_us\":%lld}",
		  reseeded ? "true" : "false", flushed, now_us(CLOCK_REALTIME));
	finish();
}

/* ------------------------------------------------------- authentication */

static void proof(unsigned char out[32], const char *label, const unsigned char *hn, const unsigned char *gn,
		  const void *body, size_t n)
{
	struct hmac m;

	hmac_init(&m, agent_cfg.token, strlen(agent_cfg.token));
	hmac_update(&m, label, strlen(label) + 1);
	hmac_update(&m, hn, AUTH_NONCE_BYTES);
	hmac_update(&m, gn, AUTH_NONCE_BYTES);
	hmac_update(&m, body, n);
	hmac_final(&m, out);
}

/*
 * The challenge-response that opens every session (docs/agent-protocol.md, "Authentication"):
 * the host's nonce comes first and carries nothing secret; we prove we hold this VM's token
 * over it and our own nonce; the open frame that follows must carry the host's proof over both
 * nonces and the request itself, so the token never crosses the wire and a recorded or altered
 * request is refused. Returns the open frame's length with the `mac=` entry cut off (the
 * request then starts at frame[0]).
 */
static long authenticate(int *type)
{
	unsigned char hn[AUTH_NONCE_BYTES], gn[AUTH_NONCE_BYTES], mine[32], theirs[32];
	char gn_hex[2 * AUTH_NONCE_BYTES + 1], proof_hex[65];
	const char *nonce = NULL;
	unsigned long proto = 0;
	long n = read_frame(type);
	size_t head;

	if (n < 0)
		_exit(0);
	if (*type == F_OPEN)
		fail("bad_proto", EPROTO, "protocol 1 not supported (agent speaks %d: challenge first)", KILN_AGENT_PROTO);
	if (*type != F_CHALLENGE)
		fail("bad_request", EPROTO, "the first frame must be 'c'");
	for (char *p = (char *)frame; p < (char *)frame + n; p += strlen(p) + 1) {
		if (!strncmp(p, "proto=", 6) && parse_num(p + 6, &proto))
			fail("bad_request", EINVAL, "bad proto");
		if (!strncmp(p, "nonce=", 6))
			nonce = p + 6;
	}
	if (proto != KILN_AGENT_PROTO)
		fail("bad_proto", EPROTO, "protocol %lu not supported (agent speaks %d)", proto, KILN_AGENT_PROTO);
	if (!nonce || hex_decode(hn, sizeof(hn), nonce) != 0)
		fail("bad_request", EINVAL, "challenge needs a %d-byte hex nonce", AUTH_NONCE_BYTES);
	auth_nonce(gn, hn, sizeof(hn));
	proof(mine, AUTH_LABEL_GUEST, hn, gn, "", 0);
	hex_encode(gn_hex, gn, sizeof(gn));
	hex_encode(proof_hex, mine, sizeof(mine));
	if (send_json(conn, "{\"type\":\"challenge\",\"proto\":%d,\"nonce\":\"%s\",\"proof\":\"%s\"}",
		      KILN_AGENT_PROTO, gn_hex, proof_hex) != 0)
		_exit(0);
	n = read_frame(type);
	if (n < 0)
		_exit(0);
	head = strlen("mac=") + 64 + 1;
	if (*type != F_OPEN || (size_t)n < head || strncmp((char *)frame, "mac=", 4) || frame[head - 1] != 0)
		fail("bad_token", EACCES, "authentication failed");
	frame[head - 1] = 0;
	if (hex_decode(theirs, sizeof(theirs), (char *)frame + 4) != 0)
		fail("bad_token", EACCES, "authentication failed");
	proof(mine, AUTH_LABEL_HOST, hn, gn, frame + head, (size_t)n - head);
	if (!ct_equal(mine, theirs, sizeof(mine)))
		fail("bad_token", EACCES, "authentication failed");
	memmove(frame, frame + head, (size_t)n - head + 1);
	return n - (long)head;
}

void session_run(int fd)
{
	struct request *rq = calloc(1, sizeof(*rq));
	struct timeval tv = { AUTH_TIMEOUT_MS / 1000, 0 }, none = { 0, 0 };
	sigset_t all;
	int type, null;
	long n;

	conn = fd;
	/* Our stdout is the console: a session must never write there. */
	null = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (null >= 0) {
		dup2(null, 0);
		dup2(null, 1);
		dup2(null, 2);
	}
	signal(SIGPIPE, SIG_IGN);
	sigemptyset(&all);
	sigprocmask(SIG_SETMASK, &all, NULL);
	signal(SIGTERM, SIG_DFL);
	if (!rq)
		_exit(1);
	setsockopt(conn, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	n = authenticate(&type);
	setsockopt(conn, SOL_SOCKET, SO_RCVTIMEO, &none, sizeof(none));
	{
		char *copy = malloc((size_t)n + 1);

		if (!copy)
			fail("io", ENOMEM, "out of memory");
		memcpy(copy, frame, (size_t)n + 1);
		parse_request(rq, copy, n);
	}
	if (rq->proto != KILN_AGENT_PROTO)
		fail("bad_proto", EPROTO, "protocol %lu not supported (agent speaks %d)", rq->proto, KILN_AGENT_PROTO);
	if (!rq->op)
		fail("bad_request", EINVAL, "no op");
	if (!strcmp(rq->op, "exec"))
		op_exec(rq);
	if (!strcmp(rq->op, "put"))
		op_put(rq);
	if (!strcmp(rq->op, "get"))
		op_get(rq);
	if (!strcmp(rq->op, "status"))
		op_status();
	if (!strcmp(rq->op, "time"))
		op_time();
	if (!strcmp(rq->op, "stats"))
		op_stats();
	if (!strcmp(rq->op, "logs"))
		op_logs();
	if (!strcmp(rq->op, "shutdown"))
		op_shutdown(rq);
	if (!strcmp(rq->op, "identity"))
		op_identity(rq);
	fail("bad_request", ENOSYS, "unknown op");
}
