/**
 * The persistence hooks against a real `runstore serve`: the cases of the Python hooks suite
 * (tests/client/test_client_hooks.py), and the ordering of hooks a framework does not await.
 */
import assert from 'node:assert/strict'
import { after, before, beforeEach, afterEach, describe, test } from 'node:test'

import {
  InvalidRun,
  PreconditionFailed,
  type RunSnapshot,
  RunStoreError,
  StaleWrite,
  StoreUnavailable,
} from '../src/index.js'
import {
  Rig,
  Server,
  type Snapshot,
  agentSnapshot,
  finish,
  runSteps,
  started,
  takeStep,
  wire,
} from './support.js'

let server: Server
let rig: Rig

before(async () => {
  server = await new Server().start()
})
after(async () => {
  await server.close()
})
beforeEach(() => {
  rig = new Rig(server)
})
afterEach(async () => {
  await rig.close()
})

const rejectsWith = async <E extends RunStoreError>(
  promise: Promise<unknown>,
  kind: abstract new (...args: never[]) => E,
): Promise<E> => {
  try {
    await promise
  } catch (error) {
    assert.ok(error instanceof kind, `expected ${kind.name}, got ${String(error)}`)
    return error
  }
  assert.fail(`expected ${kind.name}, but the hook resolved`)
}

describe('what is stored', () => {
  for (const [runId, shape] of [
    ['trip-1', 'same object'],
    ['trip-2', 'new object at every hook'],
  ] as const) {
    test(`a run reads back as the agent last held it (${shape})`, async () => {
      const snapshot = agentSnapshot(runId, { labels: { team: 'travel' } })
      // A framework with immutable snapshots hands over a new object at every hook.
      const given = (current: Snapshot): Snapshot =>
        shape === 'same object' ? current : structuredClone(current)
      await rig.hooks.onRunStart(given(snapshot))
      for (let step = 0; step < 20; step += 1) {
        await rig.hooks.onStepComplete(given(takeStep(snapshot)))
        assert.deepEqual(await rig.stored(runId), wire(snapshot))
      }
      await rig.hooks.onRunComplete(given(finish(snapshot)))
      assert.deepEqual(await rig.stored(runId), wire(snapshot))
      const loaded = await rig.hooks.loadRun<RunSnapshot>(runId)
      assert.deepEqual(loaded, wire(snapshot))
      assert.equal(loaded?.status, 'completed')
    })
  }

  test('loadRun of an unknown run is null', async () => {
    assert.equal(await rig.hooks.loadRun('never-started'), null)
  })

  test('a rewritten last step is sent again', async () => {
    const snapshot = await started(rig, 'revise', 4)
    snapshot.trace.at(-1)!.output = 'a better result'
    await runSteps(rig.hooks, snapshot, 1)
    assert.deepEqual(await rig.stored('revise'), wire(snapshot))
    const body = JSON.parse(rig.writes('revise').at(-1)!.body) as Record<string, unknown[]>
    assert.equal(body.traceFrom, 3)
    assert.equal(body.trace?.length, 2)
  })

  test('a rewritten earlier step is stored by completion', async () => {
    const snapshot = await started(rig, 'early-rewrite', 6)
    snapshot.trace[1]!.output = 'corrected'
    await runSteps(rig.hooks, snapshot, 2)
    await rig.hooks.onRunComplete(finish(snapshot))
    assert.deepEqual(await rig.stored('early-rewrite'), wire(snapshot))
  })

  test('an agent may rewind its own trace', async () => {
    const snapshot = await started(rig, 'rewind', 6)
    snapshot.trace.length = 3
    snapshot.stepIndex = 3
    await rig.hooks.onStepComplete(snapshot)
    assert.deepEqual(await rig.stored('rewind'), wire(snapshot))
    await runSteps(rig.hooks, snapshot, 2)
    assert.deepEqual(await rig.stored('rewind'), wire(snapshot))
  })

  test('a history summarised shorter is stored, then a history cleared', async () => {
    const snapshot = await started(rig, 'summarised', 6)
    snapshot.history = [{ role: 'system', content: 'summary of 6 steps' }]
    await runSteps(rig.hooks, snapshot, 1)
    assert.deepEqual(await rig.stored('summarised'), wire(snapshot))
    snapshot.history = null
    await rig.hooks.onStepComplete(snapshot)
    assert.deepEqual(await rig.stored('summarised'), wire(snapshot))
  })

  test('fields set, cleared and unknown fields follow the agent', async () => {
    const snapshot = await started(rig, 'fields', 1)
    const changes: Record<string, unknown>[] = [
      { error: 'rate limited', 'x-framework': { attempt: 1 } },
      { error: null, 'x-framework': { attempt: 2 }, plan: null },
      { 'x-framework': null },
      { 'x-framework': 'gone' },
    ]
    for (const change of changes) {
      Object.assign(snapshot, change)
      await runSteps(rig.hooks, snapshot, 1)
      assert.deepEqual(await rig.stored('fields'), wire(snapshot))
    }
    delete snapshot['x-framework']
    // An optional field left undefined, as TypeScript frameworks leave them, is absent.
    snapshot.error = undefined as unknown as null
    await runSteps(rig.hooks, snapshot, 1)
    const expected = wire(snapshot)
    delete expected.error
    assert.deepEqual(await rig.stored('fields'), expected)
  })
})

describe('deltas', () => {
  test('step bodies stay flat as the run grows', async () => {
    const snapshot = await started(rig, 'long-run')
    const sizes = new Map<number, number>()
    for (let step = 1; step <= 300; step += 1) {
      await rig.hooks.onStepComplete(takeStep(snapshot))
      sizes.set(step, Buffer.byteLength(rig.writes('long-run').at(-1)!.body))
    }
    await rig.hooks.onRunComplete(finish(snapshot))

    const writes = rig.writes('long-run')
    assert.deepEqual(
      writes.map((w) => w.method),
      ['PUT', ...Array<string>(301).fill('PATCH')],
    )
    const [at10, at300] = [sizes.get(10)!, sizes.get(300)!]
    // Only digits grow (traceFrom, step numbers, token counts): a few bytes, not a trace.
    assert.ok(Math.abs(at300 - at10) <= 16, `step 10: ${at10} bytes, step 300: ${at300}`)
    assert.ok(at300 * 20 < JSON.stringify(wire(snapshot)).length)
    const step300 = JSON.parse(writes[300]!.body) as Record<string, unknown>
    assert.equal(step300.traceFrom, 299)
    assert.deepEqual(step300.trace, [snapshot.trace[299]])
    assert.equal(step300.historyFrom, 300)
    assert.deepEqual(step300.history, [snapshot.history![300]])
    assert.deepEqual(Object.keys(step300).sort(), [
      'history',
      'historyFrom',
      'iterations',
      'stepIndex',
      'trace',
      'traceFrom',
      'usage',
    ])
    assert.deepEqual(await rig.stored('long-run'), wire(snapshot))
  })

  test('a hook with nothing new sends nothing', async () => {
    const snapshot = await started(rig, 'idle', 2)
    await rig.hooks.onStepComplete(snapshot)
    await rig.hooks.onStepComplete(structuredClone(snapshot))
    assert.equal(rig.writes('idle').length, 3)
  })

  test('a resumed run continues with deltas', async () => {
    const crashed = await started(rig, 'resume-me', 5) // this worker then dies mid-run
    const worker = rig.newHooks()
    const loaded = await worker.loadRun<Snapshot>('resume-me')
    assert.deepEqual(loaded, wire(crashed))
    const snapshot = loaded!
    await runSteps(worker, snapshot, 5)
    await worker.onRunComplete(finish(snapshot))

    assert.deepEqual(await rig.stored('resume-me'), wire(snapshot))
    assert.equal(snapshot.trace.length, 10)
    const resumed = rig.writes('resume-me').slice(6)
    assert.deepEqual(
      resumed.map((w) => w.method),
      Array<string>(6).fill('PATCH'),
    )
    assert.deepEqual(
      resumed.slice(0, 5).map((w) => (JSON.parse(w.body) as { traceFrom: number }).traceFrom),
      [5, 6, 7, 8, 9],
    )
  })
})

describe('when the store holds less than the hooks think', () => {
  test('a deleted run is put whole again', async () => {
    const snapshot = await started(rig, 'deleted', 3)
    assert.equal(await rig.other('DELETE', 'deleted'), 204)
    await rig.hooks.onStepComplete(takeStep(snapshot))
    assert.deepEqual(await rig.stored('deleted'), wire(snapshot))
    assert.deepEqual(
      rig
        .writes('deleted')
        .slice(-2)
        .map((w) => [w.method, w.status]),
      [
        ['PATCH', 404],
        ['PUT', 201],
      ],
    )
  })

  test('a trace gap falls back to a whole PUT', async () => {
    const snapshot = await started(rig, 'gap', 5)
    // Another writer replaces the run with a shorter one (If-Match lets it).
    const shorter = { ...wire(snapshot), trace: snapshot.trace.slice(0, 2) }
    assert.equal(await rig.other('PUT', 'gap', shorter, await rig.version('gap')), 200)
    await rig.hooks.onStepComplete(takeStep(snapshot))
    assert.deepEqual(await rig.stored('gap'), wire(snapshot))
    assert.deepEqual(
      rig
        .writes('gap')
        .slice(-2)
        .map((w) => [w.method, w.status]),
      [
        ['PATCH', 409],
        ['PUT', 200],
      ],
    )
  })
})

describe('errors', () => {
  test('a rewind after another writer is a precondition failure', async () => {
    const snapshot = await started(rig, 'contended', 4)
    assert.equal(await rig.other('PATCH', 'contended', { revisions: 1 }), 200)
    const before = await rig.stored('contended')
    snapshot.trace.length = 2
    const error = await rejectsWith(rig.hooks.onStepComplete(snapshot), PreconditionFailed)
    assert.equal(error.status, 412)
    assert.equal(error.type, 'urn:runstore:problem:precondition-failed')
    assert.deepEqual(await rig.stored('contended'), before)
  })

  test('a worker behind another gets stale-write', async () => {
    const zombie = await started(rig, 'taken-over', 5)
    const worker = rig.newHooks()
    const snapshot = (await worker.loadRun<Snapshot>('taken-over'))!
    await runSteps(worker, snapshot, 3)
    // The second time as a whole PUT: the zombie's hooks forgot the run.
    for (let n = 0; n < 2; n += 1) {
      const error = await rejectsWith(rig.hooks.onStepComplete(takeStep(zombie)), StaleWrite)
      assert.equal(error.status, 409)
      assert.equal(error.type, 'urn:runstore:problem:stale-write')
      assert.match(error.detail, /trace/)
    }
    assert.deepEqual(await rig.stored('taken-over'), wire(snapshot))
  })

  test('an invalid snapshot is refused and the store untouched', async () => {
    const snapshot = await started(rig, 'strict', 2)
    const before = await rig.stored('strict')
    const bad = takeStep(structuredClone(snapshot))
    bad.status = 'Not A Status'
    const error = await rejectsWith(rig.hooks.onStepComplete(bad), InvalidRun)
    assert.equal(error.status, 422)
    assert.deepEqual(
      error.errors.map((e) => e.path),
      ['$.status'],
    )
    assert.deepEqual(await rig.stored('strict'), before)
    // The next good snapshot is stored whole (what the store holds was in doubt).
    await rig.hooks.onStepComplete(takeStep(snapshot))
    assert.deepEqual(await rig.stored('strict'), wire(snapshot))
  })

  const unsendable: [string, unknown, string][] = [
    ['no run id', { status: 'running' }, '$.runId'],
    ['a run id with a slash', { runId: 'no/slash', trace: [] }, '$.runId'],
    ['a trace that is not an array', { runId: 'ok', trace: 'not a list' }, '$.trace'],
    ['a history that is not an array', { runId: 'ok', trace: [], history: { a: 1 } }, '$.history'],
    ['NaN in a step', { runId: 'ok', trace: [Number.NaN] }, '$.trace[0]'],
    ['a BigInt in a step', { runId: 'ok', trace: [{ tokens: 10n }] }, '$.trace[0]'],
    ['not an object', 'a string', '$'],
  ]
  for (const [name, snapshot, path] of unsendable) {
    test(`a snapshot that cannot be sent is invalid: ${name}`, async () => {
      const hook = rig.hooks.onRunStart as (snapshot: unknown) => Promise<void>
      const error = await rejectsWith(hook(snapshot), InvalidRun)
      assert.equal(error.errors[0]?.path, path)
      assert.deepEqual(rig.writes('ok'), [])
    })
  }

  test('loadRun of a bad run id is invalid and sends nothing', async () => {
    await rejectsWith(rig.hooks.loadRun('../etc'), InvalidRun)
    assert.deepEqual(rig.recorder.sent, [])
  })
})

describe('retries', () => {
  test('a lost answer to a step is retried safely', async () => {
    const snapshot = await started(rig, 'lost', 3)
    rig.recorder.fail(1, { status: 504, forward: true, method: 'PATCH' })
    await runSteps(rig.hooks, snapshot, 1)
    const writes = rig.writes('lost')
    assert.deepEqual(
      writes.slice(-2).map((w) => [w.method, w.status]),
      [
        ['PATCH', 504],
        ['PATCH', 200],
      ],
    )
    assert.equal(writes.at(-1)!.body, writes.at(-2)!.body)
    assert.deepEqual(await rig.stored('lost'), wire(snapshot))
  })

  test('after retries give up, the next hook sends everything since', async () => {
    const snapshot = await started(rig, 'outage', 2)
    rig.recorder.fail(4, { status: 503, retryAfter: '0', method: 'PATCH' })
    const error = await rejectsWith(rig.hooks.onStepComplete(takeStep(snapshot)), StoreUnavailable)
    assert.equal(error.attempts, 4)
    assert.equal(error.status, 503)
    takeStep(snapshot)
    await rig.hooks.onStepComplete(snapshot)
    const body = JSON.parse(rig.writes('outage').at(-1)!.body) as { traceFrom: number; trace: [] }
    assert.deepEqual([body.traceFrom, body.trace.length], [2, 2])
    assert.deepEqual(await rig.stored('outage'), wire(snapshot))
  })

  test('Retry-After is waited for', async () => {
    const snapshot = await started(rig, 'slow-down', 1)
    rig.recorder.fail(1, { status: 429, retryAfter: '1', method: 'PATCH' })
    const began = performance.now()
    await runSteps(rig.hooks, snapshot, 1)
    // Behaviour, not timing: the retry did not start before the second the answer asked for.
    assert.ok(performance.now() - began >= 1000)
    assert.deepEqual(
      rig
        .writes('slow-down')
        .slice(-2)
        .map((w) => w.status),
      [429, 200],
    )
  })
})

describe('hooks a framework does not await', () => {
  test('are sent in order, and close() waits for them', async () => {
    const snapshot = agentSnapshot('fire-and-forget')
    const pending: Promise<void>[] = [rig.hooks.onRunStart(structuredClone(snapshot))]
    for (let step = 0; step < 30; step += 1) {
      pending.push(rig.hooks.onStepComplete(structuredClone(takeStep(snapshot))))
    }
    pending.push(rig.hooks.onRunComplete(structuredClone(finish(snapshot))))
    await rig.hooks.close()
    assert.deepEqual(await rig.stored('fire-and-forget'), wire(snapshot))
    const writes = rig.writes('fire-and-forget')
    assert.deepEqual(
      writes.map((w) => w.method),
      ['PUT', ...Array<string>(31).fill('PATCH')],
    )
    assert.deepEqual(
      writes.slice(1, 31).map((w) => (JSON.parse(w.body) as { traceFrom: number }).traceFrom),
      Array.from({ length: 30 }, (_, n) => n),
    )
    await Promise.all(pending)
  })

  test('one run failing does not hold up another', async () => {
    const good = agentSnapshot('unaffected')
    const bad = { ...agentSnapshot('refused'), status: 'Not A Status' }
    const refused = rig.hooks.onRunStart(bad)
    const stored = rig.hooks.onRunStart(good)
    await assert.rejects(refused, InvalidRun)
    await stored
    assert.deepEqual(await rig.stored('unaffected'), wire(good))
    assert.equal(await rig.stored('refused'), null)
  })
})
