// The seam between VM lifecycle and the guest agent (docs/agent-protocol.md): what goes into
// a VM's config drive, how kilnd reaches its agent, and the per-VM token. Tokens are derived
// (HMAC of the VM id under a secret kept in the state dir), so they survive kilnd restarts
// without a store migration and are never written anywhere a guest or API client can read.
import { createHmac, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { AgentClient, type AgentClientOptions, type AgentTarget } from '../guest/agent/client.ts';
import type { GuestAgentConfig } from '../guest/config-drive.ts';

/** Guest TCP port of agent sessions (kiln-init's default). */
export const AGENT_SESSION_PORT = 10240;
/** Guest vsock port of agent sessions, and host vsock port of its pushes (Firecracker). */
export const AGENT_VSOCK_PORT = 10240;

export class AgentTokens {
  private constructor(private readonly secret: Buffer) {}

  /** Loads `<stateDir>/agent.secret`, creating it (0600) on first use. */
  static async load(stateDir: string): Promise<AgentTokens> {
    const file = path.join(stateDir, 'agent.secret');
    try {
      const s = await fs.readFile(file);
      if (s.length === 32) return new AgentTokens(s);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    const secret = randomBytes(32);
    const tmp = `${file}.${process.pid}.tmp`;
    await fs.writeFile(tmp, secret, { mode: 0o600 });
    await fs.rename(tmp, file);
    return new AgentTokens(secret);
  }

  tokenFor(vmId: string): string {
    return createHmac('sha256', this.secret).update(`kiln-agent-token\0${vmId}`).digest('hex');
  }
}

/** How a VM's agent is reached; undefined when it has no channel (no network, no vsock). */
export function agentTarget(vm: { ip?: string | null }, opts: { vsockUds?: string } = {}): AgentTarget | undefined {
  if (opts.vsockUds) return { kind: 'vsock', udsPath: opts.vsockUds, port: AGENT_VSOCK_PORT };
  if (vm.ip) return { kind: 'tcp', host: vm.ip, port: AGENT_SESSION_PORT };
  return undefined;
}

/**
 * The config-drive keys for a VM's agent. `pushTo` is kilnd's AgentListener address on the
 * VM's bridge (`<gateway ip>:<agent port>`); with `vsock`, the agent uses vsock both ways.
 */
export function agentConfigFor(
  vm: { id: string },
  tokens: AgentTokens,
  channel: { pushTo?: { host: string; port: number }; vsock?: boolean },
): GuestAgentConfig {
  const cfg: GuestAgentConfig = { token: tokens.tokenFor(vm.id), port: AGENT_SESSION_PORT };
  if (channel.vsock) cfg.vsockPort = AGENT_VSOCK_PORT;
  else if (channel.pushTo) cfg.host = `${channel.pushTo.host}:${channel.pushTo.port}`;
  return cfg;
}

export function agentClientFor(
  vm: { id: string; ip?: string | null },
  tokens: AgentTokens,
  opts: AgentClientOptions & { vsockUds?: string } = {},
): AgentClient | undefined {
  const target = agentTarget(vm, opts);
  return target && new AgentClient(target, tokens.tokenFor(vm.id), opts);
}
