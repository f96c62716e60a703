package compiler

// The checks below serve the tests of package compiler_test, which run them
// on the synthetic clusters of compilertest (a package that imports this
// one, so these files cannot import it).
var (
	CheckIntegrity     = checkIntegrity
	CheckOracle        = checkOracle
	CheckDeterministic = checkDeterministic
	CheckEngineFollows = checkEngineFollows
)
