/**
 * runstore-client: the persistence hooks for TypeScript agents.
 *
 *     import { makeHttpPersistence } from 'runstore-client'
 *     const persistence = makeHttpPersistence('http://runstore:8000', { token })
 *     const agent = createAgent({ persistence })
 */
export {
  type HttpPersistence,
  type HttpPersistenceOptions,
  makeHttpPersistence,
} from './persistence.js'
export { DEFAULT_RETRY_POLICY, type RetryPolicy, retryPolicy } from './retry.js'
export type { ClaimedRun, Lease, RunPatch, RunSnapshot, SnapshotInput, WriteAck } from './wire.js'
export type { ClaimOptions } from './leases.js'
export {
  BadRequest,
  BodyTooLarge,
  type FieldProblem,
  Forbidden,
  HeadTooLarge,
  InternalError,
  InvalidRun,
  LeaseHeld,
  LeaseLost,
  MalformedJson,
  MethodNotAllowed,
  NestingTooDeep,
  PROBLEM_TYPE_PREFIX,
  PROBLEM_TYPES,
  PreconditionFailed,
  type Problem,
  RequestTimeout,
  RunIdMismatch,
  RunNotFound,
  RunStoreError,
  ServerBusy,
  StaleWrite,
  StoreUnavailable,
  TooManyItems,
  TraceGap,
  Unauthorized,
  UnexpectedResponse,
  UnsupportedMediaType,
  WriteConflict,
  errorForProblem,
} from './problems.js'
export type { components, paths } from './openapi.js'
