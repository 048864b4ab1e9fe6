/**
 * One agent process of `bench/agent_workload_node.py`:
 *
 *     node dist/bench/agent-worker.js <url> <invocation> <worker> <runs> <steps>
 *
 * It builds the same runs as `bench/agent_workload.py` (same ids, steps and final snapshots, so
 * the driver can check every run read back), makes one request to `/healthz` (Node loads its
 * HTTP stack on the first `fetch`), prints `ready`, waits for a line on stdin (the
 * start, given to every process at once), runs its runs through `makeHttpPersistence`, awaiting
 * every hook, and prints its timings as one JSON line: `started` and `ended` in seconds of the
 * wall clock (shared by the processes), every hook's latency in seconds, and the step hooks in
 * the first and last tenth of each run.
 */
import { once } from 'node:events'

import { makeHttpPersistence } from '../src/index.js'

const FILLER =
  'The search returned several relevant pages; the agent extracted the figures it needs, ' +
  'noted the sources and decided which tool to call next. '
const FILLER3 = FILLER.repeat(3)

interface BenchSnapshot {
  runId: string
  status: string
  startedAt: number
  completedAt?: number
  input: string
  history: { role: string; content: string }[]
  plan: { goal: string; steps: string[] }
  trace: Record<string, unknown>[]
  usage: { inputTokens: number; outputTokens: number }
  stepIndex: number
  iterations: number
  revisions: number
  text?: string
}

const newRun = (invocation: string, worker: number, run: number): BenchSnapshot => {
  const question = `Question ${worker}.${run}: compare three suppliers on price and delivery.`
  return {
    runId: `bench-${invocation}-${worker}-${run}`,
    status: 'running',
    startedAt: 1_700_000_000_000 + 1_000 * worker + run,
    input: question,
    history: [{ role: 'user', content: question }],
    plan: { goal: 'compare suppliers', steps: ['search', 'extract', 'compare'] },
    trace: [],
    usage: { inputTokens: 0, outputTokens: 0 },
    stepIndex: 0,
    iterations: 0,
    revisions: 0,
  }
}

/** One step of about 600 bytes of JSON, and a history turn (as agent_workload.take_step). */
const takeStep = (snapshot: BenchSnapshot): void => {
  const index = snapshot.trace.length
  snapshot.trace.push({
    step: index,
    tool: 'web_search',
    arguments: { query: `${snapshot.runId} supplier data ${index}` },
    output: `Step ${index}: ${FILLER3}`,
    durationMs: 800 + (index % 17),
    ok: true,
  })
  snapshot.history.push({ role: 'assistant', content: `Finished step ${index}.` })
  snapshot.usage = { inputTokens: 900 * (index + 1), outputTokens: 150 * (index + 1) }
  snapshot.stepIndex = snapshot.iterations = index + 1
}

const finish = (snapshot: BenchSnapshot): void => {
  const steps = snapshot.trace.length
  snapshot.status = 'completed'
  snapshot.completedAt = snapshot.startedAt + 1_000 * (steps + 1)
  snapshot.text = `Supplier B is best after ${steps} steps.`
}

const [url = '', invocation = '', worker = '0', runs = '1', steps = '1'] = process.argv.slice(2)
const [workerNumber, runCount, stepCount] = [Number(worker), Number(runs), Number(steps)]
const tenth = Math.max(1, Math.floor(stepCount / 10))
const hooks = makeHttpPersistence(url)
const result = {
  started: 0,
  ended: 0,
  hooks: [] as number[],
  early_steps: [] as number[],
  late_steps: [] as number[],
  error: null as string | null,
}
const seconds = (began: number): number => (performance.now() - began) / 1000
const wallClock = (): number => (performance.timeOrigin + performance.now()) / 1000

// Node loads fetch's HTTP stack (undici) on the first call; load it before the start, as the
// Python workers have httpx imported before theirs.
await (await fetch(`${url}/healthz`)).arrayBuffer()
process.stdout.write('ready\n')
process.stdin.setEncoding('utf8')
await once(process.stdin, 'data')
try {
  result.started = wallClock()
  for (let run = 0; run < runCount; run += 1) {
    const snapshot = newRun(invocation, workerNumber, run)
    let began = performance.now()
    await hooks.onRunStart(snapshot)
    result.hooks.push(seconds(began))
    for (let step = 1; step <= stepCount; step += 1) {
      takeStep(snapshot)
      began = performance.now()
      await hooks.onStepComplete(snapshot)
      const took = seconds(began)
      result.hooks.push(took)
      if (step <= tenth) {
        result.early_steps.push(took)
      } else if (step > stepCount - tenth) {
        result.late_steps.push(took)
      }
    }
    finish(snapshot)
    began = performance.now()
    await hooks.onRunComplete(snapshot)
    result.hooks.push(seconds(began))
  }
  result.ended = wallClock()
  await hooks.close()
} catch (error) {
  result.error = String(error)
}
process.stdout.write(`${JSON.stringify(result)}\n`)
process.stdin.destroy()
