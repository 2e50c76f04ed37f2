package sender

import "github.com/zsend/zsend/internal/curve"

// CurveBackend names what seals and opens CURVE's MESSAGE boxes in this
// process: "libsodium" (loaded at start when the system has it) or
// "x/crypto". README.md, section CURVE.
func CurveBackend() string { return curve.Backend() }
