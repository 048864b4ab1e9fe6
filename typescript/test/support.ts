/**
 * What the tests share: a real `runstore serve` in a child process, the hooks under test with
 * every request they send recorded, a layer that fails chosen requests as a proxy would, and
 * the agent snapshots of the Python suite (`tests/client/client_rig.py`).
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

import { type HttpPersistence, makeHttpPersistence } from '../src/index.js'

/** The repository's root (this file runs as dist/test/support.js). */
export const ROOT = fileURLToPath(new URL('../../../', import.meta.url))
/** The server's command: the project's venv, as `make .venv/.installed-stamp` makes it. */
export const RUNSTORE = process.env.RUNSTORE_BIN ?? join(ROOT, '.venv', 'bin', 'runstore')
export const PYTHON = join(ROOT, '.venv', 'bin', 'python')
const LISTENING = /Uvicorn running on (http:\/\/\S+)/

/** `runstore serve --port 0` on a temporary SQLite file (or a given port, to restart). */
export class Server {
  url = ''
  port = 0
  output: string[] = []
  private process: ChildProcess | null = null
  readonly directory = mkdtempSync(join(tmpdir(), 'runstore-ts-'))
  readonly db = join(this.directory, 'runs.db')

  constructor(private readonly env: Record<string, string> = {}) {}

  async start(timeoutMs = 30_000): Promise<this> {
    const child = spawn(RUNSTORE, ['serve', '--db', this.db, '--port', String(this.port)], {
      env: { ...process.env, RUNSTORE_ACCESS_LOG: 'false', ...this.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    this.process = child
    this.output = []
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        child.kill('SIGKILL')
        reject(new Error(`runstore serve did not start:\n${this.output.join('')}`))
      }, timeoutMs)
      const read = (chunk: Buffer): void => {
        this.output.push(chunk.toString())
        const match = LISTENING.exec(this.output.join(''))
        if (match?.[1] !== undefined && this.url === '') {
          this.url = match[1]
          this.port = Number(new URL(this.url).port)
          clearTimeout(timer)
          resolve()
        } else if (match?.[1] !== undefined) {
          clearTimeout(timer)
          resolve()
        }
      }
      child.stdout?.on('data', read)
      child.stderr?.on('data', read)
      child.on('exit', (code) => {
        clearTimeout(timer)
        reject(new Error(`runstore serve exited (${code}):\n${this.output.join('')}`))
      })
    })
    return this
  }

  /** SIGTERM, and wait for the process to end. */
  async stop(): Promise<void> {
    const child = this.process
    this.process = null
    if (child === null || child.exitCode !== null || child.signalCode !== null) {
      return
    }
    const exited = new Promise((resolve) => child.once('exit', resolve))
    child.kill('SIGTERM')
    await exited
  }

  /** Start again on the same port and file. */
  restart(): Promise<this> {
    return this.start()
  }

  async close(): Promise<void> {
    await this.stop()
    rmSync(this.directory, { recursive: true, force: true })
  }
}

/** One request the hooks sent, with the status it got. */
export interface Sent {
  readonly method: string
  readonly path: string
  readonly body: string
  readonly status: number
}

interface Fault {
  readonly status: number
  readonly retryAfter: string | null
  readonly forward: boolean
  readonly method: string | null
}

/**
 * A `fetch` in front of the real server that records every request and fails the next ones it
 * is told to, as a proxy would: `fail(n, {status: 503, retryAfter: '0'})` answers itself; with
 * `forward: true` the request reaches the server first and its answer is replaced (a gateway
 * timeout after the write was applied: the answer is lost, not the write).
 */
export class Recorder {
  readonly sent: Sent[] = []
  private faults: Fault[] = []

  fail(
    times: number,
    options: { status?: number; retryAfter?: string; forward?: boolean; method?: string } = {},
  ): void {
    for (let n = 0; n < times; n += 1) {
      this.faults.push({
        status: options.status ?? 503,
        retryAfter: options.retryAfter ?? null,
        forward: options.forward ?? false,
        method: options.method ?? null,
      })
    }
  }

  readonly fetch: typeof fetch = async (input, init) => {
    const url = new URL(String(input))
    const method = init?.method ?? 'GET'
    const body = typeof init?.body === 'string' ? init.body : ''
    const fault = this.faults.find((f) => f.method === null || f.method === method)
    let response: Response
    if (fault === undefined) {
      response = await fetch(input, init)
    } else {
      this.faults.splice(this.faults.indexOf(fault), 1)
      if (fault.forward) {
        await (await fetch(input, init)).arrayBuffer()
      }
      const headers: Record<string, string> = { 'content-type': 'text/plain' }
      if (fault.retryAfter !== null) {
        headers['retry-after'] = fault.retryAfter
      }
      response = new Response('upstream trouble', { status: fault.status, headers })
    }
    this.sent.push({ method, path: url.pathname, body, status: response.status })
    return response
  }

  writes(runId: string): Sent[] {
    return this.sent.filter((s) => s.path === `/runs/${runId}` && s.method !== 'GET')
  }
}

// Fast retries for tests: they still back off, but briefly.
export const QUICK_RETRIES = { maxAttempts: 4, firstDelayMs: 10, maxDelayMs: 50, totalMs: 10_000 }

/** The hooks under test, recorded, and plain HTTP to the same server to look at what it holds. */
export class Rig {
  readonly recorder = new Recorder()
  readonly hooks: HttpPersistence
  private readonly extra: HttpPersistence[] = []

  constructor(readonly server: Server) {
    this.hooks = this.newHooks()
  }

  /** Fresh hooks on the same server, as another worker process would have. */
  newHooks(): HttpPersistence {
    const hooks = makeHttpPersistence(this.server.url, {
      retry: QUICK_RETRIES,
      fetch: this.recorder.fetch,
    })
    this.extra.push(hooks)
    return hooks
  }

  /** The stored snapshot as the server sends it, or null. */
  async stored(runId: string): Promise<Record<string, unknown> | null> {
    const response = await fetch(`${this.server.url}/runs/${runId}`)
    if (response.status === 404) {
      return null
    }
    if (!response.ok) {
      throw new Error(`GET ${runId}: ${response.status}`)
    }
    return (await response.json()) as Record<string, unknown>
  }

  async version(runId: string): Promise<number> {
    const response = await fetch(`${this.server.url}/runs/${runId}`, { method: 'HEAD' })
    return Number((response.headers.get('etag') ?? '').replaceAll('"', ''))
  }

  /** Another writer: a plain request, its status. */
  async other(method: string, runId: string, body?: unknown, ifMatch?: number): Promise<number> {
    const headers: Record<string, string> = { 'content-type': 'application/json' }
    if (ifMatch !== undefined) {
      headers['if-match'] = `"${ifMatch}"`
    }
    const init: RequestInit = { method, headers }
    if (body !== undefined) {
      init.body = JSON.stringify(body)
    }
    const response = await fetch(`${this.server.url}/runs/${runId}`, init)
    await response.arrayBuffer()
    return response.status
  }

  writes(runId: string): Sent[] {
    return this.recorder.writes(runId)
  }

  async close(): Promise<void> {
    await Promise.all(this.extra.map((hooks) => hooks.close()))
  }
}

/** A snapshot as the tests' agent holds it (mutable; unknown fields allowed). */
export interface Snapshot {
  runId: string
  status: string
  startedAt: number
  completedAt?: number | null
  input: string
  history: Record<string, unknown>[] | null
  plan?: unknown
  trace: Record<string, unknown>[]
  usage: unknown
  stepIndex: number
  iterations: number
  revisions: number
  text?: string | null
  error?: string | null
  [extra: string]: unknown
}

/** A run as an agent holds it when it starts, with a history and a plan. */
export const agentSnapshot = (runId: string, fields: Record<string, unknown> = {}): Snapshot => ({
  runId,
  status: 'running',
  startedAt: 1_700_000_000_000,
  input: 'Plan a three-day trip to Lisbon.',
  history: [{ role: 'user', content: 'Plan a three-day trip to Lisbon.' }],
  plan: { steps: ['flights', 'hotel', 'itinerary'] },
  trace: [],
  usage: { inputTokens: 0, outputTokens: 0 },
  stepIndex: 0,
  iterations: 0,
  revisions: 0,
  ...fields,
})

/** Advance a run by one step, in place, as an agent loop would. */
export const takeStep = (snapshot: Snapshot, note = ''): Snapshot => {
  const index = snapshot.trace.length
  snapshot.trace.push({ step: index, tool: 'search', output: `result ${index}${note}`, ok: true })
  snapshot.history?.push({ role: 'assistant', content: `step ${index}` })
  snapshot.usage = { inputTokens: 100 * (index + 1), outputTokens: 20 * (index + 1) }
  snapshot.stepIndex = index + 1
  snapshot.iterations = index + 1
  return snapshot
}

export const finish = (snapshot: Snapshot, at = 1_700_000_060_000): Snapshot => {
  Object.assign(snapshot, { status: 'completed', completedAt: at, text: 'Day 1: Alfama ...' })
  return snapshot
}

const OPTIONAL = new Set(['completedAt', 'history', 'plan', 'text', 'error'])

/** The snapshot as the store returns it: optional fields that are null left out. */
export const wire = (snapshot: Snapshot | Record<string, unknown>): Record<string, unknown> =>
  Object.fromEntries(
    Object.entries(structuredClone(snapshot)).filter(
      ([name, value]) => !(value === null && OPTIONAL.has(name)),
    ),
  )

export const runSteps = async (
  hooks: HttpPersistence,
  snapshot: Snapshot,
  steps: number,
): Promise<Snapshot> => {
  for (let n = 0; n < steps; n += 1) {
    await hooks.onStepComplete(takeStep(snapshot))
  }
  return snapshot
}

export const started = async (rig: Rig, runId: string, steps = 0): Promise<Snapshot> => {
  const snapshot = agentSnapshot(runId)
  await rig.hooks.onRunStart(snapshot)
  return runSteps(rig.hooks, snapshot, steps)
}
