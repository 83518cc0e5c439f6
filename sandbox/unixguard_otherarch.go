//go:build linux && !amd64 && !arm64

package sandbox

// The unix socket filter knows the syscall numbers of amd64 and arm64
// only; elsewhere the sandbox refuses to start rather than run without it.
var (
	nativeArch = archSyscalls{}
	compatArch *archSyscalls
)
