//go:build !linux

package main

// makeNonDumpable has nothing to do where egress run has no sandbox.
func makeNonDumpable() error { return nil }
