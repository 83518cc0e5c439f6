//go:build !linux

package main

import "syscall"

// sysProcAttr: Pdeathsig is Linux-only; elsewhere peers are killed on a
// clean exit only.
func sysProcAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{} }
