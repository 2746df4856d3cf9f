// kiln's public TypeScript SDK.
export { KilnApiError, KilnClient, type KilnClientOptions, type KilnEvent, type CreateVmBody, type Image, type Vm } from './client.ts';
export { apiTokenPath, readApiToken, WS_PROTOCOL, WS_TOKEN_PREFIX } from './api-token.ts';
