// Wire types of Firecracker's HTTP API, named and shaped as in its Swagger definition
// (vendor/firecracker/firecracker-v1.13.1-api.yaml). Fields marked "≥ 1.16" exist only in
// the v1.16.1 definition; the driver sends them only when GET /version says it may
// (see version.ts). Firecracker deserializes every body with unknown fields denied, so a
// field an older server does not know fails the whole request.

export interface TokenBucket {
  size: number;
  /** Milliseconds to refill the bucket from empty. */
  refill_time: number;
  one_time_burst?: number;
}

export interface RateLimiter {
  bandwidth?: TokenBucket;
  ops?: TokenBucket;
}

export type CpuTemplate = 'C3' | 'T2' | 'T2S' | 'T2CL' | 'T2A' | 'V1N1' | 'None';

export interface MachineConfiguration {
  vcpu_count: number;
  mem_size_mib: number;
  smt?: boolean;
  track_dirty_pages?: boolean;
  huge_pages?: 'None' | '2M';
  cpu_template?: CpuTemplate;
}

export interface BootSource {
  kernel_image_path: string;
  boot_args?: string;
  initrd_path?: string;
}

export interface Drive {
  drive_id: string;
  is_root_device: boolean;
  is_read_only?: boolean;
  path_on_host?: string;
  partuuid?: string;
  cache_type?: 'Unsafe' | 'Writeback';
  io_engine?: 'Sync' | 'Async';
  rate_limiter?: RateLimiter;
}

export interface PartialDrive {
  drive_id: string;
  path_on_host?: string;
  rate_limiter?: RateLimiter;
}

export interface NetworkInterface {
  iface_id: string;
  host_dev_name: string;
  guest_mac?: string;
  rx_rate_limiter?: RateLimiter;
  tx_rate_limiter?: RateLimiter;
  /** ≥ 1.16 */
  mtu?: number;
}

export interface PartialNetworkInterface {
  iface_id: string;
  rx_rate_limiter?: RateLimiter;
  tx_rate_limiter?: RateLimiter;
}

export interface Vsock {
  guest_cid: number;
  uds_path: string;
}

export interface EntropyDevice {
  rate_limiter?: RateLimiter;
}

export interface Balloon {
  amount_mib: number;
  deflate_on_oom: boolean;
  stats_polling_interval_s?: number;
}

export interface BalloonUpdate {
  amount_mib: number;
}

export interface BalloonStatsUpdate {
  stats_polling_interval_s: number;
}

export interface BalloonStats {
  target_pages: number;
  actual_pages: number;
  target_mib: number;
  actual_mib: number;
  [field: string]: number;
}

export type LogLevel = 'Error' | 'Warning' | 'Info' | 'Debug' | 'Trace' | 'Off';

export interface Logger {
  log_path?: string;
  level?: LogLevel;
  show_level?: boolean;
  show_log_origin?: boolean;
  module?: string;
}

export interface Metrics {
  metrics_path: string;
}

export interface MmdsConfig {
  network_interfaces: string[];
  version?: 'V1' | 'V2';
  ipv4_address?: string;
  imds_compat?: boolean;
}

export type InstanceActionType = 'FlushMetrics' | 'InstanceStart' | 'SendCtrlAltDel';

export interface InstanceActionInfo {
  action_type: InstanceActionType;
}

export interface VmState {
  state: 'Paused' | 'Resumed';
}

export type SnapshotType = 'Full' | 'Diff';

export interface SnapshotCreateParams {
  snapshot_path: string;
  mem_file_path: string;
  snapshot_type?: SnapshotType;
}

export interface MemoryBackend {
  backend_type: 'File' | 'Uffd';
  backend_path: string;
}

export interface NetworkOverride {
  iface_id: string;
  host_dev_name: string;
}

export interface SnapshotLoadParams {
  snapshot_path: string;
  mem_backend?: MemoryBackend;
  track_dirty_pages?: boolean;
  resume_vm?: boolean;
  network_overrides?: NetworkOverride[];
  /** ≥ 1.16 */
  vsock_override?: { uds_path: string };
  /** ≥ 1.16, x86_64 only */
  clock_realtime?: boolean;
}

export interface FirecrackerVersionBody {
  firecracker_version: string;
}

export interface InstanceInfo {
  app_name: string;
  id: string;
  state: 'Not started' | 'Running' | 'Paused';
  vmm_version: string;
}

export interface ApiErrorBody {
  fault_message?: string;
}
