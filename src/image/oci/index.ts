// Public surface of the OCI pull side (see types.ts for the contract).
export * from './types.ts';
export { pullImage, DEFAULT_PLATFORM } from './pull.ts';
export { importOciLayout } from './import-oci-layout.ts';
export { importDockerArchive } from './import-docker-archive.ts';
export { openLayerTar, decompressStream, sniffCompression } from './layer-stream.ts';
export { parseImageReference } from './reference.ts';
export { BlobStore, DigestMismatchError } from './blob-store.ts';
export { isLoopbackRegistry } from './registry-client.ts';
