# syntax=docker/dockerfile:1
#
# egress as a small static image:
#
#   docker build -t egress .
#   docker run --rm -v "$PWD/examples/compose:/etc/egress:ro" egress
#
# The policy file is read from /etc/egress/policy.yaml (mount a directory
# there, not a single file, so that an edited policy is seen on SIGHUP). Its
# listen: section must use 0.0.0.0 (or the container's address) for the
# listeners other containers use: egress's defaults are loopback only.

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
    CMD ["/usr/local/bin/egress", "health", "--timeout", "2s", "http://127.0.0.1:9090/healthz"]
ENTRYPOINT ["/usr/local/bin/egress"]
CMD ["serve", "--config", "/etc/egress/policy.yaml"]
