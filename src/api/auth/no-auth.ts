// --no-auth is allowed, never quiet: this text goes to stderr and the log at start and into
// every /healthz answer.
export const NO_AUTH_WARNING =
  'kilnd runs with --no-auth: any local user or process that can reach the API port controls every VM (Host and Origin are still checked)';
