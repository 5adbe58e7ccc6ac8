// Package klp is everything that touches rpm and the kernel's livepatch
// interface: RPM inspection, the running kernel release, and (as it grows)
// rpm install/erase, module loading and /sys/kernel/livepatch. All paths are
// taken under an injectable root so tests can point it at a fake tree.
package klp
