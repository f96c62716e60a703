package main

import (
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	r, ok := parse("BenchmarkProgramRatios-2   \t       1\t123 ns/op\t0.51 cold-vs-nft\t0.12 delta-1-vs-nft")
	if !ok || r.name != "ProgramRatios" || r.metrics["cold-vs-nft"] != 0.51 || r.metrics["delta-1-vs-nft"] != 0.12 {
		t.Fatalf("parse: %+v, %v", r, ok)
	}
	for _, line := range []string{"PASS", "BenchmarkX", "BenchmarkX-2 one 1 ns/op", "BenchmarkX-2 1 fast ns/op"} {
		if _, ok := parse(line); ok {
			t.Errorf("parse(%q) took a line that is not a result", line)
		}
	}
}

// TestLoadSampler: each take is the mean of the samples since the one
// before, the latest sample when there was none since, and -1 before the
// first.
func TestLoadSampler(t *testing.T) {
	l := &loadSampler{}
	if got := l.take(); got != -1 {
		t.Errorf("no samples: %v, want -1", got)
	}
	values, asked := make(chan float64), make(chan struct{})
	go l.run(func() (float64, bool) {
		asked <- struct{}{}
		return <-values, true
	}, time.Millisecond)
	// A sample is recorded once the sampler asks for the next one.
	send := func(v float64) {
		values <- v
		<-asked
	}
	<-asked
	for _, v := range []float64{1, 2, 6} {
		send(v)
	}
	if got := l.take(); got != 3 {
		t.Errorf("mean of 1, 2, 6: %v", got)
	}
	send(4)
	if got := l.take(); got != 4 {
		t.Errorf("mean of 4 after a take: %v", got)
	}
	if got := l.take(); got != 4 {
		t.Errorf("no sample since the last take: %v, want the latest, 4", got)
	}
}
