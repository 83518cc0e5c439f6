// Package examples holds no code: its tests check the files a plugin author
// or an operator copies from this directory and the repository root.
//
//   - plugin-python/: an example plugin that checks its network requirements
//     and fails with a clear error on a restricted network. The tests run it
//     on python3 and python2.7, directly and under `egress run`.
//   - docker-compose.yml, Dockerfile and compose/: a simulated restricted
//     network; the tests parse them (no Docker engine runs in tests) and
//     check that the plugin has no way out but egress.
//   - docker-run/: the policy of the Dockerfile's `docker run` example,
//     egress alone with its proxy port published; the tests check that the
//     published port, allow_from and the example's curl agree, and run the
//     image's HEALTHCHECK command against egress serve.
//   - kubernetes/: manifests for a replicated egress; the tests check that
//     they parse and agree with each other and with the policy they carry.
package examples
