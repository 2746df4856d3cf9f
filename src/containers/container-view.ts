// ContainerInfo → API JSON (snake_case, ISO timestamps).
import type { Container } from '../api/schemas.ts';
import type { Store } from '../store/store.ts';
import type { ContainerInfo } from './container-service.ts';
import { mergeProcess } from './oci-process.ts';
import { formatRestartPolicy } from './restart-policy.ts';

const iso = (ms: number) => new Date(ms).toISOString();

export async function containerView(store: Store, info: ContainerInfo): Promise<Container> {
  const { container: c, vm } = info;
  const image = await store.getImage(vm.imageId);
  let command: string[] = [];
  let workdir = vm.process?.workdir ?? '/';
  let user = vm.process?.user ?? '';
  if (image) {
    try {
      const p = mergeProcess(image.config, { cmd: vm.cmd, entrypoint: vm.process?.entrypoint ?? null, env: vm.env, workdir: vm.process?.workdir, user: vm.process?.user });
      command = p.argv;
      workdir = p.cwd;
      user = 'spec' in p.user ? p.user.spec : `${p.user.uid}:${p.user.gid}`;
    } catch {
      // An image changed under the container: show what is stored.
    }
  }
  return {
    id: c.id,
    name: vm.name,
    image: c.image,
    image_id: vm.imageId,
    state: info.state,
    vm_state: vm.state,
    state_reason: vm.stateReason,
    exit_code: vm.exitCode,
    command,
    entrypoint: vm.process?.entrypoint ?? null,
    cmd: vm.cmd,
    env: vm.env,
    workdir,
    user,
    restart_policy: formatRestartPolicy(c.restart),
    restart_count: c.restartCount,
    restart_at: info.restartAt === null ? null : iso(info.restartAt),
    auto_remove: c.autoRemove,
    ip: vm.ip,
    ports: vm.ports.map((p) => ({ host: p.hostPort, guest: p.guestPort, proto: p.proto })),
    volumes: vm.volumes.map((v) => ({ volume: v.volumeId ?? null, host_path: v.hostPath ?? null, target: v.target, read_only: v.readOnly })),
    vcpus: vm.vcpus,
    memory_mib: vm.memoryMib,
    boot_count: vm.bootCount,
    created_at: iso(c.createdAt),
    updated_at: iso(vm.updatedAt),
  };
}
