package sink

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// applyToasted applies an update whose new row leaves out unchanged TOASTed
// values (pgoutput's 'u') that no old row fills in: the table's replica
// identity is not FULL. Like PostgreSQL's own apply, the target keeps its
// value for those columns: the update sets only the columns it carries, on
// the row with the change's key (an update of an absent row does nothing).
// What is pending is written first, so changes to the row keep their order.
func (a *applier) applyToasted(ctx context.Context, t *table, s *segment, c change, keyTup int32) error {
	for _, k := range t.keys {
		if s.fields[keyTup+int32(t.srcIdx[k])].kind != fieldText {
			return &schemaError{fmt.Sprintf("an update of %s has no value for primary key column %s", t.ident, t.cols[k].name)}
		}
	}
	if err := a.flush(ctx); err != nil {
		return err
	}
	var sets, where []string
	var args [][]byte
	param := func(col targetColumn, v []byte) string {
		args = append(args, v)
		return fmt.Sprintf("$%d::%s", len(args), col.cast)
	}
	for ci, col := range t.cols {
		f := s.fields[c.new+int32(t.srcIdx[ci])]
		switch f.kind {
		case fieldToast:
			continue // unchanged: the target keeps its value
		case fieldNull:
			sets = append(sets, t.colIdent(col)+" = "+param(col, nil))
		default:
			sets = append(sets, t.colIdent(col)+" = "+param(col, s.value(f)))
		}
	}
	for _, k := range t.keys {
		col := t.cols[k]
		f := s.fields[keyTup+int32(t.srcIdx[k])]
		where = append(where, "t."+t.colIdent(col)+" = "+param(col, s.value(f)))
	}
	if len(sets) == 0 {
		return nil
	}
	sql := fmt.Sprintf("UPDATE %s AS t SET %s WHERE %s", t.ident, strings.Join(sets, ", "), strings.Join(where, " AND "))
	b := &pgconn.Batch{}
	began := a.begin(b)
	b.ExecParams(sql, args, nil, nil, nil)
	res, err := a.pg.ExecBatch(ctx, b).ReadAll()
	if err != nil {
		return fmt.Errorf("apply an update with unchanged TOASTed values to %s: %w", t.ident, err)
	}
	res = res[began:]
	if res[0].CommandTag.RowsAffected() == 0 {
		// No row to update: its unsent values are unknown, so there is
		// nothing whole to insert (PostgreSQL's apply skips it too).
		a.st.dropped++
	}
	return nil
}
