package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"github.com/egress-proxy/egress/certs"
	"github.com/egress-proxy/egress/policy"
	"github.com/egress-proxy/egress/reload"
)

// cmdCA is egress ca init DIR [--config POLICY]: write a new interception
// CA, name-constrained to a policy's intercepted hosts when given one.
func cmdCA(args []string, stdout, stderr io.Writer) int {
	usage := func() {
		fmt.Fprintln(stderr, "usage: egress ca init DIR [--config POLICY]")
		fmt.Fprintln(stderr)
		fmt.Fprintln(stderr, "Writes DIR/ca.crt (mode 0644) and DIR/ca.key (mode 0600; never overwrites), an ECDSA P-256")
		fmt.Fprintln(stderr, "CA for the hosts whose rules have http: request rules. With --config, the CA is")
		fmt.Fprintln(stderr, "name-constrained to the policy's intercepted host names and excludes every IP")
		fmt.Fprintln(stderr, "range, so that a leaked key signs nothing else.")
	}
	if len(args) == 0 || args[0] != "init" {
		usage()
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			return exitOK
		}
		return exitUsage
	}
	fs := flag.NewFlagSet("ca init", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = usage
	config := fs.String("config", "", "name-constrain the CA to the intercepted hosts of policy `FILE`")
	rest, code, ok := parseInterspersed(fs, args[1:])
	if !ok {
		return code
	}
	if len(rest) != 1 {
		usage()
		return exitUsage
	}
	dir := rest[0]
	var o certs.Options
	var ipNote string
	if *config != "" {
		data, err := reload.ReadFile(*config)
		if err != nil {
			fmt.Fprintf(stderr, "egress ca init: %v\n", err)
			return exitUsage
		}
		p, err := policy.LoadWith(*config, data, reload.ReadFile)
		if err != nil {
			printPolicyErrors(stderr, *config, err)
			return exitUsage
		}
		hosts, cidrs := p.InterceptedHosts()
		if len(hosts) == 0 {
			fmt.Fprintf(stderr, "egress ca init: %s has no host rule with http: request rules: nothing to constrain the CA to (leave out --config for a CA without constraints)\n", *config)
			return exitUsage
		}
		if o.Names, err = certs.ConstraintNames(hosts); err != nil {
			fmt.Fprintf(stderr, "egress ca init: %v\n", err)
			return exitUsage
		}
		if len(cidrs) > 0 {
			s := make([]string, len(cidrs))
			for i, c := range cidrs {
				s[i] = c.String()
			}
			ipNote = "note: the cidr rules with http: (" + strings.Join(s, ", ") + ") cannot be intercepted with this CA: it excludes every IP range; IP literals need a CA of their own, made without --config\n"
		}
	}
	certFile, keyFile, err := certs.Init(dir, o)
	if err != nil {
		fmt.Fprintf(stderr, "egress ca init: %v\n", err)
		return exitUsage
	}
	if a, err := filepath.Abs(certFile); err == nil {
		certFile = a
	}
	if a, err := filepath.Abs(keyFile); err == nil {
		keyFile = a
	}
	fmt.Fprintf(stdout, "wrote %s and %s (ECDSA P-256 CA, certificate mode 0644, key mode 0600)\n", certFile, keyFile)
	if len(o.Names) > 0 {
		fmt.Fprintf(stdout, "name-constrained to %s (and names below them); every IP range excluded\n", strings.Join(o.Names, ", "))
	} else {
		fmt.Fprintln(stdout, "without name constraints: the key can sign for any name; keep it as you keep your other CA keys")
	}
	fmt.Fprint(stdout, ipNote)
	fmt.Fprintf(stdout, "put in the policy:\n  tls:\n    ca_cert: %s\n    ca_key: %s\n", certFile, keyFile)
	fmt.Fprintf(stdout, "and make the clients trust %s\n", certFile)
	return exitOK
}

// checkInterception is what serve needs of a policy with http: request
// rules: a CA (tls.ca_cert, tls.ca_key) whose key nobody else can read
// and whose name constraints hold every intercepted host, and a readable
// tls.upstream_ca. Nil for a policy without request rules.
func checkInterception(p *policy.Policy) error {
	if !p.Intercepts() {
		return nil
	}
	if p.TLS.CACert == "" {
		return errors.New("http: request rules need tls.ca_cert and tls.ca_key: egress ca init DIR --config POLICY writes both")
	}
	ca, err := certs.LoadCA(p.TLS.CACert, p.TLS.CAKey)
	if err != nil {
		return fmt.Errorf("tls: %w", err)
	}
	hosts, cidrs := p.InterceptedHosts()
	var errs []error
	for _, h := range hosts {
		if err := ca.Permits(h); err != nil {
			errs = append(errs, fmt.Errorf("tls.ca_cert %s cannot sign for a host with http: rules: %w", p.TLS.CACert, err))
		}
	}
	for _, c := range cidrs {
		if err := ca.Permits(c.Addr().String()); err != nil {
			errs = append(errs, fmt.Errorf("tls.ca_cert %s cannot sign for a cidr rule with http: rules: %w", p.TLS.CACert, err))
		}
	}
	if _, err := upstreamRoots(p.TLS); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
