/* Shared by kiln-init's source files (kiln-init.c, net.c, agent.c, session.c). */
#ifndef KILN_INIT_H
#define KILN_INIT_H

#include <poll.h>
#include <stddef.h>
#include <sys/types.h>
#include <time.h>

#define KILN_AGENT_VERSION "0.2.0"
#define KILN_AGENT_PROTO 2

long long now_ms(clockid_t clk);
long long now_us(clockid_t clk);
void marker(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* A failure worth telling the host about, but not one that stops the boot. */
void report(const char *stage, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int parse_num(const char *s, unsigned long *out);
/* A fatal error: an "error" marker, then power off (PID 1) or exit (agent-only). */
void die(const char *stage, int err, const char *fmt, ...) __attribute__((noreturn, format(printf, 3, 4)));
/* execve() with a PATH search in `env`'s PATH, not ours; returns only on failure (errno set). */
void exec_search(char **argv, char **env);

/* net.c: static IPv4 from the kernel command line. Returns 1 if an interface was configured. */
int net_setup(void);
/* Only learns net_ip from the command line (agent-only mode: the interface is already up). */
void net_read_ip(void);
/* "a.b.c.d" of the configured address, or "" without network. */
extern char net_ip[16];

/* Boot timings, CLOCK_BOOTTIME ms; 0 = did not happen. */
struct boot_times {
	long long init, root, net, listener, workload;
	long long ready_us;   /* µs: the instant the agent and the workload are both up */
};
extern struct boot_times boot_times;

/* agent.c */
struct agent_cfg {
	const char *token;        /* NULL: no agent */
	const char *host;         /* "ipv4:port" push target, or NULL */
	unsigned long port;       /* TCP session port */
	unsigned long vsock_port; /* non-zero: vsock instead of TCP */
};
extern struct agent_cfg agent_cfg;

/* The session listener; -1 if none. */
int agent_listen(void);
void agent_preconnect(void);
void agent_push_now(void);
/* PID 1 loop hooks: fill pollfds, then handle them. Return the number of fds used. */
int agent_pollfds(struct pollfd *p, int max, int *timeout_ms);
void agent_poll_done(struct pollfd *p, int n);
/* Best effort, bounded: tells the host the workload exited. */
void agent_send_exit(int status);
/* Fork a session child for an accepted connection. */
void agent_accept(void);

/* classic.c: classic VMs (mode=classic on the config drive). kiln-init mounts the VM's
 * writable disk as root, writes first-boot identity, and hands PID 1 to the image's
 * init (systemd); the agent then runs as a systemd service ("agent-only mode"). */
#define CLASSIC_MAX_KEYS 64
struct classic_cfg {
	int enabled;
	const char *instance_id;
	const char *hostname;
	const char *user_data;
	const char *keys[CLASSIC_MAX_KEYS];
	size_t nkeys;
};
extern struct classic_cfg classic_cfg;
/* In the new root, after the switch: identity files, the agent binary; then execs init. */
void classic_handover(void) __attribute__((noreturn));
/* 1 when this process is the agent-only service, not PID 1. */
extern int agent_only;
/* Agent-only: what the shutdown op sends systemd (SIGRTMIN+4 poweroff, or SIGRTMIN+5 reboot
 * under kiln.shutdown=reboot: Firecracker exits on a reset, not on a power-off). */
extern int agent_shutdown_signal;
/* The agent-only service's main loop (never returns). */
void agent_only_run(void) __attribute__((noreturn));
/* Write end of PID 1's identity pipe (session children hand a clone's new identity over it). */
int agent_identity_fd(void);
/* PID 1: a restored clone's env entries ("K=V"), merged over the workload's for later execs. */
void workload_env_merge(char **entries, size_t n);

/* session.c: runs in a forked child, never returns. */
void session_run(int fd) __attribute__((noreturn));

/* What a session child needs from PID 1's state, snapshotted by fork. */
extern pid_t workload;
extern int workload_status;
extern unsigned long stop_grace_default;
char **workload_env(void);
void workload_identity(const char **cwd, unsigned long *uid, unsigned long *gid);

/* Recent workload output (kiln-init.c), for the logs operation. */
#define LOG_RING (256 * 1024)
extern char log_ring[LOG_RING];
extern unsigned long long log_total;   /* bytes ever written; ring holds the last LOG_RING */

/* Wire format (docs/agent-protocol.md): u32 BE payload length, u8 type, payload. */
#define FRAME_MAX (1u << 20)
#define F_CHALLENGE 'c' /* host->guest: proto=, nonce=: first frame of a session (and of the control channel) */
#define F_OPEN 'o'      /* host->guest: mac=<proof>\0key=value\0..., second frame of a session */
#define F_STDIN 'i'     /* host->guest: stdin bytes */
#define F_EOF 'e'       /* host->guest: end of stdin / of put data */
#define F_SIGNAL 's'    /* host->guest: key=value\0 signal=<n> */
#define F_DATA 'd'      /* both ways: file bytes (put / get) */
#define F_JSON 'j'      /* guest->host: one JSON object */
#define F_STDOUT '1'    /* guest->host */
#define F_STDERR '2'    /* guest->host */
#define F_TIME 't'      /* host->guest on the control channel: empty; answered with a time JSON */

int write_all(int fd, const void *buf, size_t n);
int send_frame(int fd, int type, const void *payload, size_t n);
int send_json(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* JSON string body escaping into out (always NUL-terminated). */
void json_escape(char *out, size_t cap, const char *in);

/* user.c: Docker's --user rules against the image's /etc/passwd and /etc/group. */
#define MAX_SUP_GROUPS 64
struct workload_user {
	unsigned long uid, gid;
	gid_t groups[MAX_SUP_GROUPS];
	int ngroups;
	char name[64];
	char home[256];   /* "" when the user has no passwd entry */
};
int resolve_user(const char *spec, struct workload_user *out, char *err, size_t errcap);

#endif
