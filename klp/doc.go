// Package klp is everything that touches rpm and the kernel's livepatch
// interface: RPM inspection, rpm install and erase, module load and unload,
// /sys/kernel/livepatch enable, transition and disable, and the running
// kernel release. Paths are taken under an injectable root and commands run
// through a Runner, so tests can point them at a simulated kernel
// (klp/klptest) and a test rpm root.
package klp
