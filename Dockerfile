# otpgate container image: a release build on the Rust image, a distroless runtime.
#   docker build -t registry.example.com/otpgate:0.1.0 .
# CI proves this build context without a Docker engine: scripts/check-docker.sh copies exactly
# what the COPY lines below name into an empty folder and runs cargo metadata and cargo check
# there (offline, --locked).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock .env.example ./
COPY .cargo ./.cargo
COPY migration ./migration
COPY loadtest ./loadtest
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked -p otpgate --bin otpgate

# distroless/cc: glibc, CA certificates (for Twilio/Meta/Telegram over TLS), no shell.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/otpgate /usr/local/bin/otpgate
USER 65532:65532
ENV HOST=0.0.0.0 \
    PORT=8000 \
    LOG_FORMAT=json
EXPOSE 8000 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/otpgate", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/otpgate"]
CMD ["serve"]
