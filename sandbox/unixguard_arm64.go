//go:build linux

package sandbox

import "golang.org/x/sys/unix"

// The syscalls the unix socket filter watches, on arm64 and in its 32-bit
// ARM (EABI) compatibility mode, whose numbers differ (include/uapi/asm-
// generic/unistd.h, arch/arm/tools/syscall.tbl). EABI has no socketcall.
var (
	nativeArch = archSyscalls{arch: unix.AUDIT_ARCH_AARCH64, socket: 198, socketpair: 199, connect: 203, seccomp: 277,
		socketcall: -1, ioUring: [3]uint32{425, 426, 427}}
	compatArch = &archSyscalls{arch: unix.AUDIT_ARCH_ARM, socket: 281, connect: 283, socketpair: 288, seccomp: 383,
		socketcall: -1, ioUring: [3]uint32{425, 426, 427}}
)
