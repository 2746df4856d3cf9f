// `kiln`: the CLI. Everything but `serve` talks to kilnd through the SDK.
import { Command } from 'commander';
import { KilnClient } from '../sdk/client.ts';
import { KILN_VERSION } from '../version.ts';
import { containerCommands } from './container-commands.ts';
import { consoleCommand } from './console-command.ts';
import { doctorCommand } from './doctor.ts';
import { execCommands } from './exec-commands.ts';
import { fnCommands } from './fn-commands.ts';
import { imageCommands } from './image-commands.ts';
import { reportError } from './output.ts';
import { serveCommand } from './serve-command.ts';
import { vmCommands } from './vm-commands.ts';
import { volumeCommands } from './volume-commands.ts';
import { snapshotCommands, templateCommands } from './snapshot-commands.ts';

const program = new Command('kiln')
  .version(KILN_VERSION)
  .description('kiln: microVMs for functions, containers and VMs')
  .option('--api <url>', 'kilnd URL (default: $KILN_API or http://127.0.0.1:18080)')
  .option('--state-dir <dir>', "kilnd's state dir, to read its API token from (default: $KILN_STATE_DIR or /var/lib/kiln; $KILN_API_TOKEN wins)")
  .option('--json', 'print JSON instead of tables')
  // `kiln run IMAGE sh -c …`: options after a subcommand's arguments belong to the command.
  .enablePositionalOptions()
  .showHelpAfterError();

const client = () => new KilnClient({ url: program.opts().api, stateDir: program.opts().stateDir });
const json = () => Boolean(program.opts().json);

program.addCommand(serveCommand());
program.addCommand(vmCommands(client, json));
program.addCommand(imageCommands(client, json));
program.addCommand(doctorCommand(json));
program.addCommand(volumeCommands(client, json));
program.addCommand(consoleCommand(client));
program.addCommand(fnCommands(client, json));
program.addCommand(snapshotCommands(client, json));
program.addCommand(templateCommands(client, json));
for (const c of execCommands(client)) program.addCommand(c);
for (const c of containerCommands(client, json)) program.addCommand(c);
program.command('health').description('daemon status, backend and accelerator').action(async () => {
  const h = await client().health();
  if (json()) {
    console.log(JSON.stringify(h, null, 2));
    return;
  }
  const c = h.capacity;
  console.log(`kilnd ${h.version}: ${h.status}, backend ${h.backend} (${h.backend_reason}), ${h.accelerator} (${h.accelerator_reason}), kernel ${h.kernel}, ${h.vms} VMs`);
  console.log(`committed: ${c.vcpus.committed}/${c.vcpus.capacity} vCPUs, ${c.memory_mib.committed}/${c.memory_mib.capacity} MiB (${c.vms} VMs)`);
});

program.parseAsync(process.argv).catch(reportError);
