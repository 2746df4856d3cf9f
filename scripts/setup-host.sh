#!/usr/bin/env bash
# Installs what kiln needs on a Debian host, idempotently: Debian packages (only the missing
# ones, so a set-up machine makes no apt calls) and npm dependencies (only when the lock
# file changed since the last install). Guest kernel, kiln-init and the default image are
# built by kilnd itself at start, into its assets dir.
set -euo pipefail
cd "$(dirname "$0")/.."

# command:package pairs; the command's presence proves the package is there.
needs=(
  qemu-system-x86_64:qemu-system-x86
  mksquashfs:squashfs-tools
  mkfs.erofs:erofs-utils
  setfattr:attr
  mkfs.btrfs:btrfs-progs
  mkfs.ext4:e2fsprogs
  cpio:cpio
  modprobe:kmod
  depmod:kmod
  cc:gcc
  xz:xz-utils
  zstd:zstd
  # Firecracker boots an ELF vmlinux: extracting one from a bzImage may need any of these
  bzip2:bzip2
  lzop:lzop
  lz4:lz4
  ip:iproute2
  nft:nftables
  # snapshot clones: sysctls inside their network namespaces; Firecracker enters them with nsenter
  sysctl:procps
  nsenter:util-linux
  # image pulls: tests run a real registry and build/push images with umoci + skopeo
  docker-registry:docker-registry
  skopeo:skopeo
  umoci:umoci
  setfattr:attr
  mkfs.btrfs:btrfs-progs
  openssl:openssl
  debootstrap:debootstrap
  chroot:coreutils
  # classic VMs: offline disk resize; the tests SSH into them with a key they generate
  resize2fs:e2fsprogs
  e2fsck:e2fsprogs
  ssh:openssh-client
  ssh-keygen:openssh-client
  # VMM confinement: the unprivileged user QEMU runs as (docs/security.md)
  useradd:passwd
  # the dashboard's browser tests drive Debian's Chromium (playwright-core never downloads one)
  chromium:chromium
  # the deploy tests check the cluster's systemd units with systemd-analyze verify
  systemd-analyze:systemd
)
missing=()
for pair in "${needs[@]}"; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair##*:}")
done
# The default image needs a *static* busybox (the dynamic one would not run in the guest).
if ! { [ -x /bin/busybox ] && ! grep -q /lib64/ld-linux /bin/busybox; }; then missing+=(busybox-static); fi
[ -f /usr/lib/x86_64-linux-gnu/libc.a ] || missing+=(libc6-dev)
# kiln clusters keep their state in PostgreSQL (`kiln serve --store postgres://…`); the store
# tests start a throwaway server with its initdb/pg_ctl, which Debian keeps off PATH.
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || missing+=(postgresql-15)
if [ ${#missing[@]} -gt 0 ]; then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  echo "kiln setup: installing Debian packages: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

# The user QEMU drops to (kilnd also creates it at start when missing: `npx kiln serve` works
# without this script). KILN_VMM_USER names another one, or is empty to keep QEMU root.
vmm_user=${KILN_VMM_USER-kiln-vmm}
if [ -n "$vmm_user" ] && ! getent passwd "$vmm_user" >/dev/null; then
  useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
    --comment 'kiln VMM (QEMU runs as this user)' "$vmm_user"
fi

stamp=node_modules/.kiln-lock-hash
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || [ ! -d node_modules/better-sqlite3/build ]; then
  echo "kiln setup: installing npm dependencies" >&2
  npm ci --no-audit --no-fund --loglevel=error
  echo "$want" > "$stamp"
fi
