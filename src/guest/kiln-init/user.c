/*
 * The workload's user, resolved the way Docker resolves `--user` / the image's
 * USER: "name|uid[:group|gid]" against the image's own /etc/passwd and
 * /etc/group (read after the root switch, so they are the image's files; the
 * guest has no NSS). A uid alone takes its passwd gid (0 if it has no entry);
 * a name that is not in passwd, or a group name not in group, is an error.
 * Supplementary groups are the groups that list the user by name.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kiln-init.h"

#define LINE_MAX_LEN 4096

static int is_num(const char *s)
{
	return *s && strspn(s, "0123456789") == strlen(s) && strlen(s) <= 10;
}

/* Splits a colon-separated line in place into at most `max` fields; returns the count. */
static int split(char *line, char **f, int max)
{
	int n = 0;

	line[strcspn(line, "\r\n")] = 0;
	f[n++] = line;
	for (char *p = line; *p && n < max; p++)
		if (*p == ':') {
			*p = 0;
			f[n++] = p + 1;
		}
	return n;
}

int resolve_user(const char *spec, struct workload_user *out, char *err, size_t errcap)
{
	char buf[512], line[LINE_MAX_LEN], *f[7];
	const char *group = NULL, *name = NULL;
	unsigned long v;
	int have_row = 0;
	FILE *fp;

	snprintf(buf, sizeof(buf), "%s", spec);
	{
		char *colon = strchr(buf, ':');

		if (colon) {
			*colon = 0;
			group = colon + 1;
		}
	}
	if (!buf[0] || (group && !group[0])) {
		snprintf(err, errcap, "bad user %.100s", spec);
		return -1;
	}
	memset(out, 0, sizeof(*out));
	out->home[0] = 0;
	if ((fp = fopen("/etc/passwd", "re"))) {
		while (fgets(line, sizeof(line), fp)) {
			int n;

			if (line[0] == '#' || (n = split(line, f, 7)) < 4)
				continue;
			if (strcmp(f[0], buf) && !(is_num(buf) && !strcmp(f[2], buf)))
				continue;
			if (parse_num(f[2], &v) || v > 0xfffffffeUL)
				continue;
			out->uid = v;
			if (parse_num(f[3], &v) == 0 && v <= 0xfffffffeUL)
				out->gid = v;
			snprintf(out->name, sizeof(out->name), "%s", f[0]);
			if (n >= 6)
				snprintf(out->home, sizeof(out->home), "%s", f[5]);
			have_row = 1;
			break;
		}
		fclose(fp);
	}
	if (!have_row) {
		if (!is_num(buf)) {
			snprintf(err, errcap, "unable to find user %.100s: no matching entries in passwd file", buf);
			return -1;
		}
		parse_num(buf, &v);
		out->uid = v;
		out->gid = 0;
	}
	name = have_row ? out->name : NULL;

	out->ngroups = 0;
	if ((fp = fopen("/etc/group", "re"))) {
		int found_group = group == NULL || is_num(group);

		while (fgets(line, sizeof(line), fp)) {
			int n;

			if (line[0] == '#' || (n = split(line, f, 4)) < 3 || parse_num(f[2], &v) || v > 0xfffffffeUL)
				continue;
			if (group && !is_num(group) && !strcmp(f[0], group)) {
				out->gid = v;
				found_group = 1;
			}
			/* Members: comma-separated names in the 4th field. */
			if (name && n == 4 && out->ngroups < MAX_SUP_GROUPS) {
				for (char *save, *m = strtok_r(f[3], ",", &save); m; m = strtok_r(NULL, ",", &save))
					if (!strcmp(m, name)) {
						out->groups[out->ngroups++] = (gid_t)v;
						break;
					}
			}
		}
		fclose(fp);
		if (!found_group) {
			snprintf(err, errcap, "unable to find group %.100s: no matching entries in group file", group);
			return -1;
		}
	} else if (group && !is_num(group)) {
		snprintf(err, errcap, "unable to find group %.100s: no /etc/group in the image", group);
		return -1;
	}
	if (group && is_num(group)) {
		parse_num(group, &v);
		out->gid = v;
	}
	return 0;
}
