/**
 * The Node agent-workload benchmark still runs: a tiny workload, every run read back, no timing
 * checked (figures belong in docs/performance.md).
 */
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { promisify } from 'node:util'

import { PYTHON, ROOT } from './support.js'

test('bench/agent_workload_node.py runs and reads every run back', async () => {
  const directory = mkdtempSync(join(tmpdir(), 'runstore-ts-bench-'))
  try {
    const results = join(directory, 'workload.json')
    const script = join(ROOT, 'bench', 'agent_workload_node.py')
    const args = [script, '-P', '2', '-R', '1', '-S', '5', '--python-client', '--json', results]
    const done = await promisify(execFile)(PYTHON, args, { cwd: ROOT }).catch((error: unknown) => {
      // The bench prints its table and every error on stdout: show it with the failure.
      const stdout = (error as { stdout?: string }).stdout ?? ''
      throw new Error(`${String(error)}\n${stdout}`)
    })
    assert.match(done.stdout, /node client \/ reference hooks per second/)
    const summary = JSON.parse(readFileSync(results, 'utf8')) as {
      figures: { target: string; hooks: number; runs_wrong: number; errors: string[] }[]
    }
    assert.deepEqual(
      summary.figures.map((row) => [row.target, row.hooks, row.runs_wrong, row.errors]),
      [
        ['runstore (node client)', 2 * (5 + 2), 0, []],
        ['runstore (python client)', 2 * (5 + 2), 0, []],
        ['reference (whole JSON)', 2 * (5 + 2), 0, []],
      ],
    )
  } finally {
    rmSync(directory, { recursive: true, force: true })
  }
})
