// Package faults holds votr's fault, bad-input, security and concurrency
// tests: they drive whole topologies on real PostgreSQL servers (started by
// internal/pgtest) through the runner's Go API or the built votr binary, and
// restart servers, cut links (internal/faultproxy), kill processes and break
// merge scripts under them, checking that every region converges with
// nothing lost and nothing doubled. docs/operating.md lists every fault and
// bad input covered and what votr does about each. The package has no code
// of its own: everything is in its _test.go files.
package faults
