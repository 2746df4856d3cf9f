/*
 * kiln-init: PID 1 of kiln microVM guests (DESIGN.md §3).
 *
 * Runs from the initramfs before any root exists: loads the modules the guest
 * needs, reads the config drive, mounts the image read-only under a writable
 * overlay, switches into it, runs the workload and reports on the console,
 * which is the only channel to the host.
 *
 * Console protocol. kiln-init owns every byte written to the console. Control
 * lines start with "@kiln:" followed by an event name and key=value pairs:
 *   boot, ready, exit, warn, error, poweroff    (guest -> host)
 *   stop grace_ms=<n>                           (host -> guest)
 * The workload's stdout and stderr are forwarded through pipes; any forwarded
 * line that would start with "@kiln:" gets a space in front so it cannot be
 * mistaken for a marker. With `stdio=tagged` (containers) every piece of output
 * is instead framed as its own console line, "@kiln:1 <text>" (stdout) or
 * "@kiln:2 <text>" (stderr), "1+"/"2+" when the piece did not end a line: the
 * host separates the workload's streams from kernel messages, and the workload
 * cannot forge a marker since its bytes never start a line.
 *
 * Config drive: "KILNCFG1\n" then NUL-terminated key=value strings, ending at
 * an empty string or end of data (at most 1 MiB).
 *
 * Build: gcc -static -Os -Wall -Wextra -Werror -o kiln-init kiln-init.c
 */
#define _GNU_SOURCE
#include "kiln-init.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define MARK "@kiln:"
#define MARK_LEN 6
#define CFG_MAGIC "KILNCFG1\n"
#define CFG_MAGIC_LEN 9
#define CFG_MAX (1 << 20)
#define IN_LINE_MAX 4096
#define DEVICE_WAIT_MS 5000
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

struct drive {
	int set;
	const char *serial;
	unsigned long index;
	char dev[64];           /* resolved name, e.g. "vdb" */
};

#define MAX_MOUNTS 16

struct extra_mount {
	struct drive drive;
	const char *target;
	int rw;
};

static struct {
	char **argv;
	char **env;
	const char *cwd;
	const char *hostname;
	const char *user;       /* "name|uid[:group|gid]", resolved in the new root */
	int tagged;             /* stdio=tagged */
	unsigned long uid, gid, grace_ms;
	gid_t groups[MAX_SUP_GROUPS];
	int ngroups;
	int home_default;       /* index in env of the HOME=/ we added, or -1 */
	struct drive root, scratch;
	struct extra_mount mounts[MAX_MOUNTS];
	size_t nmounts;
} cfg = { .cwd = "/", .grace_ms = 5000, .home_default = -1 };

unsigned long stop_grace_default = 5000;
char log_ring[LOG_RING];
unsigned long long log_total;

static char cfgbuf[CFG_MAX + 1];   /* config strings point into this; never freed */

static int con_in = -1;            /* nonblocking read side of the console */
static int con_at_bol;             /* last console byte was '\n'; unknown at start, so false */
static int sigfd = -1;
static int scratch_fd = -1;        /* the scratch mount stays reachable after the root switch */

pid_t workload;                    /* main workload pid, 0 once reaped */
int workload_status;
struct boot_times boot_times;
static int stopping;
/* kiln.shutdown=reboot: power off by resetting. Firecracker on x86 has no ACPI power-off
 * (after RB_POWER_OFF the guest halts and the VMM lives on); with reboot=k the reset goes
 * through the i8042, which makes Firecracker exit. QEMU (-no-reboot) needs neither. */
static int shutdown_by_reset;

static void shutdown_vm(void) __attribute__((noreturn));

long long now_ms(clockid_t clk)
{
	struct timespec ts;

	clock_gettime(clk, &ts);
	return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

long long now_us(clockid_t clk)
{
	struct timespec ts;

	clock_gettime(clk, &ts);
	return ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

/* ---------------------------------------------------------------- console */

static void con_write(const char *p, size_t n)
{
	if (n == 0)
		return;
	con_at_bol = p[n - 1] == '\n';
	while (n > 0) {
		ssize_t w = write(STDOUT_FILENO, p, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return;
		}
		p += w;
		n -= w;
	}
}

/* Emits one control line, in a single write so it is not split up. */
void marker(const char *fmt, ...)
{
	char line[600];
	size_t n = 0;
	va_list ap;
	int r;

	if (!con_at_bol)
		line[n++] = '\n';
	memcpy(line + n, MARK, MARK_LEN);
	n += MARK_LEN;
	va_start(ap, fmt);
	r = vsnprintf(line + n, sizeof(line) - n - 1, fmt, ap);
	va_end(ap);
	if (r > 0)
		n += (size_t)r < sizeof(line) - n - 1 ? (size_t)r : sizeof(line) - n - 2;
	line[n++] = '\n';
	con_write(line, n);
}

/* "warn" markers are informational; "error" ones mean the boot is over (the host fails the VM). */
static void vreport(const char *event, const char *stage, int err, const char *fmt, va_list ap)
{
	char msg[400];

	vsnprintf(msg, sizeof(msg), fmt, ap);
	for (char *p = msg; *p; p++)
		if ((unsigned char)*p <= ' ' || *p == 0x7f)
			*p = '_';
	marker("%s stage=%s errno=%d msg=%s", event, stage, err, msg);
}

void report(const char *stage, int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vreport("warn", stage, err, fmt, ap);
	va_end(ap);
}

void die(const char *stage, int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vreport("error", stage, err, fmt, ap);
	va_end(ap);
	shutdown_vm();
}

static void console_raw(int fd)
{
	struct termios t;

	if (tcgetattr(fd, &t) != 0)
		return;
	/* No echo, no line editing, no signals from the host's bytes, no XON/XOFF
	 * (a stray ^S would stop all output), but keep "\n" -> "\r\n" on output
	 * so the serial log reads normally. */
	t.c_iflag &= ~(IGNBRK | BRKINT | PARMRK | ISTRIP | INLCR | IGNCR | ICRNL | IXON | IXOFF);
	t.c_lflag &= ~(ECHO | ECHONL | ICANON | ISIG | IEXTEN);
	t.c_cflag = (t.c_cflag & ~(CSIZE | PARENB)) | CS8;
	t.c_oflag |= OPOST | ONLCR;
	t.c_cc[VMIN] = 1;
	t.c_cc[VTIME] = 0;
	tcsetattr(fd, TCSANOW, &t);
}

static void setup_console(void)
{
	/* No O_CLOEXEC: fds 0-2 are replaced in the workload anyway. */
	int fd = open("/dev/console", O_RDWR | O_NOCTTY);

	if (fd >= 0) {
		for (int i = 0; i <= 2; i++)
			if (fd != i)
				dup2(fd, i);
		if (fd > 2)
			close(fd);
	}
	/* Raw from the start, so that nothing the host sends early is echoed. */
	console_raw(STDIN_FILENO);
	con_in = open("/dev/console", O_RDONLY | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
}

/* ------------------------------------------------------- workload output */

struct stream {
	int fd;
	int bol;    /* the stream itself is at the start of a line */
	int held;   /* bytes of MARK seen at a line start and not yet written, or -1 */
};

/*
 * A line "starts" both where the stream's own previous byte was '\n' and where
 * the console is at the start of a line (the other stream or a marker may have
 * just ended one). Either way the first MARK_LEN bytes are held back until it
 * is clear whether they spell MARK.
 */
static void forward(struct stream *s, const char *buf, size_t n)
{
	char out[2 * 4096 + 2 * MARK_LEN];
	size_t o = 0;
	int bol = con_at_bol;   /* console state as if `out` were already written */

	for (size_t i = 0; i < n; i++) {
		char c = buf[i];

		if (s->held < 0 && (s->bol || bol))
			s->held = 0;
		if (s->held >= 0) {
			if (c == MARK[s->held]) {
				if (++s->held < MARK_LEN)
					continue;
				out[o++] = ' ';
				memcpy(out + o, MARK, MARK_LEN);
				o += MARK_LEN;
				s->held = -1;
				s->bol = bol = 0;
				continue;
			}
			memcpy(out + o, MARK, s->held);
			o += s->held;
			s->held = -1;
		}
		out[o++] = c;
		s->bol = bol = c == '\n';
	}
	con_write(out, o);
}

static void stream_close(struct stream *s)
{
	/* A held partial prefix is written escaped: written bare, the other
	 * stream could complete it into a marker on the same console line. */
	if (s->held > 0) {
		con_write(" ", 1);
		con_write(MARK, s->held);
	}
	s->held = -1;
	close(s->fd);
	s->fd = -1;
}

static void log_append(const char *p, size_t n)
{
	while (n > 0) {
		size_t at = (size_t)(log_total % LOG_RING), k = LOG_RING - at < n ? LOG_RING - at : n;

		memcpy(log_ring + at, p, k);
		log_total += k;
		p += k;
		n -= k;
	}
}

/* stdio=tagged: one console line per piece of output, tagged with its stream. */
static void forward_tagged(int stream_no, const char *buf, size_t n)
{
	static char out[4096 * 10 + 16];   /* worst case: every byte a newline */
	size_t o = 0;

	while (n > 0) {
		const char *nl = memchr(buf, '\n', n);
		size_t len = nl ? (size_t)(nl - buf) : n;

		out[o++] = '@';
		memcpy(out + o, MARK + 1, MARK_LEN - 1);
		o += MARK_LEN - 1;
		out[o++] = (char)('0' + stream_no);
		if (!nl)
			out[o++] = '+';
		out[o++] = ' ';
		memcpy(out + o, buf, len);
		o += len;
		out[o++] = '\n';
		buf += len + (nl ? 1 : 0);
		n -= len + (nl ? 1 : 0);
	}
	if (!con_at_bol)
		con_write("\n", 1);
	con_write(out, o);
}

/* Forwards one read's worth; returns 0 when there is nothing more right now. */
static int pump(struct stream *s, int stream_no)
{
	char buf[4096];
	ssize_t n = read(s->fd, buf, sizeof(buf));

	if (n > 0) {
		if (cfg.tagged)
			forward_tagged(stream_no, buf, (size_t)n);
		else
			forward(s, buf, n);
		log_append(buf, (size_t)n);
		return 1;
	}
	if (n == 0 || (errno != EAGAIN && errno != EINTR))
		stream_close(s);
	return 0;
}

/* ------------------------------------------------------------ processes */

static void signal_workload(int sig)
{
	if (workload <= 0)
		return;
	/* Right after fork the child may not have called setsid() yet. */
	if (kill(-workload, sig) != 0 && errno == ESRCH)
		kill(workload, sig);
}

static void stop_workload(unsigned long grace_ms, int timer_fd)
{
	struct itimerspec it = { .it_value = { grace_ms / 1000, (grace_ms % 1000) * 1000000 } };

	if (stopping || workload <= 0)
		return;
	stopping = 1;
	signal_workload(SIGTERM);
	if (grace_ms == 0 || timerfd_settime(timer_fd, 0, &it, NULL) != 0)
		signal_workload(SIGKILL);
}

/* PID 1 inherits every orphan, so reap whatever has exited. */
static void reap_children(void)
{
	pid_t pid;
	int st;

	while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
		if (pid == workload) {
			workload = 0;
			workload_status = st;
		}
	}
}

static void drain_sigfd(void)
{
	struct signalfd_siginfo si;

	while (read(sigfd, &si, sizeof(si)) == sizeof(si))
		;
}

/* Reaps until no children are left or `ms` have passed. */
static void reap_for(int ms)
{
	long long deadline = now_ms(CLOCK_MONOTONIC) + ms;

	for (;;) {
		pid_t pid;
		long long left;
		struct pollfd p = { sigfd, POLLIN, 0 };

		while ((pid = waitpid(-1, NULL, WNOHANG)) > 0)
			;
		left = deadline - now_ms(CLOCK_MONOTONIC);
		if (pid < 0 || left <= 0)
			return;
		poll(&p, 1, (int)left);
		drain_sigfd();
	}
}

static void shutdown_vm(void)
{
	char path[64];

	/* The agent-only service is not PID 1: a fatal error ends only this process. */
	if (agent_only)
		_exit(1);

	kill(-1, SIGTERM);
	reap_for(1000);
	kill(-1, SIGKILL);
	reap_for(1000);
	sync();
	/* The scratch mount is unreachable by name after the root switch, but
	 * the magic link of an fd opened at its root still names the mount.
	 * A clean read-only ext4 needs no journal replay on the next boot. */
	if (scratch_fd >= 0) {
		snprintf(path, sizeof(path), "/proc/self/fd/%d", scratch_fd);
		mount(NULL, path, NULL, MS_REMOUNT | MS_RDONLY, NULL);
	}
	for (size_t i = 0; i < cfg.nmounts; i++)
		if (cfg.mounts[i].rw)
			mount(NULL, cfg.mounts[i].target, NULL, MS_REMOUNT | MS_RDONLY, NULL);
	marker("poweroff");
	reboot(shutdown_by_reset ? RB_AUTOBOOT : RB_POWER_OFF);
	/* Returning from PID 1 would panic the kernel. */
	report("poweroff", errno, "reboot failed");
	for (;;)
		pause();
}

/* ------------------------------------------------------------ boot steps */

/* True when `want` is one whole word of the kernel command line. */
static int cmdline_has(const char *want)
{
	char buf[4096];
	ssize_t n;
	int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return 0;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = 0;
	for (char *save, *tok = strtok_r(buf, " \n", &save); tok; tok = strtok_r(NULL, " \n", &save))
		if (!strcmp(tok, want))
			return 1;
	return 0;
}

static void mount_early(void)
{
	static const struct { const char *dir, *type; } fs[] = {
		{ "/dev", "devtmpfs" }, { "/proc", "proc" }, { "/sys", "sysfs" },
	};
	int err[3];

	for (int i = 0; i < 3; i++) {
		mkdir(fs[i].dir, 0755);
		err[i] = mount(fs[i].type, fs[i].dir, fs[i].type, MS_NOSUID, NULL) == 0 ||
			errno == EBUSY ? 0 : errno;
	}
	/* Only now is there a console to say anything on. */
	setup_console();
	for (int i = 0; i < 3; i++)
		if (err[i])
			report("mount", err[i], "%s", fs[i].dir);
}

static void setup_signals(void)
{
	/* busybox reboot, halt and poweroff send SIGTERM, SIGUSR1 and SIGUSR2 to PID 1. */
	static const int sigs[] = { SIGCHLD, SIGTERM, SIGINT, SIGUSR1, SIGUSR2, SIGPWR, SIGHUP };
	sigset_t set;

	sigemptyset(&set);
	for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
		sigaddset(&set, sigs[i]);
	sigprocmask(SIG_BLOCK, &set, NULL);
	sigfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	/* Ctrl-Alt-Del becomes SIGINT to us instead of an instant reboot. */
	reboot(RB_DISABLE_CAD);
}

static void load_modules(void)
{
	char name[256], path[300];
	FILE *f = fopen("/lib/kiln/modules.order", "re");

	if (!f)
		return;   /* a kernel with everything built in needs no modules */
	while (fgets(name, sizeof(name), f)) {
		int fd;

		name[strcspn(name, "\r\n")] = 0;
		if (!name[0])
			continue;
		snprintf(path, sizeof(path), "/lib/kiln/modules/%s", name);
		fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0 || (syscall(SYS_finit_module, fd, "", 0) != 0 && errno != EEXIST && errno != ENODEV))
			report("modules", errno, "%s", name);
		if (fd >= 0)
			close(fd);
	}
	fclose(f);
}

/* Block devices can appear a little after their driver loads. */
static int wait_for(int (*probe)(void *), void *arg)
{
	long long deadline = now_ms(CLOCK_MONOTONIC) + DEVICE_WAIT_MS;
	struct timespec nap = { 0, 2 * 1000000 };

	while (!probe(arg)) {
		if (now_ms(CLOCK_MONOTONIC) >= deadline)
			return 0;
		nanosleep(&nap, NULL);
	}
	return 1;
}

/* Calls fn(name, arg) for each virtio disk until it returns non-zero. */
static int each_vd(int (*fn)(const char *, void *), void *arg)
{
	DIR *d = opendir("/sys/block");
	struct dirent *e;
	int r = 0;

	if (!d)
		return 0;
	while (!r && (e = readdir(d)))
		if (!strncmp(e->d_name, "vd", 2))
			r = fn(e->d_name, arg);
	closedir(d);
	return r;
}

static int is_config_drive(const char *name, void *dev)
{
	char head[CFG_MAGIC_LEN];
	int fd, ok;

	snprintf(dev, 64, "/dev/%s", name);
	fd = open(dev, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	ok = read(fd, head, sizeof(head)) == sizeof(head) && !memcmp(head, CFG_MAGIC, sizeof(head));
	close(fd);
	return ok;
}

static int find_config_drive(void *dev)
{
	return each_vd(is_config_drive, dev);
}

static int serial_matches(const char *name, void *arg)
{
	struct drive *d = arg;
	char path[300], serial[64];
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "/sys/block/%s/serial", name);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	n = read(fd, serial, sizeof(serial) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	serial[n] = 0;
	serial[strcspn(serial, "\n")] = 0;
	if (!serial[0] || strcmp(serial, d->serial))
		return 0;
	snprintf(d->dev, sizeof(d->dev), "%s", name);
	return 1;
}

/*
 * QEMU passes the serial the host chose. Firecracker has no serials (it
 * answers with an id made from the image file's inode, which the host cannot
 * predict), so there the name follows the attach order.
 */
static int resolve_drive(void *arg)
{
	struct drive *d = arg;
	char path[300];

	if (each_vd(serial_matches, d))
		return 1;
	if (d->index >= 26)
		return 0;
	snprintf(d->dev, sizeof(d->dev), "vd%c", (char)('a' + d->index));
	snprintf(path, sizeof(path), "/sys/block/%s", d->dev);
	return access(path, F_OK) == 0;
}

int parse_num(const char *s, unsigned long *out)
{
	unsigned long v;
	char *end;

	if (*s < '0' || *s > '9')
		return -1;
	errno = 0;
	v = strtoul(s, &end, 10);
	if (*end || errno)
		return -1;
	*out = v;
	return 0;
}

static const char *env_get(const char *name)
{
	size_t n = strlen(name);

	for (char **e = cfg.env; *e; e++)
		if (!strncmp(*e, name, n) && (*e)[n] == '=')
			return *e + n + 1;
	return NULL;
}

/* mount=<serial>,<index>,<target>,<ro|rw> */
static void parse_mount(char *v)
{
	char *c1 = strchr(v, ','), *c2 = c1 ? strchr(c1 + 1, ',') : NULL, *c3 = c2 ? strrchr(c2 + 1, ',') : NULL;
	struct extra_mount *m;

	if (!c3)
		die("config", EINVAL, "bad mount: %.60s", v);
	if (cfg.nmounts == MAX_MOUNTS)
		die("config", E2BIG, "more than %d mounts", MAX_MOUNTS);
	*c1 = *c2 = *c3 = 0;
	m = &cfg.mounts[cfg.nmounts++];
	m->drive.set = 1;
	m->drive.serial = v;
	if (parse_num(c1 + 1, &m->drive.index))
		die("config", EINVAL, "bad mount index: %.40s", c1 + 1);
	m->target = c2 + 1;
	/* The target is resolved inside the new root: no escaping it. */
	if (m->target[0] != '/' || strstr(m->target, "/../") || !strcmp(m->target, "/") ||
	    (strlen(m->target) >= 3 && !strcmp(m->target + strlen(m->target) - 3, "/..")))
		die("config", EINVAL, "bad mount target: %.60s", m->target);
	if (!strcmp(c3 + 1, "rw"))
		m->rw = 1;
	else if (strcmp(c3 + 1, "ro"))
		die("config", EINVAL, "mount mode must be ro or rw: %.20s", c3 + 1);
}

char **workload_env(void)
{
	return cfg.env;
}

void workload_env_merge(char **entries, size_t n)
{
	size_t have = 0;
	char **next;

	while (cfg.env[have])
		have++;
	next = calloc(have + n + 1, sizeof(char *));
	if (!next)
		return;
	memcpy(next, cfg.env, have * sizeof(char *));
	for (size_t i = 0; i < n; i++) {
		size_t k = (size_t)(strchr(entries[i], '=') - entries[i]);
		size_t j = 0;

		while (j < have && !(strncmp(next[j], entries[i], k) == 0 && next[j][k] == '='))
			j++;
		next[j] = entries[i];
		if (j == have)
			have++;
	}
	/* The old array may still be referenced by nothing but us: the strings are kept. */
	cfg.env = next;
}

void workload_identity(const char **cwd, unsigned long *uid, unsigned long *gid)
{
	*cwd = cfg.cwd;
	*uid = cfg.uid;
	*gid = cfg.gid;
}

static void parse_config(size_t len)
{
	char *p, *next, *end = cfgbuf + len;   /* cfgbuf[len] is always NUL */
	size_t count = 0, na = 0, ne = 0;

	for (p = cfgbuf + CFG_MAGIC_LEN; p < end && *p; p += strlen(p) + 1)
		count++;
	cfg.argv = calloc(count + 1, sizeof(char *));
	cfg.env = calloc(count + 4, sizeof(char *));
	if (!cfg.argv || !cfg.env)
		die("config", ENOMEM, "out of memory");

	for (p = cfgbuf + CFG_MAGIC_LEN; p < end && *p; p = next) {
		char *v = strchr(p, '=');
		unsigned long *num = NULL;

		next = p + strlen(p) + 1;
		if (!v)
			die("config", EINVAL, "entry without '=': %.40s", p);
		*v++ = 0;
		if (!strcmp(p, "argv"))
			cfg.argv[na++] = v;
		else if (!strcmp(p, "env"))
			cfg.env[ne++] = v;
		else if (!strcmp(p, "cwd"))
			cfg.cwd = v;
		else if (!strcmp(p, "hostname"))
			cfg.hostname = v;
		else if (!strcmp(p, "user"))
			cfg.user = v;
		else if (!strcmp(p, "stdio"))
			cfg.tagged = !strcmp(v, "tagged");
		else if (!strcmp(p, "uid"))
			num = &cfg.uid;
		else if (!strcmp(p, "gid"))
			num = &cfg.gid;
		else if (!strcmp(p, "stop_grace_ms"))
			num = &cfg.grace_ms;
		else if (!strcmp(p, "agent_token"))
			agent_cfg.token = v;
		else if (!strcmp(p, "agent_host"))
			agent_cfg.host = v;
		else if (!strcmp(p, "agent_port"))
			num = &agent_cfg.port;
		else if (!strcmp(p, "agent_vsock_port"))
			num = &agent_cfg.vsock_port;
		else if (!strcmp(p, "mount"))
			parse_mount(v);
		else if (!strcmp(p, "mode")) {
			if (strcmp(v, "classic"))
				die("config", EINVAL, "unknown mode: %.40s", v);
			classic_cfg.enabled = 1;
		} else if (!strcmp(p, "instance_id"))
			classic_cfg.instance_id = v;
		else if (!strcmp(p, "user_data"))
			classic_cfg.user_data = v;
		else if (!strcmp(p, "ssh_key")) {
			if (classic_cfg.nkeys == CLASSIC_MAX_KEYS)
				die("config", E2BIG, "more than %d ssh keys", CLASSIC_MAX_KEYS);
			classic_cfg.keys[classic_cfg.nkeys++] = v;
		}
		else if (!strcmp(p, "drive")) {
			char *c1 = strchr(v, ','), *c2 = c1 ? strchr(c1 + 1, ',') : NULL;
			struct drive *d = NULL;

			if (!c2)
				die("config", EINVAL, "bad drive: %.40s", v);
			*c1 = *c2 = 0;
			if (!strcmp(v, "root"))
				d = &cfg.root;
			else if (!strcmp(v, "scratch"))
				d = &cfg.scratch;
			if (d) {
				d->set = 1;
				d->serial = c1 + 1;
				if (parse_num(c2 + 1, &d->index))
					die("config", EINVAL, "bad drive index: %.40s", c2 + 1);
			}
		}
		/* Unknown keys are ignored, so the host can add some ahead of us. */
		if (num && parse_num(v, num))
			die("config", EINVAL, "bad number: %s=%.40s", p, v);
	}
	if (!env_get("PATH"))
		cfg.env[ne++] = "PATH=" DEFAULT_PATH;
	if (!env_get("HOME")) {
		cfg.home_default = (int)ne;
		cfg.env[ne++] = "HOME=/";
	}
	if (!env_get("TERM"))
		cfg.env[ne++] = "TERM=linux";
	classic_cfg.hostname = cfg.hostname;
}

static void read_config(void)
{
	char dev[64];
	size_t len = 0;
	ssize_t n = 0;
	int fd;

	if (!wait_for(find_config_drive, dev))
		die("config", ENODEV, "no config drive found");
	fd = open(dev, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		die("config", errno, "open %s", dev);
	while (len < CFG_MAX && (n = read(fd, cfgbuf + len, CFG_MAX - len)) > 0)
		len += n;
	if (n < 0)
		die("config", errno, "read %s", dev);
	close(fd);

	parse_config(len);
	if (!cfg.argv[0])
		die("config", EINVAL, "no argv");
	if (!cfg.root.set)
		die("config", EINVAL, "no root drive");
	if (!wait_for(resolve_drive, &cfg.root))
		die("root", ENODEV, "root drive %s not found", cfg.root.serial);
	if (cfg.scratch.set && !wait_for(resolve_drive, &cfg.scratch))
		die("scratch", ENODEV, "scratch drive %s not found", cfg.scratch.serial);
	for (size_t i = 0; i < cfg.nmounts; i++)
		if (!wait_for(resolve_drive, &cfg.mounts[i].drive))
			die("mount", ENODEV, "drive %s for %s not found", cfg.mounts[i].drive.serial, cfg.mounts[i].target);
	stop_grace_default = cfg.grace_ms;
	if (agent_cfg.token && (!agent_cfg.token[0] || strspn(agent_cfg.token, "0123456789abcdef") != strlen(agent_cfg.token)))
		die("config", EINVAL, "agent_token must be lowercase hex");
}

/* Picks the filesystem by its magic, so the kernel does not log a failed
 * mount attempt for each wrong guess. NULL: unknown, try them all. */
static const char *detect_fs(const char *dev)
{
	unsigned char sb[1084];
	int fd = open(dev, O_RDONLY | O_CLOEXEC);
	ssize_t n = fd < 0 ? -1 : pread(fd, sb, sizeof(sb), 0);

	if (fd >= 0)
		close(fd);
	if (n >= 4 && !memcmp(sb, "hsqs", 4))
		return "squashfs";
	if (n >= 1028 && !memcmp(sb + 1024, "\xe2\xe1\xf5\xe0", 4))
		return "erofs";
	if (n >= 1082 && sb[1080] == 0x53 && sb[1081] == 0xef)
		return "ext4";
	return NULL;
}

static void mkdir_or_die(const char *stage, const char *dir)
{
	if (mkdir(dir, 0755) != 0 && errno != EEXIST)
		die(stage, errno, "mkdir %s", dir);
}

static void mount_root(void)
{
	static const char *const types[] = { "squashfs", "erofs", "ext4" };
	const char *type;
	char dev[80];
	int err = 0;

	mkdir_or_die("root", "/kiln");
	mkdir_or_die("root", "/kiln/lower");
	mkdir_or_die("root", "/kiln/rw");
	mkdir_or_die("root", "/kiln/root");

	snprintf(dev, sizeof(dev), "/dev/%s", cfg.root.dev);
	type = detect_fs(dev);
	if (classic_cfg.enabled) {
		/* A classic VM's root is its own writable disk: no overlay, it is the VM's state. */
		if (!type || strcmp(type, "ext4"))
			die("root", EINVAL, "a classic VM needs an ext4 root disk; %s is %s", dev, type ? type : "unknown");
		if (mount(dev, "/kiln/root", "ext4", 0, NULL) != 0)
			die("root", errno, "mount %s (ext4, rw) on /kiln/root", dev);
		return;
	}
	for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
		if (type && strcmp(type, types[i]))
			continue;
		if (mount(dev, "/kiln/lower", types[i], MS_RDONLY, NULL) == 0) {
			err = 0;
			break;
		}
		err = errno;
	}
	if (err)
		die("root", err, "mount %s (%s) on /kiln/lower", dev, type ? type : "unknown fs");

	if (cfg.scratch.set) {
		snprintf(dev, sizeof(dev), "/dev/%s", cfg.scratch.dev);
		if (mount(dev, "/kiln/rw", "ext4", MS_NOATIME, NULL) != 0)
			die("scratch", errno, "mount %s on /kiln/rw", dev);
	} else if (mount("tmpfs", "/kiln/rw", "tmpfs", 0, "mode=0755") != 0) {
		die("scratch", errno, "mount tmpfs on /kiln/rw");
	}
	scratch_fd = cfg.scratch.set ? open("/kiln/rw", O_PATH | O_DIRECTORY | O_CLOEXEC) : -1;
	mkdir_or_die("overlay", "/kiln/rw/upper");
	mkdir_or_die("overlay", "/kiln/rw/work");
	if (mount("overlay", "/kiln/root", "overlay", 0,
		  "lowerdir=/kiln/lower,upperdir=/kiln/rw/upper,workdir=/kiln/rw/work") != 0)
		die("overlay", errno, "mount overlay on /kiln/root");
}

/* mkdir -p below /kiln/root. */
static int mkdirs_under_root(const char *target)
{
	char path[4200];

	snprintf(path, sizeof(path), "/kiln/root%s", target);
	for (char *s = path + strlen("/kiln/root") + 1; *s; s++) {
		if (*s != '/')
			continue;
		*s = 0;
		if (mkdir(path, 0755) != 0 && errno != EEXIST)
			return -1;
		*s = '/';
	}
	return mkdir(path, 0755) != 0 && errno != EEXIST ? -1 : 0;
}

/* Volumes: extra drives mounted inside the new root, before anything runs there. */
static void mount_extra(void)
{
	for (size_t i = 0; i < cfg.nmounts; i++) {
		struct extra_mount *m = &cfg.mounts[i];
		char dev[80], dst[4200];
		const char *type;

		snprintf(dev, sizeof(dev), "/dev/%s", m->drive.dev);
		type = detect_fs(dev);
		if (!type)
			die("mount", EINVAL, "%s for %s: no squashfs, erofs or ext4 found", dev, m->target);
		if (m->rw && strcmp(type, "ext4"))
			die("mount", EROFS, "%s for %s is %s, which is read-only", dev, m->target, type);
		if (mkdirs_under_root(m->target) != 0)
			die("mount", errno, "mkdir %s", m->target);
		snprintf(dst, sizeof(dst), "/kiln/root%s", m->target);
		if (mount(dev, dst, type, (m->rw ? MS_NOATIME : MS_RDONLY) | MS_NODEV, NULL) != 0)
			die("mount", errno, "mount %s (%s) on %s", dev, type, m->target);
	}
}

static void switch_root(void)
{
	static const char *const moved[] = { "/dev", "/proc", "/sys" };
	char dst[32];

	for (int i = 0; i < 3; i++) {
		snprintf(dst, sizeof(dst), "/kiln/root%s", moved[i]);
		mkdir(dst, 0755);
		if (mount(moved[i], dst, NULL, MS_MOVE, NULL) != 0)
			die("switch", errno, "move %s", moved[i]);
	}
	/* The initramfs stays underneath (this binary runs from it): there is
	 * no pivot_root out of rootfs, only moving the new root over it. */
	if (chdir("/kiln/root") != 0 || mount(".", "/", NULL, MS_MOVE, NULL) != 0 ||
	    chroot(".") != 0 || chdir("/") != 0)
		die("switch", errno, "switch to /kiln/root");
}

static void setup_loopback(void)
{
	struct ifreq ifr;
	struct sockaddr_in sin = { .sin_family = AF_INET };
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);

	if (s < 0) {
		report("net", errno, "socket");
		return;
	}
	memset(&ifr, 0, sizeof(ifr));
	strcpy(ifr.ifr_name, "lo");
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	memcpy(&ifr.ifr_addr, &sin, sizeof(sin));
	if (ioctl(s, SIOCSIFADDR, &ifr) != 0)
		report("net", errno, "lo address");
	sin.sin_addr.s_addr = htonl(0xff000000);
	memcpy(&ifr.ifr_netmask, &sin, sizeof(sin));
	if (ioctl(s, SIOCSIFNETMASK, &ifr) != 0)
		report("net", errno, "lo netmask");
	if (ioctl(s, SIOCGIFFLAGS, &ifr) != 0)
		report("net", errno, "lo flags");
	ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
	if (ioctl(s, SIOCSIFFLAGS, &ifr) != 0)
		report("net", errno, "lo up");
	close(s);
}

/* Failures here leave a usable if imperfect system, so they are reported only. */
static void setup_new_root(void)
{
	static const char *const links[][2] = {
		{ "/proc/self/fd", "/dev/fd" },
		{ "/proc/self/fd/0", "/dev/stdin" },
		{ "/proc/self/fd/1", "/dev/stdout" },
		{ "/proc/self/fd/2", "/dev/stderr" },
	};

	mkdir("/tmp", 01777);
	if (mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777") != 0)
		report("setup", errno, "mount /tmp");
	mkdir("/dev/shm", 01777);
	if (mount("shm", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777") != 0)
		report("setup", errno, "mount /dev/shm");
	mkdir("/dev/pts", 0755);
	if (mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "ptmxmode=0666,mode=0620") != 0)
		report("setup", errno, "mount /dev/pts");
	for (size_t i = 0; i < sizeof(links) / sizeof(links[0]); i++)
		if (symlink(links[i][0], links[i][1]) != 0 && errno != EEXIST)
			report("setup", errno, "symlink %s", links[i][1]);
	if (cfg.hostname && sethostname(cfg.hostname, strlen(cfg.hostname)) != 0)
		report("setup", errno, "hostname");
}

/* ------------------------------------------------------------- workload */

static void __attribute__((noreturn)) child_fail(const char *what, const char *arg)
{
	dprintf(STDERR_FILENO, "kiln-init: %s %s: %s\n", what, arg, strerror(errno));
	_exit(127);
}

static const char *env_in(char **env, const char *name)
{
	size_t n = strlen(name);

	for (char **e = env; *e; e++)
		if (!strncmp(*e, name, n) && (*e)[n] == '=')
			return *e + n + 1;
	return NULL;
}

/* The search uses the new program's PATH, not ours (execvpe would not). */
void exec_search(char **argv, char **env)
{
	const char *file = argv[0], *path_env = env_in(env, "PATH");
	int saved = ENOENT;

	if (strchr(file, '/')) {
		execve(file, argv, env);
		return;
	}
	for (const char *p = path_env ? path_env : DEFAULT_PATH, *colon; ; p = colon + 1) {
		char path[4096];
		int dirlen;

		colon = strchrnul(p, ':');
		dirlen = (int)(colon - p);
		snprintf(path, sizeof(path), "%.*s%s%s", dirlen, p, dirlen ? "/" : "", file);
		execve(path, argv, env);
		if (errno == EACCES)
			saved = EACCES;
		else if (errno != ENOENT && errno != ENOTDIR)
			saved = errno;
		if (!*colon || (errno != ENOENT && errno != ENOTDIR && errno != EACCES))
			break;
	}
	errno = saved;
}

static void __attribute__((noreturn)) exec_workload(int out_w, int err_w)
{
	const char *file = cfg.argv[0];
	int null = open("/dev/null", O_RDONLY);
	sigset_t none;

	setsid();
	if (null >= 0)
		dup2(null, STDIN_FILENO);
	else
		close(STDIN_FILENO);
	dup2(out_w, STDOUT_FILENO);
	dup2(err_w, STDERR_FILENO);
	if (null > STDERR_FILENO)
		close(null);
	for (int sig = 1; sig < NSIG; sig++)
		signal(sig, SIG_DFL);
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);

	if (chdir(cfg.cwd) != 0)
		child_fail("chdir", cfg.cwd);
	if ((cfg.uid || cfg.gid || cfg.ngroups) && setgroups((size_t)cfg.ngroups, cfg.groups) != 0)
		child_fail("setgroups", "");
	if (cfg.gid && setgid(cfg.gid) != 0)
		child_fail("setgid", "");
	if (cfg.uid && setuid(cfg.uid) != 0)
		child_fail("setuid", "");

	exec_search(cfg.argv, cfg.env);
	child_fail("exec", file);
}

static int open_pipe(int fds[2])
{
	if (pipe2(fds, O_CLOEXEC) != 0)
		return -1;
	/* Only our end: the workload's stdout must stay blocking. */
	return fcntl(fds[0], F_SETFL, O_NONBLOCK);
}

static void handle_console_line(char *line, size_t len, int timer_fd)
{
	unsigned long grace = cfg.grace_ms;
	char *arg;

	line[len] = 0;
	if (len && line[len - 1] == '\r')
		line[--len] = 0;
	if (strncmp(line, MARK "stop", MARK_LEN + 4) || (line[MARK_LEN + 4] && line[MARK_LEN + 4] != ' '))
		return;
	for (arg = strtok(line + MARK_LEN + 4, " "); arg; arg = strtok(NULL, " "))
		if (!strncmp(arg, "grace_ms=", 9))
			parse_num(arg + 9, &grace);
	stop_workload(grace, timer_fd);
}

/* Returns -1 once the console can no longer be read. */
static int console_input(int timer_fd)
{
	static char line[IN_LINE_MAX + 1];
	static size_t len;
	static int overlong;
	char buf[512];
	ssize_t n = read(con_in, buf, sizeof(buf));

	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return 0;
	if (n <= 0)
		return -1;
	for (ssize_t i = 0; i < n; i++) {
		if (buf[i] == '\n') {
			if (!overlong)
				handle_console_line(line, len, timer_fd);
			len = 0;
			overlong = 0;
		} else if (len == IN_LINE_MAX) {
			overlong = 1;
		} else {
			line[len++] = buf[i];
		}
	}
	return 0;
}

static void handle_signals(int timer_fd)
{
	struct signalfd_siginfo si;

	while (read(sigfd, &si, sizeof(si)) == sizeof(si)) {
		if (si.ssi_signo == SIGCHLD || si.ssi_signo == SIGHUP)
			continue;
		/* An agent session's shutdown: sigqueue()d SIGTERM carrying grace_ms. */
		if (si.ssi_signo == SIGTERM && si.ssi_code == SI_QUEUE && si.ssi_int >= 0)
			stop_workload((unsigned long)si.ssi_int, timer_fd);
		else
			stop_workload(cfg.grace_ms, timer_fd);
	}
	reap_children();
}

/* mkdir -p, as root: Docker creates a missing working directory too. */
static void ensure_dir(const char *dir)
{
	char path[4096];

	snprintf(path, sizeof(path), "%s", dir);
	for (char *s = path + 1; *s; s++) {
		if (*s != '/')
			continue;
		*s = 0;
		mkdir(path, 0755);
		*s = '/';
	}
	if (mkdir(path, 0755) != 0 && errno != EEXIST)
		report("workdir", errno, "mkdir %s", dir);
}

/* After the root switch: --user against the image's own passwd/group files. */
static void apply_user(void)
{
	struct workload_user u;
	char err[256];

	if (cfg.cwd[0] == '/' && access(cfg.cwd, F_OK) != 0)
		ensure_dir(cfg.cwd);
	if (!cfg.user)
		return;
	if (resolve_user(cfg.user, &u, err, sizeof(err)) != 0)
		die("user", EINVAL, "%s", err);
	cfg.uid = u.uid;
	cfg.gid = u.gid;
	cfg.ngroups = u.ngroups;
	memcpy(cfg.groups, u.groups, sizeof(u.groups));
	if (cfg.home_default >= 0 && u.home[0]) {
		char *home = malloc(strlen(u.home) + 6);

		if (home) {
			sprintf(home, "HOME=%s", u.home);
			cfg.env[cfg.home_default] = home;
		}
	}
}

static void run_workload(long long root_ms)
{
	int out[2], err[2];
	int timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	struct stream so = { -1, 1, -1 }, se = { -1, 1, -1 };

	if (agent_listen() >= 0)
		boot_times.listener = now_ms(CLOCK_BOOTTIME);
	if (open_pipe(out) != 0 || open_pipe(err) != 0)
		die("exec", errno, "pipe");
	workload = fork();
	if (workload < 0)
		die("exec", errno, "fork");
	if (workload == 0)
		exec_workload(out[1], err[1]);
	boot_times.workload = now_ms(CLOCK_BOOTTIME);
	boot_times.ready_us = now_us(CLOCK_BOOTTIME);
	/* The push goes first: the console marker below costs a trap per byte under emulation. */
	agent_push_now();
	close(out[1]);
	close(err[1]);
	so.fd = out[0];
	se.fd = err[0];
	marker("ready uptime_ms=%lld root_ms=%lld pid=%d", now_ms(CLOCK_BOOTTIME), root_ms, (int)workload);

	while (workload > 0) {
		struct pollfd p[9] = {
			{ so.fd, POLLIN, 0 }, { se.fd, POLLIN, 0 }, { con_in, POLLIN, 0 },
			{ sigfd, POLLIN, 0 }, { timer_fd, POLLIN, 0 },
		};
		int timeout = -1, na = agent_pollfds(p + 5, 4, &timeout);
		uint64_t ticks;

		if (poll(p, 5 + na, timeout) < 0) {
			if (errno == EINTR)
				continue;
			die("loop", errno, "poll");
		}
		if (p[0].revents)
			pump(&so, 1);
		if (p[1].revents)
			pump(&se, 2);
		if (p[2].revents && ((p[2].revents & POLLIN) == 0 || console_input(timer_fd) < 0)) {
			close(con_in);   /* hung up: stop polling it rather than spin */
			con_in = -1;
		}
		if (p[3].revents)
			handle_signals(timer_fd);
		if (p[4].revents && read(timer_fd, &ticks, sizeof(ticks)) > 0)
			signal_workload(SIGKILL);
		agent_poll_done(p + 5, na);
	}

	/* Background processes may hold the pipes open and keep writing: take
	 * what a default-sized pipe can hold (16 reads of 4 KiB), no more. */
	for (int i = 0; i < 16 && so.fd >= 0 && pump(&so, 1); i++)
		;
	for (int i = 0; i < 16 && se.fd >= 0 && pump(&se, 2); i++)
		;
	if (WIFSIGNALED(workload_status))
		marker("exit signal=%d", WTERMSIG(workload_status));
	else
		marker("exit code=%d", WEXITSTATUS(workload_status));
	agent_send_exit(workload_status);
}

/*
 * Agent-only mode: a classic VM's systemd runs this same binary as a service once the system
 * is up. No workload, no console protocol: the session listener and the control channel,
 * configured from the same config drive, and hello pushed at once (that is readiness).
 */
void agent_only_run(void)
{
	static const int sigs[] = { SIGCHLD, SIGTERM, SIGINT, SIGHUP };
	sigset_t set;
	int fd = open("/dev/console", O_WRONLY | O_NOCTTY | O_CLOEXEC);

	/* Markers go to the serial console, where kilnd reads them. */
	if (fd >= 0) {
		dup2(fd, STDOUT_FILENO);
		close(fd);
	}
	sigemptyset(&set);
	for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
		sigaddset(&set, sigs[i]);
	sigprocmask(SIG_BLOCK, &set, NULL);
	sigfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	agent_shutdown_signal = cmdline_has("kiln.shutdown=reboot") ? SIGRTMIN + 5 : SIGRTMIN + 4;
	net_read_ip();
	read_config();
	if (!agent_cfg.token)
		die("agent", EINVAL, "no agent_token on the config drive");
	/* The init this agent reports on (status, hello) is systemd. */
	workload = 1;
	agent_preconnect();
	if (agent_listen() >= 0)
		boot_times.listener = now_ms(CLOCK_BOOTTIME);
	boot_times.workload = now_ms(CLOCK_BOOTTIME);
	boot_times.ready_us = now_us(CLOCK_BOOTTIME);
	agent_push_now();
	marker("ready uptime_ms=%lld pid=1 mode=classic", now_ms(CLOCK_BOOTTIME));
	for (;;) {
		struct pollfd p[4] = { { sigfd, POLLIN, 0 } };
		int timeout = -1, na = agent_pollfds(p + 1, 3, &timeout);
		struct signalfd_siginfo si;

		if (poll(p, 1 + na, timeout) < 0 && errno != EINTR)
			_exit(1);
		while (p[0].revents && read(sigfd, &si, sizeof(si)) == sizeof(si)) {
			if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT)
				_exit(0);
		}
		while (waitpid(-1, NULL, WNOHANG) > 0)
			;
		agent_poll_done(p + 1, na);
	}
}

int main(void)
{
	long long t0, root_ms;

	/* Not PID 1: the agent-only service of a classic VM (kiln-agent.service). */
	if (getpid() != 1) {
		agent_only = 1;
		agent_only_run();
	}
	mount_early();
	shutdown_by_reset = cmdline_has("kiln.shutdown=reboot");
	setup_signals();
	marker("boot uptime_ms=%lld", now_ms(CLOCK_BOOTTIME));

	t0 = now_ms(CLOCK_MONOTONIC);
	boot_times.init = now_ms(CLOCK_BOOTTIME);
	load_modules();
	/* Early, independent of the root: the host sees our address while we mount. */
	setup_loopback();
	if (net_setup())
		boot_times.net = now_ms(CLOCK_BOOTTIME);
	read_config();
	agent_preconnect();
	mount_root();
	mount_extra();
	switch_root();
	root_ms = now_ms(CLOCK_MONOTONIC) - t0;
	boot_times.root = now_ms(CLOCK_BOOTTIME);
	if (classic_cfg.enabled) {
		/* systemd gets the signals and the console as it expects them at exec. */
		sigset_t none;

		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		close(sigfd);
		if (con_in >= 0)
			close(con_in);
		classic_handover();
	}

	setup_new_root();
	apply_user();
	run_workload(root_ms);
	shutdown_vm();
}
