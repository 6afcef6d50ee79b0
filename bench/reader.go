package main

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/votr-dev/votr/schema"
)

// A second decode ceiling for part 1, independent of the sink: a plain
// pglogrepl consumer that parses every pgoutput message with
// pglogrepl.ParseV2 and discards it. It shows whether the sink's own
// reader (sink.Config.Discard, the "ceiling" of the brief) costs more than
// the library's. One goroutine, no deadline context per message (that was
// the prototype's main cost, MEASURED.md §4a): a stop closes the socket.

// rawReader counts what it read.
type rawReader struct {
	txns, rows atomic.Int64
}

// run streams slot from dsn until ctx ends.
func (r *rawReader) run(ctx context.Context, dsn, slot string) error {
	err := r.stream(ctx, dsn, slot)
	if ctx.Err() != nil {
		return nil // stopped: the socket was closed under a read or a write
	}
	return err
}

func (r *rawReader) stream(ctx context.Context, dsn, slot string) error {
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return err
	}
	cfg.RuntimeParams["replication"] = "database"
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("pglogrepl reader: connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	err = pglogrepl.StartReplication(ctx, conn, slot, 0, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '2'", "publication_names " + schema.QuoteLiteral(schema.Publication)},
	})
	if err != nil {
		return fmt.Errorf("pglogrepl reader: start replication: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.Conn().Close() })
	defer stop()

	var confirmed pglogrepl.LSN
	lastStatus := time.Now()
	status := func() error {
		lastStatus = time.Now()
		if confirmed == 0 {
			return nil
		}
		return pglogrepl.SendStandbyStatusUpdate(ctx, conn, pglogrepl.StandbyStatusUpdate{WALWritePosition: confirmed})
	}
	for {
		msg, err := conn.ReceiveMessage(context.Background())
		if err != nil {
			return fmt.Errorf("pglogrepl reader: receive: %w", err)
		}
		var data []byte
		switch m := msg.(type) {
		case *pgproto3.CopyData:
			data = m.Data
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("pglogrepl reader: %w", pgconn.ErrorResponseToPgError(m))
		default:
			continue
		}
		switch data[0] {
		case pglogrepl.PrimaryKeepaliveMessageByteID:
			// The walsender waits for more WAL: a good moment to confirm.
			if err := status(); err != nil {
				return err
			}
		case pglogrepl.XLogDataByteID:
			xld, err := pglogrepl.ParseXLogData(data[1:])
			if err != nil {
				return err
			}
			m, err := pglogrepl.ParseV2(xld.WALData, false)
			if err != nil {
				return fmt.Errorf("pglogrepl reader: %w", err)
			}
			switch m := m.(type) {
			case *pglogrepl.InsertMessageV2, *pglogrepl.UpdateMessageV2, *pglogrepl.DeleteMessageV2:
				r.rows.Add(1)
			case *pglogrepl.CommitMessage:
				r.txns.Add(1)
				confirmed = m.TransactionEndLSN
			}
			if time.Since(lastStatus) >= time.Second {
				if err := status(); err != nil {
					return err
				}
			}
		}
	}
}
