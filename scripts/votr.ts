/// <reference path="./votr.d.ts" />
/**
 * votr's merge script for the VOTR workload.
 *
 * Every table carries a vector clock in `whence` and the writing region in
 * `src`. Each merge below is a join: the state it produces depends only on
 * the set of writes merged so far, not on their order or on how often each
 * arrived. So replaying, reordering, duplicating or echoing changes leaves
 * every region with the same rows. When a change brings nothing the target
 * does not already have, the merge returns the target unchanged (or drops
 * the change), so the sink writes nothing and echoes die out.
 *
 * - candidates: last-one-wins on `version`, then higher `src`, then the
 *   writer's own clock entry, then the row's content (a deterministic last
 *   resort); the clocks of both sides are merged entry by entry (max).
 *   Assumes updates never lower `version` (the workload always bumps it).
 * - ballots: append-only. An identical ballot already there is a no-op; two
 *   different rows under one key (never produced by VOTR) are resolved like
 *   candidates without a version.
 * - totals: a convergent counter. whence = {"<region>": {c, n}}: n is the
 *   region's contribution, c counts its updates. Merging keeps, per region,
 *   the entry with the larger c (then larger n), and total = sum of n.
 *   `src` is the region whose write the row is: the dominating side's src;
 *   0 (as in the seed) when each side has increments the other lacks, so
 *   the row is a merge of several regions' writes; the larger src when both
 *   clocks are equal. Ordered this way — clock first, then src, with 0 below
 *   every region — the whole row is a join too, so src converges as well.
 * - deletes (VOTR never deletes; SQL clients may): observed-remove. A delete
 *   removes the writes its region had seen — those its before-image's clock
 *   covers — and leaves that image as the key's tombstone (op.deleted). A
 *   write the tombstone's clock covers is dropped when it arrives late (even
 *   where the row came back); a write whose clock covers the tombstone's
 *   (made after the delete: a client's re-insert continues the tombstone's
 *   clock, see votr.stamp) is the row as it is; a concurrent write brings
 *   the row back, merged with the tombstone. Tombstones merge like rows, so
 *   a key's state is (the join of its writes, the join of its deletes) and
 *   the row exists while the writes hold something the deletes lack: any
 *   order of arrival, duplicates and echoes included, gives the same rows.
 */
import type { MergeResult, Op, Row, Tables, Value } from "votr";

type Clock = { [region: string]: number };
type Entry = { c: number; n: number };
type Counter = { [region: string]: Entry };

/** How one table's rows combine: the two ingredients of a tombstone. */
interface Kind {
  /** Every write in a is also in b (b's clock covers a's). */
  covered(a: Row, b: Row, op: Op): boolean;
  /** The row holding the writes of both (commutative, idempotent). */
  join(a: Row, b: Row, op: Op): Row;
}

const register = (versionColumn: string | null): Kind => ({
  covered: (a, b, op) => clockCovered(clock(a, "row", op), clock(b, "row", op)),
  join: (a, b, op) => joinRegister(a, b, op, versionColumn),
});

const totalsKind: Kind = {
  covered: (a, b, op) => counterCovered(counter(a, "row", op), counter(b, "row", op)),
  join: joinTotals,
};

export const tables: Tables = {
  candidates: { merge: (op) => withTombstones(op, register("version"), (o) => mergeRegister(o, "version", false)) },
  ballots: { merge: (op) => withTombstones(op, register(null), (o) => mergeRegister(o, null, true)) },
  totals: { merge: (op) => withTombstones(op, totalsKind, mergeTotals) },
};

// The loops below index arrays rather than use for-of or spreads: goja
// allocates an iterator result per for-of step, and merges run on the sink's
// hot path.

/**
 * Deletes and tombstones around a table's merge of two live rows (live).
 * A write meeting only a tombstone is dropped if the tombstone covers it,
 * else it comes back joined with the tombstone. A delete joins its image
 * into the tombstone and removes the target row if the tombstone covers it.
 */
function withTombstones(op: Op, kind: Kind, live: (op: Op) => MergeResult): MergeResult {
  const { proposed, target, deleted } = op;
  if (proposed) {
    // A write the delete had seen is removed, whatever came back since.
    if (deleted && kind.covered(proposed, deleted, op)) return { drop: true };
    if (target || !deleted) return live(op);
    // A write made after the delete (its clock continues the tombstone's:
    // a row re-inserted where the key was deleted) is the row as it is.
    if (kind.covered(deleted, proposed, op)) return { apply: proposed };
    return { apply: kind.join(deleted, proposed, op) };
  }
  // Without REPLICA IDENTITY FULL there is no before-image: the delete saw
  // the target row.
  const seen = op.before ?? target;
  if (!seen) return { drop: true };
  // Deleting a row written after the earlier delete: its image is the
  // tombstone (as the votr_tombstone trigger records it where the client
  // deleted it); otherwise the two deletes' images are joined.
  const later = deleted && kind.covered(deleted, seen, op) && !kind.covered(seen, deleted, op);
  const tomb = deleted && !later ? kind.join(deleted, seen, op) : seen;
  if (target && kind.covered(target, tomb, op)) return { delete: true, tombstone: tomb };
  // The row holds writes the delete had not seen: it stays (the delete lost
  // to them), joined with the tombstone as it would have come back had the
  // delete arrived first, and the tombstone still remembers what was
  // deleted.
  const newTomb = deleted && sameRow(tomb, deleted) ? null : tomb;
  if (target) {
    const row = kind.join(target, tomb, op);
    if (!sameRow(row, target)) return newTomb ? { apply: row, tombstone: newTomb } : { apply: row };
  }
  return newTomb ? { drop: true, tombstone: newTomb } : { drop: true };
}

function clockCovered(a: Clock, b: Clock): boolean {
  const regions = Object.keys(a);
  for (let i = 0; i < regions.length; i++) {
    const r = regions[i];
    const v = b[r];
    if (a[r] > 0 && (v === undefined || a[r] > v)) return false;
  }
  return true;
}

function counterCovered(a: Counter, b: Counter): boolean {
  const regions = Object.keys(a);
  for (let i = 0; i < regions.length; i++) {
    const r = regions[i];
    const x = a[r];
    const y = b[r];
    if (y === undefined || x.c > y.c || (x.c === y.c && x.n > y.n)) return false;
  }
  return true;
}

/** The register join: the winning write's columns, the clocks' maximum. */
function joinRegister(a: Row, b: Row, op: Op, versionColumn: string | null): Row {
  const ac = clock(a, "row", op);
  const bc = clock(b, "row", op);
  const winner = compareWrites(a, ac, b, bc, versionColumn) >= 0 ? a : b;
  return withColumns(winner, { whence: maxClock(ac, bc) });
}

function maxClock(a: Clock, b: Clock): Clock {
  const merged: Clock = {};
  const own = Object.keys(a);
  for (let i = 0; i < own.length; i++) merged[own[i]] = a[own[i]];
  const more = Object.keys(b);
  for (let i = 0; i < more.length; i++) {
    const r = more[i];
    const m = merged[r];
    if (m === undefined || b[r] > m) merged[r] = b[r];
  }
  return merged;
}

/** The totals join, whichever side is called the target. */
function joinTotals(a: Row, b: Row, op: Op): Row {
  const r = mergeTotals({ before: null, proposed: b, target: a, deleted: null, meta: op.meta });
  return "apply" in r ? r.apply : a;
}

/** Same columns, same values (canonically). */
function sameRow(a: Row, b: Row): boolean {
  const columns = unionKeys(a, b);
  for (let i = 0; i < columns.length; i++) {
    if (canonical(a[columns[i]] ?? null) !== canonical(b[columns[i]] ?? null)) return false;
  }
  return true;
}

/**
 * Last-one-wins register with a vector clock. dropIfKnown: answer
 * {drop: true} instead of returning the unchanged target.
 */
function mergeRegister(op: Op, versionColumn: string | null, dropIfKnown: boolean): MergeResult {
  const { proposed, target } = op;
  if (!proposed || !target) return { apply: proposed! };
  const tc = clock(target, "target", op);
  const pc = clock(proposed, "proposed", op);
  const regions = Object.keys(pc);
  let grew = false;
  for (let i = 0; i < regions.length && !grew; i++) {
    const t = tc[regions[i]];
    grew = t === undefined || pc[regions[i]] > t;
  }
  const winner = compareWrites(proposed, pc, target, tc, versionColumn) > 0 ? proposed : target;
  if (winner === target && !grew) {
    return dropIfKnown ? { drop: true } : { apply: target };
  }
  return { apply: withColumns(winner, { whence: maxClock(tc, pc) }) };
}

/**
 * Orders two writes of one row: version (if any), then src, then the
 * writer's own clock entry, then the other columns. > 0 means a wins.
 */
function compareWrites(a: Row, ac: Clock, b: Row, bc: Clock, versionColumn: string | null): number {
  let c = 0;
  if (versionColumn !== null) {
    c = compareValues(a[versionColumn], b[versionColumn]);
    if (c !== 0) return c;
  }
  c = compareValues(a.src, b.src);
  if (c !== 0) return c;
  c = compareValues(ac[String(a.src)] ?? 0, bc[String(b.src)] ?? 0);
  if (c !== 0) return c;
  const columns = unionKeys(a, b).sort();
  for (let i = 0; i < columns.length; i++) {
    const k = columns[i];
    if (k === "whence" || a[k] === b[k]) continue;
    c = compareValues(a[k], b[k]);
    if (c !== 0) return c;
  }
  return 0;
}

function mergeTotals(op: Op): MergeResult {
  const { proposed, target } = op;
  if (!proposed || !target) return { apply: proposed! };
  // One pass over each side's regions, each entry checked where it is
  // used: the merges run on the sink's hot path, and checking both
  // counters whole first (counter()), then walking their union, read every
  // entry twice.
  const tw = counterObject(target, "target", op);
  const pw = counterObject(proposed, "proposed", op);
  const merged: Counter = {};
  let targetAhead = false;
  let proposedAhead = false;
  let total = 0;
  const ours = Object.keys(tw);
  for (let i = 0; i < ours.length; i++) {
    const r = ours[i];
    const t = tw[r];
    if (t === null || typeof t !== "object" || typeof t.c !== "number" || typeof t.n !== "number" || r in Object.prototype) {
      badEntry(t, r, "target", op);
    }
    const p = pw[r];
    let e = t;
    if (p === undefined) {
      targetAhead = true;
    } else {
      if (p === null || typeof p !== "object" || typeof p.c !== "number" || typeof p.n !== "number") {
        badEntry(p, r, "proposed", op);
      }
      const c = t.c !== p.c ? t.c - p.c : t.n - p.n;
      if (c < 0) {
        proposedAhead = true;
        e = p;
      }
      if (c > 0) targetAhead = true;
    }
    merged[r] = e;
    total += e.n;
  }
  const theirs = Object.keys(pw);
  for (let i = 0; i < theirs.length; i++) {
    const r = theirs[i];
    const inherited = r in Object.prototype;
    if (!inherited && tw[r] !== undefined) continue;
    const p = pw[r];
    if (p === null || typeof p !== "object" || typeof p.c !== "number" || typeof p.n !== "number" || inherited) {
      badEntry(p, r, "proposed", op);
    }
    proposedAhead = true;
    merged[r] = p;
    total += p.n;
  }
  if (!proposedAhead) {
    // Equal clocks reached along different paths: the larger src, so the
    // regions agree on src too. Otherwise the target already has it all.
    if (!targetAhead && Number(proposed.src) > Number(target.src)) {
      return { apply: withColumns(target, { src: proposed.src }) };
    }
    return { apply: target };
  }
  if (!targetAhead) return { apply: withColumns(proposed, { whence: merged, total }) };
  // Each side has increments the other lacks: no single region wrote the
  // result, and src 0 (like the seed) says so. Any other choice (the larger
  // src, the proposer) would depend on the order the changes arrived in.
  return { apply: withColumns(target, { whence: merged, total, src: 0 }) };
}

// Clock keys are region ids. Keys that name properties every object
// inherits ("constructor", "__proto__", ...) are refused, so a missing
// region reads as undefined and plain objects serve as maps.

function clock(row: Row, side: string, op: Op): Clock {
  const w = row.whence;
  if (w === null || typeof w !== "object" || Array.isArray(w)) {
    throw new Error(`${op.meta.table}: ${side}.whence is ${JSON.stringify(w)}, not a vector clock {"<region>": n}`);
  }
  const regions = Object.keys(w);
  for (let i = 0; i < regions.length; i++) {
    const r = regions[i];
    if (typeof w[r] !== "number" || r in Object.prototype) {
      throw new Error(`${op.meta.table}: ${side}.whence["${r}"] is ${JSON.stringify(w[r])}, not a region's count`);
    }
  }
  return w as Clock;
}

function counter(row: Row, side: string, op: Op): Counter {
  const w = counterObject(row, side, op);
  const regions = Object.keys(w);
  for (let i = 0; i < regions.length; i++) {
    const r = regions[i];
    const e = w[r];
    if (e === null || typeof e !== "object" || typeof e.c !== "number" || typeof e.n !== "number" || r in Object.prototype) {
      badEntry(e, r, side, op);
    }
  }
  return w;
}

/** row.whence as a counter object; its entries are checked where they are read. */
function counterObject(row: Row, side: string, op: Op): Counter {
  const w = row.whence;
  if (w === null || typeof w !== "object" || Array.isArray(w)) {
    throw new Error(`${op.meta.table}: ${side}.whence is ${JSON.stringify(w)}, not {"<region>": {c, n}}`);
  }
  return w as unknown as Counter;
}

/** Throws for a counter entry that is not {c, n} (or whose key every object inherits). */
function badEntry(e: unknown, r: string, side: string, op: Op): never {
  throw new Error(`${op.meta.table}: ${side}.whence["${r}"] is ${JSON.stringify(e)}, not a region's {c, n}`);
}

/** The keys of a, then those of b that a lacks. */
function unionKeys(a: object, b: object): string[] {
  const keys = Object.keys(a);
  const more = Object.keys(b);
  for (let i = 0; i < more.length; i++) {
    if ((a as Row)[more[i]] === undefined) keys.push(more[i]);
  }
  return keys;
}

/** A copy of row with some columns replaced (cheaper in goja than a spread). */
function withColumns(row: Row, cols: Row): Row {
  const out: Row = {};
  const keys = Object.keys(row);
  for (let i = 0; i < keys.length; i++) out[keys[i]] = row[keys[i]];
  const more = Object.keys(cols);
  for (let i = 0; i < more.length; i++) out[more[i]] = cols[more[i]];
  return out;
}

/**
 * A total order on column values that every region computes alike: numbers
 * by value, strings by code unit, anything else (and mixed kinds) by its
 * canonical JSON. A missing column counts as null.
 */
function compareValues(a: Value | undefined, b: Value | undefined): number {
  if (typeof a === "number" && typeof b === "number") return a < b ? -1 : a > b ? 1 : 0;
  if (typeof a === "string" && typeof b === "string") return a < b ? -1 : a > b ? 1 : 0;
  const ca = canonical(a ?? null);
  const cb = canonical(b ?? null);
  return ca < cb ? -1 : ca > cb ? 1 : 0;
}

/** JSON with sorted keys: equal values give equal strings in every region. */
function canonical(v: Value): string {
  if (v === null || typeof v !== "object") return JSON.stringify(v);
  if (Array.isArray(v)) return "[" + v.map(canonical).join(",") + "]";
  const o = v as { [key: string]: Value };
  return "{" + Object.keys(o).sort().map((k) => JSON.stringify(k) + ":" + canonical(o[k])).join(",") + "}";
}
