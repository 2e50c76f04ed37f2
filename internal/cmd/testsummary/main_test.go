package main

import (
	"bytes"
	"strings"
	"testing"
)

const stream = `{"Action":"start","Package":"ex/a"}
{"Action":"run","Package":"ex/a","Test":"TestOK"}
{"Action":"output","Package":"ex/a","Test":"TestOK","Output":"=== RUN   TestOK\n"}
{"Action":"output","Package":"ex/a","Test":"TestOK","Output":"--- PASS: TestOK (0.00s)\n"}
{"Action":"pass","Package":"ex/a","Test":"TestOK","Elapsed":0}
{"Action":"run","Package":"ex/a","Test":"TestDisk"}
{"Action":"output","Package":"ex/a","Test":"TestDisk","Output":"=== RUN   TestDisk\n"}
{"Action":"output","Package":"ex/a","Test":"TestDisk","Output":"    disk_test.go:9: cannot mount a tmpfs: needs root\n"}
{"Action":"output","Package":"ex/a","Test":"TestDisk","Output":"--- SKIP: TestDisk (0.00s)\n"}
{"Action":"skip","Package":"ex/a","Test":"TestDisk","Elapsed":0}
{"Action":"output","Package":"ex/a","Output":"PASS\n"}
{"Action":"output","Package":"ex/a","Output":"ok  \tex/a\t0.01s\n"}
{"Action":"pass","Package":"ex/a","Elapsed":0.01}
{"Action":"run","Package":"ex/b","Test":"TestBad"}
{"Action":"output","Package":"ex/b","Test":"TestBad","Output":"=== RUN   TestBad\n"}
{"Action":"output","Package":"ex/b","Test":"TestBad","Output":"    b_test.go:5: got 2, want 3\n"}
{"Action":"output","Package":"ex/b","Test":"TestBad","Output":"--- FAIL: TestBad (0.00s)\n"}
{"Action":"fail","Package":"ex/b","Test":"TestBad","Elapsed":0}
{"Action":"output","Package":"ex/b","Output":"FAIL\n"}
{"Action":"output","Package":"ex/b","Output":"FAIL\tex/b\t0.01s\n"}
{"Action":"fail","Package":"ex/b","Elapsed":0.01}
`

func TestSummarize(t *testing.T) {
	var out bytes.Buffer
	status := summarize(strings.NewReader(stream), &out)
	got := out.String()
	if status != 1 {
		t.Errorf("status %d with a failed test, want 1", status)
	}
	for _, want := range []string{
		"ok  \tex/a\t0.01s\n",
		"FAIL\tex/b\t0.01s\n",
		"b_test.go:5: got 2, want 3",
		"--- FAIL: TestBad",
		"1 tests passed, 1 failed, 1 skipped",
		"SKIP ex/a TestDisk: disk_test.go:9: cannot mount a tmpfs: needs root\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q:\n%s", want, got)
		}
	}
	for _, noise := range []string{"=== RUN", "--- PASS", "PASS\n"} {
		if strings.Contains(got, noise) {
			t.Errorf("output has %q:\n%s", noise, got)
		}
	}
}

func TestSummarizeCleanRun(t *testing.T) {
	var out bytes.Buffer
	in := `{"Action":"run","Package":"ex/a","Test":"TestOK"}
{"Action":"pass","Package":"ex/a","Test":"TestOK"}
{"Action":"output","Package":"ex/a","Output":"ok  \tex/a\t0.01s\n"}
{"Action":"pass","Package":"ex/a"}
`
	if status := summarize(strings.NewReader(in), &out); status != 0 {
		t.Fatalf("status %d for a clean run:\n%s", status, out.String())
	}
}
