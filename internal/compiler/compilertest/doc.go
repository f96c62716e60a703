// Package compilertest generates clusters for the compiler's tests and
// benchmarks. It is test support: no product binary imports it.
package compilertest
