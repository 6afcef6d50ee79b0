package localpg

// ProcessesUnder lets the tests check that nothing of a server is left
// running.
var ProcessesUnder = processesUnder
