/**
 * The hooks with servers that change under them: a restart mid-run, several Node processes on
 * one server, a server that wants a token.
 */
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { test } from 'node:test'

import { Forbidden, Unauthorized, makeHttpPersistence } from '../src/index.js'
import { Rig, Server, agentSnapshot, finish, runSteps, started, takeStep, wire } from './support.js'

const run = promisify(execFile)

test('hooks retry through a server restart and lose nothing', async () => {
  const server = await new Server().start()
  try {
    const rig = new Rig(server)
    const hooks = makeHttpPersistence(server.url, {
      retry: { maxAttempts: 100, firstDelayMs: 20, maxDelayMs: 200, totalMs: 60_000 },
      fetch: rig.recorder.fetch,
    })
    const snapshot = agentSnapshot('restarted')
    await hooks.onRunStart(snapshot)
    await runSteps(hooks, snapshot, 3)
    await server.stop()
    // The hook starts while nothing listens, and keeps trying until the server is back.
    const step = hooks.onStepComplete(takeStep(snapshot))
    await new Promise((resolve) => setTimeout(resolve, 300))
    await server.restart()
    await step
    await runSteps(hooks, snapshot, 2)
    await hooks.onRunComplete(finish(snapshot))
    assert.deepEqual(await rig.stored('restarted'), wire(snapshot))
    // Still deltas after the restart: the store kept what it confirmed.
    const writes = rig.writes('restarted')
    assert.deepEqual(
      writes.map((w) => w.method),
      ['PUT', ...Array<string>(7).fill('PATCH')],
    )
    await hooks.close()
    await rig.close()
  } finally {
    await server.close()
  }
})

test('several Node processes share one server', async () => {
  const server = await new Server().start()
  try {
    const agent = fileURLToPath(new URL('agent-process.js', import.meta.url))
    const [processes, runs, steps] = [4, 3, 25]
    const outputs = await Promise.all(
      Array.from({ length: processes }, (_, worker) =>
        run(process.execPath, [agent, server.url, String(worker), String(runs), String(steps)]),
      ),
    )
    assert.deepEqual(
      outputs.map((o) => o.stdout),
      Array<string>(processes).fill('done\n'),
    )
    const rig = new Rig(server)
    for (let worker = 0; worker < processes; worker += 1) {
      for (let n = 0; n < runs; n += 1) {
        const expected = agentSnapshot(`shared-${worker}-${n}`)
        for (let step = 0; step < steps; step += 1) {
          takeStep(expected, ` by ${worker}`)
        }
        assert.deepEqual(await rig.stored(expected.runId), wire(finish(expected)))
      }
    }
    await rig.close()
  } finally {
    await server.close()
  }
})

test('a server with tokens answers by problem type: no token, a read token, a write token', async () => {
  const server = await new Server({ RUNSTORE_TOKENS: 'reader:read,writer:write' }).start()
  try {
    const snapshot = agentSnapshot('guarded')
    const anonymous = makeHttpPersistence(server.url)
    const error = await anonymous.onRunStart(snapshot).catch((e: unknown) => e)
    assert.ok(error instanceof Unauthorized, String(error))
    assert.equal(error.status, 401)
    assert.equal(error.type, 'urn:runstore:problem:unauthorized')
    const reader = makeHttpPersistence(server.url, { token: 'reader' })
    await assert.rejects(reader.onRunStart(snapshot), Forbidden)
    const writer = makeHttpPersistence(server.url, { token: 'writer' })
    await writer.onRunStart(snapshot)
    await runSteps(writer, snapshot, 2)
    assert.deepEqual(await reader.loadRun('guarded'), wire(snapshot))
    await Promise.all([anonymous.close(), reader.close(), writer.close()])
  } finally {
    await server.close()
  }
})

test('an unreachable store is StoreUnavailable once retries are spent', async () => {
  const server = await new Server().start()
  const url = server.url
  await server.close()
  const hooks = makeHttpPersistence(url, { retry: { maxAttempts: 3, firstDelayMs: 1 } })
  const error = await hooks.onRunStart(agentSnapshot('nowhere')).catch((e: unknown) => e)
  assert.ok(error instanceof Error && error.name === 'StoreUnavailable', String(error))
  assert.equal((error as { attempts?: number }).attempts, 3)
  assert.equal((error as { status?: unknown }).status, null)
  assert.ok(error.cause instanceof Error)
})

test('hooks after close() still work (close releases nothing the next hook needs)', async () => {
  const server = await new Server().start()
  try {
    const rig = new Rig(server)
    const snapshot = await started(rig, 'after-close', 1)
    await rig.hooks.close()
    await rig.hooks.onStepComplete(takeStep(snapshot))
    assert.deepEqual(await rig.stored('after-close'), wire(snapshot))
    // The ledger was cleared, so the run went whole.
    assert.equal(rig.writes('after-close').at(-1)?.method, 'PUT')
    await rig.close()
  } finally {
    await server.close()
  }
})
