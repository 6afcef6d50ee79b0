package sink

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pglogrepl"

	"github.com/votr-dev/votr/script"
)

// mergeError is a merge that threw, timed out or returned nonsense.
type mergeError struct {
	table, op string
	lsn       pglogrepl.LSN
	key       string
	err       error
}

func (e *mergeError) Error() string {
	return fmt.Sprintf("merge of %s on table %s (key %s) at source LSN %s failed: %v", e.op, e.table, e.key, e.lsn, e.err)
}

func (e *mergeError) Unwrap() error { return e.err }

// failureKey identifies a failing change across retries.
func (e *mergeError) failureKey() string { return e.lsn.String() + "/" + e.table + "/" + e.key }

func opName(op byte) string {
	switch op {
	case opInsert:
		return "insert"
	case opUpdate:
		return "update"
	case opDelete:
		return "delete"
	}
	return "none"
}

// conflictRow is a change whose fast path did not take effect.
type conflictRow struct {
	t      *table
	e      *entry
	target []([]byte) // target values in table.all order, text; nil when absent
	found  bool
	nulls  []bool
}

// setTarget keeps the target row a lock query read (text values in
// table.all order).
func (c *conflictRow) setTarget(vals [][]byte) {
	c.target = make([][]byte, len(c.t.all))
	c.nulls = make([]bool, len(c.t.all))
	for i := range c.t.all {
		if v := vals[i]; v == nil {
			c.nulls[i] = true
		} else {
			c.target[i] = append([]byte(nil), v...)
		}
	}
}

// tupleRow decodes a source tuple for a script.
func tupleRow(t *table, seg *segment, tup int32) (script.Row, error) {
	if seg == nil || tup < 0 {
		return nil, nil
	}
	r := make(script.Row, len(t.cols))
	for ci, c := range t.cols {
		f := seg.fields[tup+int32(t.srcIdx[ci])]
		switch f.kind {
		case fieldNull:
			r[c.name] = nil
		case fieldText:
			v, err := decodeValue(c.typ, seg.value(f))
			if err != nil {
				return nil, fmt.Errorf("column %s: %w", c.name, err)
			}
			r[c.name] = v
		}
	}
	return r, nil
}

func (c *conflictRow) targetRow() (script.Row, error) {
	if !c.found {
		return nil, nil
	}
	r := make(script.Row, len(c.t.all))
	for i, col := range c.t.all {
		if c.nulls[i] {
			r[col.name] = nil
			continue
		}
		v, err := decodeValue(col.typ, c.target[i])
		if err != nil {
			return nil, fmt.Errorf("column %s: %w", col.name, err)
		}
		r[col.name] = v
	}
	return r, nil
}

// keyText renders a change's key for messages and failure tracking.
func keyText(t *table, e *entry) string {
	var parts []string
	for _, k := range t.keys {
		f := e.keySeg.fields[e.key+int32(t.srcIdx[k])]
		parts = append(parts, string(e.keySeg.value(f)))
	}
	return strings.Join(parts, ",")
}

// resolve decides what a conflicting change becomes and adds it to w. It
// returns a dead letter to record and the action taken, or an error that
// rolls the target transaction back.
func (a *applier) resolve(c *conflictRow, w *tableWrites) (*deadLetter, script.Action, error) {
	t, e := c.t, c.e
	a.st.conflicts++
	op := opName(e.op)
	before, err := tupleRow(t, e.oldSeg, e.old)
	if err != nil {
		return nil, 0, fmt.Errorf("table %s: decode before-image: %w", t.name, err)
	}
	if e.op == opInsert {
		before = nil
	}
	proposed, err := tupleRow(t, e.newSeg, e.new)
	if err != nil {
		return nil, 0, fmt.Errorf("table %s: decode new row: %w", t.name, err)
	}
	target, err := c.targetRow()
	if err != nil {
		return nil, 0, fmt.Errorf("table %s: decode target row: %w", t.name, err)
	}
	fail := &mergeError{table: t.name, op: op, lsn: e.meta.lsn, key: keyText(t, e)}
	if reason, ok := a.deadKeys[fail.failureKey()]; ok {
		a.st.deadLettered++
		return &deadLetter{t: t, e: e, op: op, before: before, proposed: proposed, target: target, reason: reason}, script.DeadLetter, nil
	}

	cfg := script.TableConfig{}
	if a.s.host != nil {
		cfg = a.s.host.Table(t.name)
	}
	var result script.Result
	switch {
	case cfg.HasMerge || a.replay:
		// A replay puts every change through the script's merge (its
		// built-in rules for a table without one).
		result, err = a.s.host.Merge(t.name, script.Op{
			Before: before, Proposed: proposed, Target: target,
			Meta: script.Meta{
				Source: a.s.cfg.SourceID, Target: a.s.cfg.TargetID, Table: t.name,
				LSN: e.meta.lsn.String(), CommitTime: pgTime(e.meta.commitTime),
			},
		})
		if err != nil {
			fail.err = err
			return nil, 0, fail
		}
	case proposed == nil:
		result = script.Result{Action: script.Delete}
	case cfg.VersionColumn != "" && target != nil:
		if compareValues(proposed[cfg.VersionColumn], target[cfg.VersionColumn]) > 0 {
			result = script.Result{Action: script.Apply, Row: proposed}
		} else {
			result = script.Result{Action: script.Drop}
		}
	default:
		result = script.Result{Action: script.Apply, Row: proposed}
	}

	switch result.Action {
	case script.Drop:
		a.st.dropped++
	case script.DeadLetter:
		a.st.deadLettered++
		reason := result.Reason
		if reason == "" {
			reason = "dead-lettered by the merge script"
		}
		return &deadLetter{t: t, e: e, op: op, before: before, proposed: proposed, target: target, reason: reason}, script.DeadLetter, nil
	case script.Delete:
		if c.found {
			key := make([][]byte, len(t.allKey))
			for j, i := range t.allKey {
				key[j] = c.target[i]
			}
			w.deletes = append(w.deletes, key)
		}
	case script.Apply:
		if result.Row == nil {
			fail.err = errors.New("merge returned apply without a row")
			return nil, 0, fail
		}
		vals := make([]*[]byte, len(t.all))
		same := target != nil
		for i, col := range t.all {
			v, ok := result.Row[col.name]
			if !ok {
				switch {
				case target != nil:
					v = target[col.name]
				case proposed != nil && hasKey(proposed, col.name):
					v = proposed[col.name]
				default:
					fail.err = fmt.Errorf("merge result lacks column %s and there is no target row to take it from", col.name)
					return nil, 0, fail
				}
			}
			if same && !sameValue(col.typ, v, target[col.name]) {
				same = false
			}
			text, notNull, err := encodeValue(col.typ, v)
			if err != nil {
				fail.err = fmt.Errorf("merge result column %s: %w", col.name, err)
				return nil, 0, fail
			}
			if notNull {
				vals[i] = &text
			}
		}
		if !same {
			// An echo merges into the row the target already has: nothing
			// is written, so it does not travel on.
			w.upserts = append(w.upserts, vals)
		}
	default:
		fail.err = fmt.Errorf("merge returned unknown action %d", result.Action)
		return nil, 0, fail
	}
	return nil, result.Action, nil
}

func hasKey(r script.Row, k string) bool { _, ok := r[k]; return ok }

// compareValues orders version column values: numbers numerically,
// anything else by its text.
func compareValues(x, y any) int {
	fx, okx := number(x)
	fy, oky := number(y)
	if okx && oky {
		switch {
		case fx < fy:
			return -1
		case fx > fy:
			return 1
		}
		return 0
	}
	return strings.Compare(fmt.Sprint(x), fmt.Sprint(y))
}

func number(v any) (float64, bool) {
	switch x := v.(type) {
	case int64:
		return float64(x), true
	case int:
		return float64(x), true
	case float64:
		return x, true
	case string:
		f, err := strconv.ParseFloat(x, 64)
		return f, err == nil
	}
	return 0, false
}
