// Package goroutines helps tests take a goroutine-count baseline that is
// not inflated by earlier work still winding down.
package goroutines

import (
	"runtime"
	"time"
)

// Stable waits, for at most bound, until the goroutine count has stayed
// the same over 300ms of samples (earlier tests have wound down), and
// returns it with settled true. A baseline taken while goroutines still
// exit is too high and hides a leak. If the count never settles it returns
// the lowest count seen and settled false.
func Stable(bound time.Duration) (n int, settled bool) {
	deadline := time.Now().Add(bound)
	low, last, same := runtime.NumGoroutine(), -1, 0
	for {
		n := runtime.NumGoroutine()
		low = min(low, n)
		if n == last {
			same++
		} else {
			last, same = n, 0
		}
		if same >= 6 {
			return n, true
		}
		if time.Now().After(deadline) {
			return low, false
		}
		time.Sleep(50 * time.Millisecond)
	}
}
