/**
 * One agent process of the sharing test: `node agent-process.js <url> <worker> <runs> <steps>`
 * runs its runs through its own hooks and prints `done` once every hook has resolved.
 */
import { makeHttpPersistence } from '../src/index.js'
import { agentSnapshot, finish, takeStep } from './support.js'

const [url, worker, runs, steps] = process.argv.slice(2)
const hooks = makeHttpPersistence(url ?? '', { retry: { totalMs: 60_000 } })
for (let run = 0; run < Number(runs); run += 1) {
  const snapshot = agentSnapshot(`shared-${worker}-${run}`)
  await hooks.onRunStart(snapshot)
  for (let step = 0; step < Number(steps); step += 1) {
    await hooks.onStepComplete(takeStep(snapshot, ` by ${worker}`))
  }
  await hooks.onRunComplete(finish(snapshot))
}
await hooks.close()
process.stdout.write('done\n')
