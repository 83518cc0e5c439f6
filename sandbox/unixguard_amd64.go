//go:build linux

package sandbox

import "golang.org/x/sys/unix"

// The syscalls the unix socket filter watches, on x86-64 and in its i386
// compatibility mode (int 0x80), whose numbers differ (arch/x86/entry/
// syscalls/syscall_64.tbl and syscall_32.tbl). x32 syscalls (nr with bit
// 30 set) are refused altogether: nothing here uses that ABI.
var (
	nativeArch = archSyscalls{arch: unix.AUDIT_ARCH_X86_64, socket: 41, connect: 42, socketpair: 53, seccomp: 317,
		socketcall: -1, ioUring: [3]uint32{425, 426, 427}, x32: true}
	compatArch = &archSyscalls{arch: 0x40000003 /* AUDIT_ARCH_I386 */, socket: 359, socketpair: 360, connect: 362, seccomp: 354,
		socketcall: 102, ioUring: [3]uint32{425, 426, 427}}
)
