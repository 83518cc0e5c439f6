# syntax=docker/dockerfile:1
#
# egress as a small static image:
#
#   docker build -t egress .
#   docker run --rm -p 127.0.0.1:3128:3128 -v "$PWD/examples/docker-run:/etc/egress:ro" egress
#   curl -x http://127.0.0.1:3128 https://pypi.org/simple/pip/ -o /dev/null -w '%{http_code}\n'
#
# The policy file is read from /etc/egress/policy.yaml (mount a directory
# there, not a single file, so that an edited policy is seen on SIGHUP). Its
# listen: section must use 0.0.0.0 (or the container's address) for the
# listeners a published port or other containers reach: egress's defaults
# are loopback only. A client behind a published port arrives from the
# Docker bridge's gateway (172.17.0.1 on the default bridge): allow_from
# must name it (examples/docker-run/policy.yaml does). docker-compose.yml
# runs the image on a network of its own with examples/compose/.
#
# The HEALTHCHECK asks the admin listener that the policy names
# (listen.admin): if you run serve with another --config, or with --admin,
# override it (docker run --health-cmd, compose's healthcheck:) to match.
# It exits 0 or 1 only (Docker reserves 2), and a policy file broken by an
# edit since egress started is read leniently for listen.admin, so the
# check answers for the egress that runs on its last good policy.

# ---- build: a static binary, no cgo ----
FROM golang:1.26-alpine AS build
WORKDIR /src
ENV CGO_ENABLED=0 GOFLAGS=-trimpath
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN go build -ldflags="-s -w" -o /out/egress ./cmd/egress

# ---- run: no shell, no package manager, not root ----
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/egress /usr/local/bin/
# nonroot in distroless is 65532; numeric so that Kubernetes' runAsNonRoot
# can verify it.
USER 65532:65532
EXPOSE 3128/tcp 9090/tcp
# The image has no curl or shell: egress itself asks the admin listener.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/egress", "health", "--timeout", "2s", "--config", "/etc/egress/policy.yaml"]
ENTRYPOINT ["/usr/local/bin/egress"]
CMD ["serve", "--config", "/etc/egress/policy.yaml"]
