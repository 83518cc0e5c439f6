// Package firewall refuses, at connect() time, the new TCP connections
// the policy refuses: nftables rules in front of the transparent listener
// answer their SYN with a TCP reset (ECONNREFUSED for the client), as a
// firewall would, instead of letting the kernel accept a connection the
// listener can only reset afterwards. It builds the rules from
// policy.ConnectFilter, keeps sets of address leases (the addresses
// egress's DNS returned for names that could be allowed), and, for a
// host, installs and updates its own table (see Host). It decides
// nothing: what it refuses, the policy refused.
package firewall
