package reload

import (
	"crypto/sha256"
	"encoding/hex"
	"os"

	"github.com/egress-proxy/egress/policy"
)

// Load loads a policy file (its includes read with read, as
// policy.LoadWith) and reads the values its inject: entries name (with
// read, and os.LookupEnv): a missing file or variable, or a value holding
// a control character, refuses the policy at the FILE:LINE:COL that names
// it. serve and run load with it at start and on every reload, so a
// changed secret file takes effect as a changed policy does.
func Load(file string, data []byte, read func(name string) ([]byte, error)) (*policy.Policy, error) {
	p, err := policy.LoadWith(file, data, read)
	if err != nil {
		return nil, err
	}
	if err := p.ResolveSecrets(policy.SecretSource{ReadFile: read, LookupEnv: os.LookupEnv}); err != nil {
		return nil, err
	}
	return p, nil
}

// loadSum is what tells one load from another: the policy's hash and, for
// its secrets, a digest that only this process compares and never logs.
func loadSum(p *policy.Policy) string {
	h := sha256.New()
	for _, in := range p.Injects() {
		v, _ := in.Value()
		h.Write([]byte(in.Header))
		h.Write([]byte{0})
		h.Write([]byte(v))
		h.Write([]byte{0})
	}
	return p.Hash() + "+" + hex.EncodeToString(h.Sum(nil))
}
