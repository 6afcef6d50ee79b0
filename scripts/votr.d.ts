/**
 * The votr merge-script API.
 *
 * A merge script is one TypeScript file. votr compiles it with esbuild and
 * runs it in a sandbox (goja): the ECMAScript built-ins and `console`, and
 * nothing else — no `require`/imports of other modules, no file system,
 * network, timers or process. Every call into the script has a deadline,
 * `sink.mergeTimeout` (default 5 s) in the topology file; a merge that runs
 * past it is stopped and counts as a failed merge.
 *
 * Use the types from a script next to this file like this (the import is
 * type-only, so esbuild erases it). A script configures exactly the three
 * replicated tables, each with a `merge` or a `versionColumn`; `votr plan`
 * refuses one that leaves a table out or names another. This one loads,
 * but parks every conflicting `totals` change instead of merging it: see
 * `votr.ts` for the merges votr runs.
 *
 * ```ts
 * /// <reference path="./votr.d.ts" />
 * import type { Tables } from "votr";
 *
 * export const tables: Tables = {
 *   ballots:    { merge(op) { return op.target ? { drop: true } : { apply: op.proposed! }; } },
 *   candidates: { versionColumn: "version" },
 *   totals:     { merge() { return { deadLetter: "totals conflict: merge it by hand" }; } },
 * };
 * ```
 *
 * (The module is named `"votr"` rather than `"./votr"` because inside
 * `scripts/` the path `./votr` resolves to `votr.ts`, the merge script
 * itself.)
 */
declare module "votr" {
  /**
   * A column value as a script sees it.
   *
   * - text, uuid, numeric and timestamp columns: `string` (timestamps in
   *   RFC 3339 form);
   * - integer and floating-point columns: `number`. An integer beyond
   *   ±(2^53 − 1) (`Number.MAX_SAFE_INTEGER`) arrives as a decimal `string`
   *   so no digit is lost; return it as a string (or a BigInt) to keep it;
   * - boolean: `boolean`; SQL NULL: `null`;
   * - json/jsonb: the decoded JSON value.
   *
   * Going back, integral numbers are stored as integers, other numbers as
   * floating point, a `Date` as a timestamp. `undefined`, functions and
   * symbols cannot be stored: a result containing one is rejected.
   */
  export type Value = null | boolean | number | string | Value[] | { [key: string]: Value };

  /** One table row by column name. Column order carries no meaning. */
  export interface Row {
    [column: string]: Value;
  }

  /** Where a change comes from. */
  export interface Meta {
    /** Region the change was read from (the feed's source; the hub is 0). */
    source: number;
    /** Region being written (the feed's target). */
    target: number;
    /** Table name, without schema. */
    table: string;
    /** Commit position of the source transaction, e.g. "0/16B3748". */
    lsn: string;
    /** Commit time of the source transaction (RFC 3339), or null if unknown. */
    commitTime: string | null;
  }

  /**
   * One change that conflicts with the target: the target row is not the
   * row the source changed (`before`), so applying `proposed` as it is
   * could lose a write. Changes that do not conflict are applied without
   * calling the script.
   */
  export interface Op {
    /** The source row before the change; null for an insert. */
    before: Row | null;
    /** The source row after the change; null for a delete. */
    proposed: Row | null;
    /** The row with the same key in the target now; null if there is none. */
    target: Row | null;
    meta: Meta;
  }

  /**
   * What to do with the change: exactly one key.
   *
   * - `{ apply: row }` writes `row`, a complete row (every column of the
   *   table, no other keys; `{ ...op.target, total: 3 }` is the usual form).
   *   If it equals the target row, nothing is written, so returning the
   *   target unchanged is how a merge says "already have this".
   * - `{ drop: true }` discards the change (counted as dropped).
   * - `{ deadLetter: "reason" }` parks the change, with its rows and the
   *   reason, in the target's `votr.dead_letters` table, in the same
   *   transaction; nothing else is written for it.
   * - `{ delete: true }` deletes the target row.
   *
   * Throwing, returning anything else, or running past the deadline fails
   * the merge: the target transaction is rolled back and the change is
   * retried, then dead-lettered or the feed stopped, as the topology says.
   */
  export type MergeResult =
    | { apply: Row }
    | { drop: true }
    | { deadLetter: string }
    | { delete: true };

  /**
   * Resolves one conflicting change. It must be a pure function of `op`
   * (no state kept between calls, no clock, no randomness), and for regions
   * to converge it must be idempotent, commutative and associative in the
   * state it produces: applying a change twice, late, in another order or
   * echoed back must not change the result.
   */
  export type MergeFunction = (op: Op) => MergeResult;

  /**
   * How one table is replicated: give `merge` or `versionColumn`. A table
   * with neither is refused when the script is loaded, since conflicting
   * changes would then overwrite each other and regions would diverge.
   */
  export interface TableConfig {
    /** Resolves conflicting changes. Takes precedence over versionColumn. */
    merge?: MergeFunction;
    /**
     * Without `merge`: last-one-wins on this column. The proposed row is
     * applied only when its value is strictly greater than the target's;
     * on a tie (or an older value) the target is kept. Numbers compare by
     * value, strings lexicographically, NULL lowest.
     */
    versionColumn?: string;
  }

  /**
   * The script's export: table name (without schema, as published) →
   * configuration. It must list exactly `candidates`, `ballots` and
   * `totals`: a missing or unknown table is refused when the script is
   * loaded (by `votr plan`, `apply`, `sink`).
   */
  export interface Tables {
    [table: string]: TableConfig;
  }
}

/** Script output goes to votr's log (discarded unless a logger is set). */
interface Console {
  log(...data: any[]): void;
  info(...data: any[]): void;
  debug(...data: any[]): void;
  warn(...data: any[]): void;
  error(...data: any[]): void;
}
declare var console: Console;
