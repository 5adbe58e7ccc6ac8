// Package e2e holds the real-kernel harness: shell scripts that fetch the
// Debian kernel, build livepatch modules and RPMs and boot qemu guests, and
// Go tests (build tag e2e) that drive them. The Go helpers in this file
// are shared by those tests.
package e2e
