/*
 * Classic VMs: hand PID 1 over to the image's own init (systemd).
 *
 * kiln-init has mounted the VM's writable disk as the root and switched into
 * it. Before exec'ing /sbin/init it writes what the host decided for this VM:
 *   every boot:  /etc/hostname, the agent binary (/usr/lib/kiln/kiln-agent,
 *                this very binary: it becomes kiln-agent.service)
 *   first boot:  /etc/hosts, /root/.ssh/authorized_keys, the user-data script
 *                (run once by kiln-user-data.service), then
 *                /var/lib/kiln/instance-id (= the VM id), written last: a boot
 *                interrupted before it simply redoes the first boot.
 * "First boot" is per instance id, as cloud-init does it: the disk of a VM
 * cloned from another's would be a new instance.
 *
 * The network stays as kiln-init configured it (kernel state survives the
 * exec); the base image has no DHCP client and networkd is not enabled.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kiln-init.h"

#define STATE_DIR "/var/lib/kiln"
#define AGENT_DIR "/usr/lib/kiln"
#define AGENT_BIN AGENT_DIR "/kiln-agent"

struct classic_cfg classic_cfg;
int agent_only;
int agent_shutdown_signal;

static int write_whole(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/* Replaces `path` atomically (temp file + fsync + rename), owned by root. */
static int put_file(const char *path, const char *data, size_t n, mode_t mode)
{
	char tmp[4200];
	int fd, err;

	snprintf(tmp, sizeof(tmp), "%s.kiln-tmp", path);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode);
	if (fd < 0)
		return -1;
	if (fchown(fd, 0, 0) != 0 || fchmod(fd, mode) != 0 || write_whole(fd, data, n) != 0 || fsync(fd) != 0) {
		err = errno;
		close(fd);
		unlink(tmp);
		errno = err;
		return -1;
	}
	close(fd);
	if (rename(tmp, path) != 0) {
		err = errno;
		unlink(tmp);
		errno = err;
		return -1;
	}
	return 0;
}

static void put_or_report(const char *path, const char *data, size_t n, mode_t mode)
{
	if (put_file(path, data, n, mode) != 0)
		report("classic", errno, "write %s", path);
}

static void mkdir_mode(const char *dir, mode_t mode)
{
	if (mkdir(dir, mode) != 0 && errno != EEXIST)
		report("classic", errno, "mkdir %s", dir);
	/* An existing dir keeps what the user made of it, except where sshd insists. */
}

/* Copies this binary (still reachable through /proc/self/exe after the switch). */
static void install_agent(void)
{
	static char buf[1 << 16];
	char tmp[] = AGENT_BIN ".kiln-tmp";
	int in = open("/proc/self/exe", O_RDONLY | O_CLOEXEC), out;
	ssize_t n;

	mkdir_mode("/usr/lib", 0755);
	mkdir_mode(AGENT_DIR, 0755);
	out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0755);
	if (in < 0 || out < 0) {
		report("classic", errno, "install %s", AGENT_BIN);
		goto done;
	}
	while ((n = read(in, buf, sizeof(buf))) > 0)
		if (write_whole(out, buf, (size_t)n) != 0)
			break;
	if (n != 0 || fchmod(out, 0755) != 0 || fsync(out) != 0 || rename(tmp, AGENT_BIN) != 0) {
		report("classic", errno, "install %s", AGENT_BIN);
		unlink(tmp);
	}
done:
	if (in >= 0)
		close(in);
	if (out >= 0)
		close(out);
}

static int is_first_boot(void)
{
	char have[256];
	ssize_t n;
	int fd = open(STATE_DIR "/instance-id", O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return 1;
	n = read(fd, have, sizeof(have) - 1);
	close(fd);
	if (n <= 0)
		return 1;
	have[n] = 0;
	have[strcspn(have, "\n")] = 0;
	return strcmp(have, classic_cfg.instance_id ? classic_cfg.instance_id : "");
}

static void first_boot(void)
{
	static char buf[CLASSIC_MAX_KEYS * 16384];
	size_t n = 0;
	const char *h = classic_cfg.hostname;

	if (h) {
		n = (size_t)snprintf(buf, sizeof(buf),
			"127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost ip6-loopback\n"
			"ff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n", h);
		put_or_report("/etc/hosts", buf, n, 0644);
	}

	mkdir_mode("/root", 0700);
	mkdir_mode("/root/.ssh", 0700);
	/* sshd's StrictModes refuses keys in a directory others can write. */
	if (chmod("/root/.ssh", 0700) != 0 || chown("/root/.ssh", 0, 0) != 0)
		report("classic", errno, "/root/.ssh");
	n = 0;
	for (size_t i = 0; i < classic_cfg.nkeys; i++) {
		size_t len = strlen(classic_cfg.keys[i]);

		if (n + len + 2 > sizeof(buf))
			break;
		memcpy(buf + n, classic_cfg.keys[i], len);
		n += len;
		buf[n++] = '\n';
	}
	put_or_report("/root/.ssh/authorized_keys", buf, n, 0600);

	if (classic_cfg.user_data) {
		/* kiln-user-data.service runs it once: it removes .done never, creates it first. */
		unlink(STATE_DIR "/user-data.done");
		put_or_report(STATE_DIR "/user-data", classic_cfg.user_data, strlen(classic_cfg.user_data), 0700);
	} else {
		unlink(STATE_DIR "/user-data");
	}
	if (classic_cfg.instance_id) {
		n = (size_t)snprintf(buf, sizeof(buf), "%s\n", classic_cfg.instance_id);
		put_or_report(STATE_DIR "/instance-id", buf, n, 0644);
	}
	sync();
}

void classic_handover(void)
{
	static char *const argv[] = { "/sbin/init", NULL };
	static char *const envp[] = { "TERM=linux", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", NULL };
	char line[300];
	int first;

	mkdir_mode("/var/lib", 0755);
	mkdir_mode(STATE_DIR, 0700);
	if (classic_cfg.hostname) {
		int n = snprintf(line, sizeof(line), "%s\n", classic_cfg.hostname);

		put_or_report("/etc/hostname", line, (size_t)n, 0644);
	}
	install_agent();
	first = is_first_boot();
	if (first)
		first_boot();
	marker("handover init=%s first_boot=%d uptime_ms=%lld", argv[0], first, now_ms(CLOCK_BOOTTIME));
	for (int sig = 1; sig < NSIG; sig++)
		signal(sig, SIG_DFL);
	execve(argv[0], argv, envp);
	die("handover", errno, "exec %s", argv[0]);
}
