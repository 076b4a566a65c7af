# otpgate container image: a release build on the Rust image, a distroless runtime.
# Not exercised by CI (no Docker engine on the build machines); kept small and exact.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY migration ./migration
COPY src ./src
RUN cargo build --release --locked --bin otpgate

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
