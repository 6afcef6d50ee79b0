package sink

import (
	"errors"
	"math"
	"slices"
	"unsafe"

	"github.com/jackc/pglogrepl"
)

// Operations of a change, named as the pgoutput messages that carry them.
const (
	opInsert = byte(pglogrepl.MessageTypeInsert)
	opUpdate = byte(pglogrepl.MessageTypeUpdate)
	opDelete = byte(pglogrepl.MessageTypeDelete)
)

// Kinds of a field, as pgoutput's tuple data marks them.
const (
	fieldText  = pglogrepl.TupleDataTypeText
	fieldNull  = pglogrepl.TupleDataTypeNull
	fieldToast = pglogrepl.TupleDataTypeToast // an unchanged TOASTed value, not sent
)

// identityFull is a relation's replica identity under REPLICA IDENTITY
// FULL (pg_class.relreplident): its old rows carry every column.
const identityFull = 'f'

// relation is a source table as pgoutput last described it. A Relation
// message for the same id replaces it with a new value, so a decoded change
// keeps pointing at the description it was decoded with.
type relation struct {
	id        uint32
	namespace string
	name      string
	identity  byte // replica identity: 'f' full, 'd' default, 'i' index, 'n' nothing
	cols      []relColumn
	// streamed: described by pgoutput, so each value is the source's
	// output of its type (not backfill's or a dead letter's copy, which
	// describe the target's table themselves); see canonicalText.
	streamed bool
}

// same reports whether o describes r as r does.
func (r *relation) same(o *relation) bool {
	return r.id == o.id && r.namespace == o.namespace && r.name == o.name && r.identity == o.identity && slices.Equal(r.cols, o.cols)
}

type relColumn struct {
	name        string
	typ, typmod uint32
	flags       byte
}

// field is one column value of a decoded tuple: kind fieldText (text in
// buf[off:off+n]), fieldNull or fieldToast (an unchanged TOASTed value that
// was not sent).
type field struct {
	off, n int32
	kind   byte
}

// change is one decoded row change. old and new index the first field of a
// tuple in segment.fields (-1: no tuple).
type change struct {
	rel  *relation
	op   byte // opInsert, opUpdate, opDelete
	old  int32
	new  int32
	meta int32 // index in segment.metas
}

// txnMeta is what a merge learns about the source transaction of a change.
type txnMeta struct {
	lsn        pglogrepl.LSN // commit position (Begin.FinalLSN)
	commitTime int64         // microseconds since 2000-01-01
}

// commit marks the end of a source transaction inside a segment.
type commit struct {
	lsn        pglogrepl.LSN // commit record position, the checkpoint value
	end        pglogrepl.LSN // end of the commit record, confirmed to the source
	commitTime int64
}

// truncate is a TRUNCATE in the source stream; it is applied after the
// changes before it (at index at) and before those after it.
type truncate struct {
	at             int
	rels           []*relation
	cascade, ident bool
	meta           int32
}

// segment is a unit of work handed from the stream reader to the applier:
// one whole source transaction, or one chunk of a large one (partial), or
// only a position the applier may mark as processed (marker).
type segment struct {
	buf     []byte
	fields  []field
	changes []change
	metas   []txnMeta
	commits []commit
	truncs  []truncate
	partial bool
	marker  pglogrepl.LSN
}

func (s *segment) reset() {
	s.buf = s.buf[:0]
	s.fields = s.fields[:0]
	s.changes = s.changes[:0]
	s.metas = s.metas[:0]
	s.commits = s.commits[:0]
	s.truncs = s.truncs[:0]
	s.partial = false
	s.marker = 0
}

func (s *segment) value(f field) []byte { return s.buf[f.off : f.off+f.n] }

// size is what a segment counts for against the queue's row bound. A
// marker counts as one row, so that a run of skipped (echo) transactions
// is bounded like any other.
func (s *segment) size() int { return max(1, len(s.changes)+len(s.truncs)) }

// Sizes behind a segment's byte count.
const (
	fieldBytes   = int64(unsafe.Sizeof(field{}))
	changeBytes  = int64(unsafe.Sizeof(change{}))
	metaBytes    = int64(unsafe.Sizeof(txnMeta{}))
	commitBytes  = int64(unsafe.Sizeof(commit{}))
	truncBytes   = int64(unsafe.Sizeof(truncate{}))
	segmentBytes = int64(unsafe.Sizeof(segment{}))
)

// bytes is what a segment counts for against the byte bounds of chunks,
// groups and the queue: its values and the records that index them, and a
// fixed cost, so that markers (which hold no rows) count too.
func (s *segment) bytes() int64 {
	return segmentBytes + int64(len(s.buf)) + int64(len(s.fields))*fieldBytes + int64(len(s.changes))*changeBytes +
		int64(len(s.metas))*metaBytes + int64(len(s.commits))*commitBytes + int64(len(s.truncs))*truncBytes
}

// isMarker reports a segment that only carries a processed position.
func (s *segment) isMarker() bool {
	return len(s.changes) == 0 && len(s.truncs) == 0 && len(s.commits) == 0 && !s.partial
}

// maxSegmentBytes is the most value bytes, and maxSegmentFields the most
// fields, one segment may hold: field offsets and tuple indexes are int32.
// Chunks are cut long before (Options.BatchBytes is at most 1 GiB, a
// pgoutput message less than 1 GiB); the bound turns a bug or an absurd row
// into a clear error instead of wrong bytes.
const (
	maxSegmentBytes  = math.MaxInt32
	maxSegmentFields = math.MaxInt32
)

// errSegmentFull is returned before a segment's offsets would overflow.
var errSegmentFull = errors.New("a chunk of a source transaction outgrew 2 GiB of values (int32 offsets); lower sink.batchBytes")

// forgetOlder drops the tables described by earlier descriptions of rel's
// source table: pgoutput describes a table anew after DDL (and after cache
// invalidations), and once the new description is in use the old one is
// not seen again (a group applied again loads it anew).
func (a *applier) forgetOlder(rel *relation) {
	for r := range a.tables {
		if r != rel && r.id == rel.id {
			delete(a.tables, r)
		}
	}
}

// endLSN is the highest source position the segment completes.
func (s *segment) endLSN() pglogrepl.LSN {
	e := s.marker
	if n := len(s.commits); n > 0 && s.commits[n-1].end > e {
		e = s.commits[n-1].end
	}
	return e
}

func (s *segment) capBytes() int {
	return cap(s.buf) + cap(s.fields)*int(unsafe.Sizeof(field{})) + cap(s.changes)*int(unsafe.Sizeof(change{})) +
		cap(s.metas)*int(unsafe.Sizeof(txnMeta{})) + cap(s.commits)*int(unsafe.Sizeof(commit{})) + 256
}
