// Containers through the API role. A container is a VM (same id, same name), so it is placed
// like one (best of K, image locality; on its volumes' node when it attaches volumes:
// api-placement.ts), and everything about one container (stop, start, logs with ?follow, exec,
// stats, delete) is sent on to the node in its VM's row, streams included. The list is every
// ready node's, each container tagged with its node.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { KilnError } from '../errors.ts';
import { gatherLists, mergeLists } from './api-merge.ts';
import { forwardCreate, type ClusterRouteContext } from './api-placement.ts';

/** A container's default size (CreateContainerBody: memory_mib defaults to 128). */
const CONTAINER_DEFAULTS = { vcpus: 1, memoryMib: 128 };

export function registerClusterContainerRoutes(app: FastifyInstance, c: ClusterRouteContext): void {
  app.post('/v1/containers', (req, reply) => forwardCreate(c, req, reply, 'container', CONTAINER_DEFAULTS));

  app.get('/v1/containers', async (req) => {
    const query = req.url.includes('?') ? req.url.slice(req.url.indexOf('?')) : '';
    // Each node lists only its own containers: no entry comes from two nodes.
    return { containers: mergeLists(await gatherLists(c.store, c.fwd, `/v1/containers${query}`, 'containers')) };
  });

  const toOwner = async (req: FastifyRequest<{ Params: { id: string } }>, reply: FastifyReply) => {
    const vm = await c.store.getVm(req.params.id);
    if (!vm || !(await c.store.getContainer(vm.id))) throw new KilnError('KILN_ERR_CONTAINER_NOT_FOUND', `no container ${JSON.stringify(req.params.id)}`);
    const node = vm.nodeId ? await c.store.getNode(vm.nodeId) : null;
    if (!node || node.state !== 'ready') {
      throw new KilnError('KILN_ERR_NODE_UNAVAILABLE', `container ${vm.id} is on node ${node?.name ?? vm.nodeId ?? '(none)'}, which is ${node?.state ?? 'not registered'}`, { vm: vm.id, node: vm.nodeId ?? null });
    }
    void reply.header('x-kiln-node', node.name);
    return c.fwd.forward(req, reply, node, req.body as Buffer | undefined);
  };
  app.all('/v1/containers/:id', toOwner);
  app.all('/v1/containers/:id/*', toOwner);
}
