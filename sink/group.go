package sink

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
)

// groupResult is what one applied group changed.
type groupResult struct {
	committed bool
	// targetLSN is the target's WAL insert position after the commit: the
	// source position may be confirmed once the target flushed past it.
	targetLSN pglogrepl.LSN
	// processed is the source position the group completes (0: none yet,
	// the group ended inside a large transaction).
	processed pglogrepl.LSN
	last      commit // last source transaction applied (lsn 0: none)
	st        groupStats
}

// apply writes a group of segments. Whole source transactions are
// committed with the checkpoint; a group ending in a chunk of a large
// transaction leaves the target transaction open for the next chunk.
func (a *applier) apply(ctx context.Context, segs []*segment) (groupResult, error) {
	var r groupResult
	for _, s := range segs {
		ti := 0
		for ci, c := range s.changes {
			for ti < len(s.truncs) && s.truncs[ti].at == ci {
				if err := a.truncate(ctx, s.truncs[ti]); err != nil {
					return r, err
				}
				ti++
			}
			if err := a.add(ctx, s, c); err != nil {
				return r, err
			}
		}
		for ; ti < len(s.truncs); ti++ {
			if err := a.truncate(ctx, s.truncs[ti]); err != nil {
				return r, err
			}
		}
		a.st.rows += int64(len(s.changes))
		a.st.txns += int64(len(s.commits))
		if n := len(s.commits); n > 0 {
			r.last = s.commits[n-1]
		}
		if e := s.endLSN(); e > r.processed {
			r.processed = e
		}
	}
	if err := a.flush(ctx); err != nil {
		return r, err
	}
	if segs[len(segs)-1].partial {
		r.processed = 0
		return r, nil
	}
	if r.last.lsn == 0 && !a.inTxn {
		// Only positions to mark processed: nothing to commit.
		return r, nil
	}
	if r.last.lsn == 0 {
		return r, fmt.Errorf("internal error: target transaction open without a source commit")
	}
	lsn, err := a.commit(ctx, r.last)
	if err != nil {
		return r, err
	}
	r.committed = true
	r.targetLSN = lsn
	r.st = a.st
	a.st = groupStats{}
	return r, nil
}

func (a *applier) commit(ctx context.Context, last commit) (pglogrepl.LSN, error) {
	b := &pgconn.Batch{}
	a.begin(b)
	commitTime := []byte(pgTime(last.commitTime).Format("2006-01-02 15:04:05.999999Z07:00"))
	lsn := []byte(last.lsn.String())
	if a.origin {
		// Tags the transaction, so the reverse feed's reader can skip it.
		b.ExecParams(`SELECT pg_replication_origin_xact_setup($1::pg_lsn, $2::timestamptz)`,
			[][]byte{lsn, commitTime}, nil, nil, nil)
	}
	name, err := a.stmts.name(ctx, advanceSQL)
	if err != nil {
		return 0, err
	}
	b.ExecPrepared(name, advanceArgs(a.s.feed, lsn, commitTime, a.st), nil, nil)
	b.ExecParams("COMMIT", nil, nil, nil, nil)
	b.ExecParams("SELECT pg_current_wal_insert_lsn()", nil, nil, nil, nil)
	res, err := a.pg.ExecBatch(ctx, b).ReadAll()
	a.inTxn = false
	if err != nil {
		return 0, fmt.Errorf("commit: %w", err)
	}
	// A COMMIT of a failed transaction reports ROLLBACK instead of an error.
	if tag := res[len(res)-2].CommandTag.String(); tag != "COMMIT" {
		return 0, fmt.Errorf("commit: the target rolled the transaction back (%s)", tag)
	}
	rows := res[len(res)-1].Rows
	if len(rows) != 1 {
		return 0, fmt.Errorf("commit: no WAL position returned")
	}
	return pglogrepl.ParseLSN(string(rows[0][0]))
}

// truncate applies a source TRUNCATE after what is pending.
func (a *applier) truncate(ctx context.Context, tr truncate) error {
	if err := a.flush(ctx); err != nil {
		return err
	}
	var names []string
	for _, rel := range tr.rels {
		t, err := a.table(ctx, rel)
		if err != nil {
			return err
		}
		names = append(names, t.ident)
	}
	sql := "TRUNCATE " + strings.Join(names, ", ")
	if tr.ident {
		sql += " RESTART IDENTITY"
	}
	if tr.cascade {
		sql += " CASCADE"
	}
	b := &pgconn.Batch{}
	a.begin(b)
	b.ExecParams(sql, nil, nil, nil, nil)
	if _, err := a.pg.ExecBatch(ctx, b).ReadAll(); err != nil {
		return fmt.Errorf("truncate: %w", err)
	}
	return nil
}

// rollback abandons the open target transaction and everything pending.
func (a *applier) rollback(ctx context.Context) error {
	for _, p := range a.pend {
		p.ents = p.ents[:0]
		clear(p.idx)
	}
	a.resetArrays()
	a.st = groupStats{}
	a.inTxn = false
	if _, err := a.pg.Exec(ctx, "ROLLBACK").ReadAll(); err != nil {
		return fmt.Errorf("rollback: %w", err)
	}
	return nil
}
