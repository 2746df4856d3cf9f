/*
 * Static IPv4 for eth0 from the kernel command line (no DHCP: the host chose
 * the address before boot). kiln.ip=<addr>/<prefix> kiln.gw=<addr> [kiln.mtu=<n>].
 * ioctl only: images may have no ip(8) and the initramfs has nothing but us.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <netpacket/packet.h>
#include <net/route.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "kiln-init.h"

#define NIC_WAIT_MS 3000

char net_ip[16];

struct net_params {
	struct in_addr ip, gw;
	int prefix, have_gw;
	unsigned long mtu;
};

/* 0: no kiln.ip (no network wanted); 1: parsed; -1: malformed. */
static int read_cmdline(struct net_params *np)
{
	char buf[4096], *tok, *save = NULL;
	int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC), found = 0;
	ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof(buf) - 1);

	if (fd >= 0)
		close(fd);
	if (n <= 0)
		return 0;
	buf[n] = 0;
	for (tok = strtok_r(buf, " \t\n", &save); tok; tok = strtok_r(NULL, " \t\n", &save)) {
		if (!strncmp(tok, "kiln.ip=", 8)) {
			char *slash = strchr(tok + 8, '/');
			unsigned long prefix;

			if (!slash || parse_num(slash + 1, &prefix) || prefix < 1 || prefix > 32)
				return -1;
			*slash = 0;
			if (inet_pton(AF_INET, tok + 8, &np->ip) != 1)
				return -1;
			np->prefix = (int)prefix;
			found = 1;
		} else if (!strncmp(tok, "kiln.gw=", 8)) {
			if (inet_pton(AF_INET, tok + 8, &np->gw) != 1)
				return -1;
			np->have_gw = 1;
		} else if (!strncmp(tok, "kiln.mtu=", 9)) {
			if (parse_num(tok + 9, &np->mtu) || np->mtu < 68 || np->mtu > 65535)
				return -1;
		}
	}
	return found;
}

/* The first ethernet-type interface other than lo; eth0 normally. */
static int find_nic(char name[IFNAMSIZ])
{
	DIR *d = opendir("/sys/class/net");
	struct dirent *e;
	char best[IFNAMSIZ] = "";

	if (!d)
		return 0;
	while ((e = readdir(d))) {
		char path[300], type[16] = "";
		int fd;
		ssize_t n;

		if (e->d_name[0] == '.' || !strcmp(e->d_name, "lo") || strlen(e->d_name) >= IFNAMSIZ)
			continue;
		snprintf(path, sizeof(path), "/sys/class/net/%s/type", e->d_name);
		fd = open(path, O_RDONLY | O_CLOEXEC);
		n = fd < 0 ? -1 : read(fd, type, sizeof(type) - 1);
		if (fd >= 0)
			close(fd);
		if (n <= 0 || atoi(type) != ARPHRD_ETHER)
			continue;
		/* readdir order is arbitrary; the lowest name is the first NIC. */
		if (!best[0] || strcmp(e->d_name, best) < 0)
			memcpy(best, e->d_name, strlen(e->d_name) + 1);
	}
	closedir(d);
	if (!best[0])
		return 0;
	memcpy(name, best, IFNAMSIZ);
	return 1;
}

static void set_sin(struct sockaddr *sa, in_addr_t addr)
{
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_addr.s_addr = addr };

	memcpy(sa, &sin, sizeof(sin));
}

static int if_up(int s, const char *name)
{
	struct ifreq ifr;

	memset(&ifr, 0, sizeof(ifr));
	snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
	if (ioctl(s, SIOCGIFFLAGS, &ifr) != 0)
		return -1;
	ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
	return ioctl(s, SIOCSIFFLAGS, &ifr);
}

static int if_addr(int s, const char *name, in_addr_t addr, in_addr_t mask)
{
	struct ifreq ifr;

	memset(&ifr, 0, sizeof(ifr));
	snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
	set_sin(&ifr.ifr_addr, addr);
	if (ioctl(s, SIOCSIFADDR, &ifr) != 0)
		return -1;
	set_sin(&ifr.ifr_netmask, mask);
	return ioctl(s, SIOCSIFNETMASK, &ifr);
}

/*
 * Announces us so the host's neighbour table has our MAC before anyone asks:
 * an ARP request for our own address (RFC 5227 announcement).
 */
static void gratuitous_arp(const char *name, struct in_addr ip)
{
	struct {
		struct arphdr h;   /* glibc's: the operation fields follow it */
		unsigned char sha[ETH_ALEN], spa[4], tha[ETH_ALEN], tpa[4];
	} __attribute__((packed)) pkt;
	struct sockaddr_ll to = { .sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ARP), .sll_halen = ETH_ALEN };
	struct ifreq ifr;
	int s = socket(AF_PACKET, SOCK_DGRAM | SOCK_CLOEXEC, htons(ETH_P_ARP));

	if (s < 0) {
		report("net", errno, "packet socket");
		return;
	}
	memset(&ifr, 0, sizeof(ifr));
	snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
	if (ioctl(s, SIOCGIFHWADDR, &ifr) != 0 || ioctl(s, SIOCGIFINDEX, &ifr) != 0) {
		report("net", errno, "%s hwaddr", name);
		close(s);
		return;
	}
	/* SIOCGIFINDEX overwrote the union: fetch the MAC again. */
	to.sll_ifindex = ifr.ifr_ifindex;
	ioctl(s, SIOCGIFHWADDR, &ifr);
	memset(&pkt, 0, sizeof(pkt));
	pkt.h.ar_hrd = htons(ARPHRD_ETHER);
	pkt.h.ar_pro = htons(ETH_P_IP);
	pkt.h.ar_hln = ETH_ALEN;
	pkt.h.ar_pln = 4;
	pkt.h.ar_op = htons(ARPOP_REQUEST);
	memcpy(pkt.sha, ifr.ifr_hwaddr.sa_data, ETH_ALEN);
	memcpy(pkt.spa, &ip, 4);
	memcpy(pkt.tpa, &ip, 4);
	memset(to.sll_addr, 0xff, ETH_ALEN);
	if (sendto(s, &pkt, sizeof(pkt), 0, (struct sockaddr *)&to, sizeof(to)) < 0)
		report("net", errno, "gratuitous arp");
	close(s);
}

static int nic_present(char name[IFNAMSIZ])
{
	struct timespec nap = { 0, 2 * 1000000 };
	long long deadline = now_ms(CLOCK_MONOTONIC) + NIC_WAIT_MS;

	while (!find_nic(name)) {
		if (now_ms(CLOCK_MONOTONIC) >= deadline)
			return 0;
		nanosleep(&nap, NULL);
	}
	return 1;
}

int net_setup(void)
{
	struct net_params np = { 0 };
	char nic[IFNAMSIZ];
	in_addr_t mask;
	int s, r = read_cmdline(&np);

	if (r < 0) {
		report("net", EINVAL, "malformed kiln.ip/kiln.gw/kiln.mtu on the kernel command line");
		return 0;
	}
	if (r == 0)
		return 0;
	if (!nic_present(nic)) {
		report("net", ENODEV, "kiln.ip given but no ethernet interface appeared");
		return 0;
	}
	s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (s < 0) {
		report("net", errno, "socket");
		return 0;
	}
	mask = np.prefix == 32 ? 0xffffffffu : htonl(~((1u << (32 - np.prefix)) - 1));
	if (np.mtu) {
		struct ifreq ifr;

		memset(&ifr, 0, sizeof(ifr));
		snprintf(ifr.ifr_name, IFNAMSIZ, "%s", nic);
		ifr.ifr_mtu = (int)np.mtu;
		if (ioctl(s, SIOCSIFMTU, &ifr) != 0)
			report("net", errno, "%s mtu %lu", nic, np.mtu);
	}
	if (if_addr(s, nic, np.ip.s_addr, mask) != 0 || if_up(s, nic) != 0) {
		report("net", errno, "configure %s", nic);
		close(s);
		return 0;
	}
	if (np.have_gw) {
		struct rtentry rt;

		memset(&rt, 0, sizeof(rt));
		set_sin(&rt.rt_dst, INADDR_ANY);
		set_sin(&rt.rt_genmask, INADDR_ANY);
		set_sin(&rt.rt_gateway, np.gw.s_addr);
		rt.rt_flags = RTF_UP | RTF_GATEWAY;
		rt.rt_dev = nic;
		if (ioctl(s, SIOCADDRT, &rt) != 0 && errno != EEXIST)
			report("net", errno, "default route");
	}
	close(s);
	inet_ntop(AF_INET, &np.ip, net_ip, sizeof(net_ip));
	gratuitous_arp(nic, np.ip);
	return 1;
}

void net_read_ip(void)
{
	struct net_params np = { 0 };

	if (read_cmdline(&np) == 1)
		inet_ntop(AF_INET, &np.ip, net_ip, sizeof(net_ip));
}
