/* Shared by kiln-init's source files (kiln-init.c, net.c, agent.c, session.c). */
#ifndef KILN_INIT_H
#define KILN_INIT_H

#include <poll.h>
#include <stddef.h>
#include <sys/types.h>
#include <time.h>

#define KILN_AGENT_VERSION "0.2.0"
#define KILN_AGENT_PROTO 1

long long now_ms(clockid_t clk);
long long now_us(clockid_t clk);
void marker(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* A failure worth telling the host about, but not one that stops the boot. */
void report(const char *stage, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int parse_num(const char *s, unsigned long *out);
/* execve() with a PATH search in `env`'s PATH, not ours; returns only on failure (errno set). */
void exec_search(char **argv, char **env);

/* net.c: static IPv4 from the kernel command line. Returns 1 if an interface was configured. */
int net_setup(void);
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
#define F_OPEN 'o'      /* host->guest: key=value\0..., first frame of a session */
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

#endif
